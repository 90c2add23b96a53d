#!/usr/bin/env bash
# Regenerate the hash-pinned lock files from the top-level requirement files (maintainers only;
# scripts/setup_env.sh installs from the locks with pip --require-hashes).
#
#   bash scripts/lock.sh            # needs network access to PyPI; takes a minute
#
# requirements/{base,cpu,cuda,torchrec}.txt are the inputs a person edits; the outputs are
# requirements/lock/{cpu,cuda,torchrec}.txt for CPython 3.11 on x86_64 Linux (manylinux_2_28).
# torchrec is locked on its own without dependencies: its metadata asks for the CUDA fbgemm-gpu,
# which the CPU set must not contain (setup_env.sh installs it with --no-deps).
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="${CAIN_LOCK_TOOLS:-$HOME/.cache/cain/lock-tools}"
if [[ ! -x "$tools/bin/uv" ]]; then
  python3 -m venv "$tools" && "$tools/bin/pip" install --quiet "uv==0.13.9"
fi
cd "$repo_root/requirements"
mkdir -p lock
target=(--python-version 3.11 --python-platform x86_64-manylinux_2_28 --generate-hashes --quiet)
# Optional: a constraints file (e.g. `pip freeze` of a venv that passed the tests) to keep its
# versions of the transitive dependencies: bash scripts/lock.sh /tmp/frozen.txt
constraints=(); [[ $# -gt 0 ]] && constraints=(--constraint "$(realpath "$1")")
for accelerator in cpu cuda; do
  "$tools/bin/uv" pip compile base.txt "$accelerator.txt" "${target[@]}" "${constraints[@]}" \
    --custom-compile-command "bash scripts/lock.sh" -o "lock/$accelerator.txt"
done
"$tools/bin/uv" pip compile torchrec.txt --no-deps "${target[@]}" \
  --custom-compile-command "bash scripts/lock.sh" -o lock/torchrec.txt
echo "[lock] wrote requirements/lock/{cpu,cuda,torchrec}.txt"
