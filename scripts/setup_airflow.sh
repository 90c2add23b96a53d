#!/usr/bin/env bash
# Create or update the Airflow virtualenv; safe to run any number of times.
#
#   source scripts/setup_env.sh && source scripts/setup_airflow.sh
#   "$CAIN_AIRFLOW_PYTHON" -m airflow version
#
# Airflow gets a venv of its own (default ~/.cache/cain/airflow-venv, override with
# CAIN_AIRFLOW_VENV): its Spark provider drags in pyspark-client, which overwrites pyspark's files in
# the main venv, so no Spark provider is installed at all and the DAG's tasks call spark-submit,
# torchrun and python of the MAIN venv. A stamp of requirements/airflow.txt makes a second run take
# seconds.
#
# Exports CAIN_AIRFLOW_VENV and CAIN_AIRFLOW_PYTHON only. The Airflow venv is deliberately NOT put
# on PATH: `python`, `spark-submit` and `torchrun` must keep resolving to the main venv. Run Airflow
# as "$CAIN_AIRFLOW_VENV/bin/airflow ...". Works sourced under `set -euo pipefail` (as
# scripts/test.sh does) and executed with bash; it does not change the caller's shell options.

_cain_setup_airflow() {
  local repo_root venv requirements stamp_value stamp_file
  repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)" || return 1
  venv="${CAIN_AIRFLOW_VENV:-$HOME/.cache/cain/airflow-venv}"
  requirements="$repo_root/requirements/airflow.txt"
  # The interpreter that made the venv is part of the stamp: a venv from another Python is rebuilt.
  stamp_value="$(python3 -c 'import sys; print("py%d.%d" % sys.version_info[:2])') $(sha256sum "$requirements" | cut -c1-16)" || return 1
  stamp_file="$venv/.cain-airflow-stamp"
  if [[ ! -x "$venv/bin/python" ]]; then
    echo "[setup-airflow] creating virtualenv $venv"
    mkdir -p "$(dirname "$venv")" || return 1
    python3 -m venv "$venv" || return 1
  fi
  if [[ "$(cat "$stamp_file" 2>/dev/null)" != "$stamp_value" ]]; then
    echo "[setup-airflow] installing pinned Airflow into $venv (first time: a minute or two)"
    "$venv/bin/python" -m pip install --quiet --upgrade pip || return 1
    "$venv/bin/python" -m pip install --quiet -r "$requirements" || return 1
    # Guard the reason this venv exists: no Spark provider (and so no pyspark-client) in here.
    if "$venv/bin/python" -m pip show --quiet apache-airflow-providers-apache-spark >/dev/null 2>&1; then
      echo "[setup-airflow] apache-airflow-providers-apache-spark must not be installed" >&2
      return 1
    fi
    echo "$stamp_value" > "$stamp_file" || return 1
  fi
  export CAIN_AIRFLOW_VENV="$venv"
  export CAIN_AIRFLOW_PYTHON="$venv/bin/python"
}

if ! _cain_setup_airflow; then
  unset -f _cain_setup_airflow
  echo "[setup-airflow] failed" >&2
  return 1 2>/dev/null || exit 1
fi
unset -f _cain_setup_airflow
