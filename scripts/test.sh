#!/usr/bin/env bash
# Quick start, part 2: install protea-supervisor with its test tools into .venv, lint, type-check, test.
# The tests mostly wait on real timers (supervisord's ticks, stop graces, probes), so eight pytest-xdist
# workers share two cores well; each takes loopback ports from its own range (tests/conftest.py).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --quiet --upgrade pip
PYTHONWARNINGS=ignore .venv/bin/python -m pip install --quiet -e '.[test]'
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
# The layers as a contract: a wing imports only the wings below it, and no import cycle (pyproject.toml).
.venv/bin/lint-imports --no-cache
# The documentation site, with its reference generated from the code (docs/hooks/reference.py).
NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --quiet --site-dir "$(mktemp -d)"
.venv/bin/pytest -n "${PROTEA_TEST_WORKERS:-8}" --dist worksteal "$@"
