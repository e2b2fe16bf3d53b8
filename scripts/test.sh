#!/usr/bin/env bash
# The whole suite: SQLite and PostgreSQL, real Redis and RQ, headless Chromium.
# TEST_DATABASE_URL (default postgresql://postgres@127.0.0.1:5432/recovery_test, created if
# missing) and TEST_REDIS_URL (default redis://127.0.0.1:6379/15) choose the services.
# A missing service is skipped with its reason; with CI=true it fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
if [ $# -eq 0 ]; then
  # The whole run also holds the code to its lint and type rules.
  .venv/bin/ruff check --quiet .
  .venv/bin/mypy
fi
exec .venv/bin/python -m pytest "$@"
