#!/usr/bin/env bash
# Create or update the project's virtual environment; safe to run any number of times.
#
#   source scripts/setup_env.sh            # CPU (fbgemm-gpu-cpu)
#   CAIN_ACCELERATOR=cuda source ...       # NVIDIA machines (CUDA fbgemm-gpu)
#
# The venv lives outside the checkout (default ~/.cache/cain/venv, override with CAIN_VENV) so that
# every clone reuses the ~5 GB torch install; a stamp of the lock files makes a second run take
# seconds. Airflow gets its own venv (scripts/setup_airflow.sh): its Spark provider would
# overwrite pyspark's files.
# Sourced: it must not change the caller's shell options, so every failing step returns explicitly.
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
accelerator="${CAIN_ACCELERATOR:-cpu}"
venv="${CAIN_VENV:-$HOME/.cache/cain/venv}"
case "$accelerator" in
  cpu|cuda) ;;
  *) echo "CAIN_ACCELERATOR must be cpu or cuda, got '$accelerator'" >&2; return 2 ;;
esac
# The lock files (scripts/lock.sh) pin every package with its hashes: two machines install the
# same set. requirements/{base,cpu,cuda,torchrec}.txt are only the lock's inputs.
lock="$repo_root/requirements/lock"
stamp_value="$accelerator $(cat "$lock/$accelerator.txt" "$lock/torchrec.txt" | sha256sum | cut -c1-16)"
stamp_file="$venv/.cain-stamp"
if [[ ! -x "$venv/bin/python" ]]; then
  echo "[setup] creating virtualenv $venv"
  mkdir -p "$(dirname "$venv")" && python3 -m venv "$venv" || { echo "[setup] venv creation failed" >&2; return 1; }
fi
if [[ "$(cat "$stamp_file" 2>/dev/null)" != "$stamp_value" ]]; then
  echo "[setup] installing pinned dependencies ($accelerator) into $venv (first time: several minutes)"
  other="cuda"; [[ "$accelerator" == "cuda" ]] && other="cpu"
  # The two fbgemm builds install the same module: remove the other one before switching.
  "$venv/bin/python" -m pip uninstall --quiet --yes "$(cut -d= -f1 "$repo_root/requirements/$other.txt")" >/dev/null 2>&1
  { "$venv/bin/python" -m pip install --quiet --upgrade pip \
    && "$venv/bin/python" -m pip install --quiet --require-hashes -r "$lock/$accelerator.txt" \
    && "$venv/bin/python" -m pip install --quiet --require-hashes --no-deps -r "$lock/torchrec.txt" \
    && echo "$stamp_value" > "$stamp_file"; } || { echo "[setup] pip install failed" >&2; return 1; }
fi
export PATH="$venv/bin:$PATH"
export PYTHONPATH="$repo_root${PYTHONPATH:+:$PYTHONPATH}"
export PYSPARK_PYTHON="$venv/bin/python"
export PYSPARK_DRIVER_PYTHON="$venv/bin/python"
# A plain `spark-submit etl/build_sequences.py ...` (and pyspark) gets the Delta package and
# confs and the local defaults from conf/spark/spark-defaults.conf.
export SPARK_CONF_DIR="$repo_root/conf/spark"
