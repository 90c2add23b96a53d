#!/usr/bin/env bash
# The peer's environment for `benchmarks/model_benchmark.py --peer`: reczoo/FuxiCTR 2.3.10 and its
# LongCTR model zoo (DIN, SIM, ETA, SDIM, TWIN), in a venv of its own.
#
#   scripts/setup_peer_env.sh        # prints the two --peer arguments at the end
#
# - Source: the PyPI sdist fuxictr-2.3.10.tar.gz. Unlike the wheel it holds model_zoo/LongCTR,
#   extracted to $PEER_ROOT/fuxictr-2.3.10. (shared/bench/fuxictr.md extracts the same folder
#   from the GitHub repository at commit 0245987f; GitHub was unreachable from the machine this
#   script was written on, so the two copies were not compared file by file.)
# - Packages: fuxictr with --no-deps, then what its model path imports (pandas, scikit-learn,
#   polars, h5py, pyarrow, pyyaml, tqdm, ray[data] — `fuxictr.preprocess` imports ray at import
#   time — and pydantic), with numpy and pyarrow at the versions of fuxictr.md.
# - torch: by default the peer uses the project venv's torch (a .pth file appends the project
#   venv's site-packages after the peer's own), so both sides run the very same torch build and
#   nothing multi-GB is downloaded. PEER_TORCH=pip installs torch==2.14.1 from PyPI instead.
# Safe to run again: existing pieces are kept.
set -euo pipefail
peer_root="${PEER_ROOT:-$HOME/.cache/cain}"
peer_venv="${PEER_VENV:-$peer_root/peer-venv}"
project_venv="${CAIN_VENV:-$HOME/.cache/cain/venv}"
source_dir="$peer_root/fuxictr-2.3.10"

if [[ ! -d "$source_dir/model_zoo/LongCTR" ]]; then
  download="$(mktemp -d)"
  python3 -m pip download --quiet --no-deps --no-binary :all: -d "$download" fuxictr==2.3.10
  tar -xzf "$download/fuxictr-2.3.10.tar.gz" -C "$peer_root"
  rm -rf "$download"
fi
if [[ ! -x "$peer_venv/bin/python" ]]; then
  python3 -m venv "$peer_venv"
fi
python="$peer_venv/bin/python"
if ! "$python" -c "import fuxictr, pandas, sklearn, polars, h5py, ray, pydantic" 2>/dev/null; then
  "$python" -m pip install --quiet --upgrade pip
  "$python" -m pip install --quiet --no-deps "$source_dir"
  "$python" -m pip install --quiet numpy==2.4.6 pyarrow==26.0.1 pandas scikit-learn polars \
    h5py pyyaml tqdm "ray[data]>=2.52.0" pydantic
fi
if ! "$python" -c "import torch" 2>/dev/null; then
  if [[ "${PEER_TORCH:-project}" == "pip" ]]; then
    "$python" -m pip install --quiet torch==2.14.1
  else
    site="$("$project_venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    peer_site="$("$python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    echo "$site" > "$peer_site/zz_torch_from_project_venv.pth"
  fi
fi
"$python" - "$source_dir/model_zoo/LongCTR" <<'EOF'
import sys

import fuxictr
import torch

sys.path.insert(0, sys.argv[1])
for name in ("DIN", "SIM", "ETA", "SDIM", "TWIN"):
    __import__(name)
print(f"peer ok: fuxictr {fuxictr.__version__}, torch {torch.__version__} ({torch.__file__})")
EOF
echo "--peer $python --peer-longctr $source_dir/model_zoo/LongCTR"
