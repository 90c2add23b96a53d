#!/usr/bin/env bash
# The test suite: installs what is missing (idempotent), then runs pytest on CAIN_TEST_WORKERS
# pytest-xdist workers (default 2; tests/conftest.py keeps the Spark tests on one of them).
# Extra args go to pytest (`-n 0`: one process).
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
source scripts/setup_env.sh
source scripts/setup_airflow.sh
exec python -m pytest -n "${CAIN_TEST_WORKERS:-2}" --dist loadgroup "$@"
