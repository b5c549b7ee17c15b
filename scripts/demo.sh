#!/usr/bin/env bash
# Quick start, part 1: install protea-supervisor into .venv and bring up the demo stack
# (PROTEA's programs and 11 queues played by stand-ins; needs only Python). Stop it with:
#   .venv/bin/protea-supervisor --stack demo down
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --quiet --upgrade pip
# setuptools warns about every editable install in a block of asterisks; the warning says nothing here.
PYTHONWARNINGS=ignore .venv/bin/python -m pip install --quiet -e .
.venv/bin/protea-supervisor --stack demo up
.venv/bin/protea-supervisor --stack demo status
