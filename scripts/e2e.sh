#!/usr/bin/env bash
# The end-to-end stage: protea-supervisor deploys examples/protea-app (FastAPI under uvicorn, alembic, pika
# workers, a real `next build` served by node) from a local git remote and drives it as an operator would;
# see docs/guides/testing.md ("End-to-end stage"). Needs node and npm, this machine's Postgres and RabbitMQ
# (with its management API), and the project's .venv (./scripts/test.sh makes it). Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in node npm psql pg_dump git; do
  if ! command -v "$tool" >/dev/null; then
    echo "e2e: $tool is not installed; the stage runs the real servers (node and npm for next build, psql and pg_dump for Postgres) and is not skipped" >&2
    exit 1
  fi
done
if ! node -e 'const [a, b] = process.versions.node.split(".").map(Number); process.exit(a > 20 || (a === 20 && b >= 9) ? 0 : 1)'; then
  echo "e2e: node $(node --version) is too old; Next.js 16 needs node 20.9 or newer" >&2
  exit 1
fi
if [ ! -x .venv/bin/pytest ]; then
  echo "e2e: .venv/bin/pytest is missing; run ./scripts/test.sh first (it makes .venv with the test tools)" >&2
  exit 1
fi
exec .venv/bin/pytest e2e -p no:cacheprovider -x -v "$@"
