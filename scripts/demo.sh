#!/usr/bin/env bash
# The main job on an embedded default, end to end on this machine (Spark local mode, 2 CPU ranks):
#   1. a seeded synthetic log in the exact Taobao UserBehavior format (9 days),
#   2. spark-submit etl/build_sequences.py -> Delta tables + feature_spec.json,
#   3. torchrun --nproc_per_node=2 trainer/main.py: TorchRec DMP + CAIN, one epoch, evaluation.
# Everything lands under CAIN_DEMO_DIR (default ./runs/demo); metrics in $CAIN_DEMO_DIR/cain/metrics.json.
# Extra arguments are trainer overrides, e.g. `bash scripts/demo.sh model.embedding_dim=32`.
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
source scripts/setup_env.sh
work="${CAIN_DEMO_DIR:-$repo_root/runs/demo}"
users="${CAIN_DEMO_USERS:-300}"
raw="$work/raw/UserBehavior.csv"
data="$work/delta"
run_dir="$work/cain"
mkdir -p "$work"

echo "== 1/3 synthetic Taobao log ($users users) -> $raw"
python -m etl.synthetic taobao --output "$raw" --users "$users" --seed 2017

echo "== 2/3 spark-submit etl/build_sequences.py -> $data"
bash scripts/spark_submit.sh etl/build_sequences.py --input "$raw" --output "$data"

echo "== 3/3 torchrun --nproc_per_node=2 trainer/main.py -> $run_dir"
torchrun --standalone --nproc_per_node=2 trainer/main.py \
  --data "$data" --model cain --output "$run_dir" "$@"

echo "metrics: $run_dir/metrics.json"
