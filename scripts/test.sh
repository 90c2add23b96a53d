#!/usr/bin/env bash
# The test suite: installs what is missing (idempotent), then runs pytest. Extra args go to pytest.
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
source scripts/setup_env.sh
source scripts/setup_airflow.sh
exec python -m pytest "$@"
