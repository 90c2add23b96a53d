"""How much of a planted effect a trained model picked up: AUC on the target impressions alone.

    python -m experiments.planted_metrics --run RUN_DIR --data ROOT --design RAW/planted.json

On planted data (etl/planted_context.py) every target impression is clicked with probability
0.5 ± strength × s/2 depending only on the far-back co-occurrence of its two triggers, so a
model that ignores the pattern scores targets at AUC 0.5 (up to what the profile and the target
item tell, which is nothing by construction) and one that found it scores them above 0.5; the
best possible target AUC follows from the strength (0.5 + strength × s/2 vs. 0.5 − strength × s/2
per user type). The overall test AUC mixes the targets with every ordinary impression, where the
effect is diluted.

Scores come from the run's final checkpoint (`trainer.predict.Scorer`, one CPU process) on the
test split; a candidate is a target when its item id is one of the design's target ids.
Writes RUN_DIR/planted_metrics.json: `target_auc`, `target_auc_active`, `target_auc_casual`
(AUC over the targets of the design's active / other users) and their sample counts.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from model.batch import Keys
from trainer import checkpoint
from trainer.data import SamplesTable, SampleStream, rank_share
from trainer.metrics import compute_metrics
from trainer.predict import Scorer

PLANTED_METRICS = ("target_auc", "target_auc_active", "target_auc_casual")
RESULT_FILE = "planted_metrics.json"


def target_scores(
    run_dir: Path, data: Path, target_items: set[int], split: str = "test"
) -> dict[str, np.ndarray]:
    """user ids, labels and logits of the split's target candidates, scored by the run's model."""
    latest = checkpoint.Checkpoints(run_dir / "checkpoints").latest()
    if latest is None:
        raise FileNotFoundError(f"no checkpoint under {run_dir / 'checkpoints'}")
    scorer = Scorer.from_checkpoint(latest)
    rows = scorer.builder.rows[Keys.CANDIDATE_ITEM]
    if max(target_items) >= rows:
        raise ValueError(
            f"target ids up to {max(target_items)} are folded into an item table of {rows} rows"
        )
    spec = scorer.builder.spec
    table = SamplesTable.open(str(data), spec)
    dates = spec.splits[split].dates if split in spec.splits else None
    stream = SampleStream(
        rank_share(table.files(dates), 0, 1),
        scorer.builder,
        split=split,
        batch_size=4096,
        shuffle_rows=1024,
        read_rows=256,
        seed=None,
    )
    targets = torch.tensor(sorted(target_items))
    users, labels, logits = [], [], []
    for batch in stream.batches():
        items = batch.sparse_features[Keys.CANDIDATE_ITEM].values()  # [B], candidate order
        chosen = torch.isin(items, targets)
        if chosen.any():
            users.append(batch.user_ids[chosen].numpy())
            labels.append(batch.labels[chosen].numpy())
            logits.append(scorer.logits(batch)[chosen].cpu().numpy())
    return {
        "users": np.concatenate(users) if users else np.zeros(0, np.int64),
        "labels": np.concatenate(labels) if labels else np.zeros(0, np.float32),
        "logits": np.concatenate(logits) if logits else np.zeros(0, np.float32),
    }


def auc(labels: np.ndarray, logits: np.ndarray, users: np.ndarray) -> float:
    if len(labels) == 0 or labels.min() == labels.max():
        return float("nan")
    return compute_metrics(labels, logits, users).auc


def planted_metrics(run_dir: Path, data: Path, design_path: Path) -> dict[str, float]:
    """Target AUC overall and per user type; also written to RUN_DIR/planted_metrics.json."""
    design = json.loads(design_path.read_text())
    scores = target_scores(run_dir, data, {pair["target"] for pair in design["pairs"]})
    active = np.isin(scores["users"], np.array(design["active_users"], dtype=np.int64))
    result: dict[str, float] = {"design": str(design_path), "strength": design["strength"]}
    for name, chosen in (
        ("target_auc", np.ones_like(active)),
        ("target_auc_active", active),
        ("target_auc_casual", ~active),
    ):
        result[name] = auc(
            scores["labels"][chosen], scores["logits"][chosen], scores["users"][chosen]
        )
        result[f"{name}_samples"] = int(chosen.sum())
    (run_dir / RESULT_FILE).write_text(json.dumps(result, indent=1))
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", required=True, help="a finished trainer run directory")
    parser.add_argument("--data", required=True, help="the ETL output root it was trained on")
    parser.add_argument("--design", required=True, help="planted.json of the raw log")
    arguments = parser.parse_args(argv)
    result = planted_metrics(Path(arguments.run), Path(arguments.data), Path(arguments.design))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
