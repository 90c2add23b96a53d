#!/usr/bin/env bash
# Wheels for a lent GPU machine (python 3.12, torch 2.11 + CUDA 13.0 preinstalled, no network
# there, at most 64 MiB of working tree + carried folders per call), downloaded here into the
# ignored folder .device/wheels; then a size check and the one device command to run.
#
#   scripts/device_bundle.sh
#
# What the model code imports beyond torch (found by importing model.registry, model.synthetic_batch,
# model.train_wrapper and benchmarks.model_benchmark with only torch, fbgemm and these on the path):
# - torchrec 1.6.1 and fbgemm-gpu-cpu 1.6.0: the releases paired with torch 2.11 (the CUDA
#   fbgemm-gpu wheel is ~465 MB, too big to carry; the CPU build has no CUDA kernels, which the
#   models do not need, see benchmarks/gpu_benchmark.py);
# - torchrec's import-time dependencies: tensordict (+ cloudpickle, pyvers), iopath,
#   pyre-extensions (+ typing-inspect, mypy-extensions); pyyaml (contract.config);
# - pytest and its dependencies, for tests/model/test_gpu.py.
# Wheels are zip files: the device command extracts them into /tmp/site (no pip needed there).
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
destination="$repo_root/.device/wheels"
limit=$((64 * 1024 * 1024))
wheels=(
  torchrec==1.6.1 fbgemm-gpu-cpu==1.6.0 tensordict==0.15.3 iopath==0.1.9 pyvers==0.2.3
  cloudpickle==3.1.3 pyre-extensions==0.0.32 typing-inspect==0.9.0 mypy-extensions==1.2.0
  pyyaml==6.0.3 pytest==9.0.2 pluggy==1.6.0 iniconfig==2.3.0 packaging==25.0 pygments==2.19.2
)
mkdir -p "$destination"
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --abi cp312 --platform manylinux_2_28_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
  -d "$destination" "${wheels[@]}"
# Only the pinned wheels travel: drop anything an earlier run of a different pin list left.
keep=()
for pin in "${wheels[@]}"; do
  name="${pin%%==*}"
  version="${pin##*==}"
  keep+=("$(echo "$name" | tr '-' '_' | tr '[:upper:]' '[:lower:]')-$version-")
done
for wheel in "$destination"/*.whl; do
  base="$(basename "$wheel" | tr '[:upper:]' '[:lower:]')"
  wanted=false
  for prefix in "${keep[@]}"; do [[ "$base" == "$prefix"* ]] && wanted=true; done
  $wanted || rm -f "$wheel"
done

bundle_bytes=$(du -cb "$destination"/*.whl | tail -1 | cut -f1)
tree_bytes=$(cd "$repo_root" && git ls-files -co --exclude-standard -z | du -cb --files0-from=- | tail -1 | cut -f1)
total=$((bundle_bytes + tree_bytes))
printf 'wheels %.1f MiB + working tree %.1f MiB = %.1f MiB (limit 64 MiB)\n' \
  "$(echo "$bundle_bytes / 1048576" | bc -l)" "$(echo "$tree_bytes / 1048576" | bc -l)" \
  "$(echo "$total / 1048576" | bc -l)"
if ((total > limit)); then
  echo "too big to carry: $total bytes > $limit" >&2
  exit 1
fi
echo 'device command (run tool, carry [".device"], timeout_s 600):'
echo 'for w in .device/wheels/*.whl; do python3 -m zipfile -e "$w" /tmp/site; done; export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1; nvidia-smi -L; timeout 120 python3 -m pytest -q -p no:cacheprovider -m gpu tests/model/test_gpu.py; timeout 330 python3 benchmarks/gpu_benchmark.py --out $OUT/gpu --budget-s 300'
