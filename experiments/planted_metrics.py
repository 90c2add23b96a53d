"""How much of a planted effect a trained model picked up: AUC on the target impressions alone.

    python -m experiments.planted_metrics --run RUN_DIR --data ROOT --design RAW/planted.json

On planted data (etl/planted_context.py) every target impression is clicked with probability
0.5 ± strength × s/2 depending only on the far-back co-occurrence of its two triggers, so a
model that ignores the pattern scores targets at AUC 0.5 (up to what the profile and the target
item tell, which is nothing by construction) and one that found it scores them above 0.5; the
best possible target AUC follows from the strength (0.5 + strength × s/2 vs. 0.5 − strength × s/2
per user type). The overall test AUC mixes the targets with every ordinary impression, where the
effect is diluted.

Scores come from the run's selected checkpoint (`checkpoints/SELECTED`: the weights its test
metrics came from, the best epoch's when `train.restore_best` reloaded them;
`trainer.predict.Scorer`, one CPU process) on the test split; a candidate is a target when its
item id is one of the design's target ids.
Writes RUN_DIR/planted_metrics.json: `target_auc`, `target_auc_active`, `target_auc_casual`
(AUC over the targets of the design's active / other users) and their sample counts.

    python -m experiments.planted_metrics --data ROOT --design RAW/planted.json   # no --run

prints the **rule's** target AUC instead: the planted rule itself as the score (1 when the
target's two triggers co-occur in its far window, `etl.planted_context.has_pattern`, on the
user's accepted events of the `events` table), for the same test targets. It is what a model that
learned the pattern exactly would reach, up to the click draws (the ceiling to read a run's
target AUC against); on the control (strength 0) it is 0.5 up to noise.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from deltalake import DeltaTable

from contract.feature_spec import FeatureSpec
from etl.planted_context import PlantedDesign, has_pattern
from model.batch import Keys
from trainer.data import SamplesTable, SampleStream, rank_share
from trainer.metrics import compute_metrics
from trainer.predict import Scorer

PLANTED_METRICS = ("target_auc", "target_auc_active", "target_auc_casual")
RESULT_FILE = "planted_metrics.json"


def target_scores(
    run_dir: Path, data: Path, target_items: set[int], split: str = "test"
) -> dict[str, np.ndarray]:
    """user ids, labels and logits of the split's target candidates, scored by the run's model."""
    scorer = Scorer.from_checkpoint(run_dir)  # its SELECTED checkpoint
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
    result: dict[str, float] = {"design": str(design_path), "strength": design["strength"],
                                **by_user_type(scores, design, "target_auc")}
    (run_dir / RESULT_FILE).write_text(json.dumps(result, indent=1))
    return result


def rule_scores(data: Path, design: dict, split: str = "test") -> dict[str, np.ndarray]:
    """user ids, labels and rule scores (0/1) of the split's target impressions, from the
    `events` table: every user's accepted events in time order, the target's position in them."""
    pairs = np.array([[p["first"], p["second"], p["target"]] for p in design["pairs"]])
    planted = PlantedDesign(  # has_pattern reads the window, the lags and the pairs only
        design["strength"], design["window"], design["lag_min"], design["lag_max"],
        design["rate"], pairs, pair_authors=np.zeros_like(pairs),
    )
    spec = FeatureSpec.read(str(data))
    dates = set(spec.splits[split].dates)
    click = spec.behaviors.index("click") + 1  # `behavior` codes are 1-based (etl/clean.py)
    events = DeltaTable(str(data / "events")).to_pyarrow_table(
        columns=["user_id", "item_id", "behavior", "ts", "date"]).to_pandas()
    events = events.sort_values(["user_id", "ts"], kind="stable")
    pair_of_target = {int(target): index for index, target in enumerate(pairs[:, 2])}
    users, labels, scores = [], [], []
    for user, rows in events.groupby("user_id", sort=False):
        items = rows["item_id"].to_numpy()
        in_split = rows["date"].isin(dates).to_numpy()
        for position in np.flatnonzero(np.isin(items, pairs[:, 2]) & in_split):
            pattern = has_pattern(planted, items, pair_of_target[int(items[position])],
                                  int(position))
            users.append(user)
            labels.append(float(rows["behavior"].iat[position] == click))
            scores.append(float(pattern))
    return {"users": np.array(users, np.int64), "labels": np.array(labels, np.float32),
            "logits": np.array(scores, np.float32)}


def by_user_type(scores: dict[str, np.ndarray], design: dict, prefix: str) -> dict[str, float]:
    """AUC (and sample count) over all targets and over the active / casual users' targets."""
    active = np.isin(scores["users"], np.array(design["active_users"], dtype=np.int64))
    result: dict[str, float] = {}
    for name, chosen in (
        (prefix, np.ones_like(active)),
        (f"{prefix}_active", active),
        (f"{prefix}_casual", ~active),
    ):
        result[name] = auc(
            scores["labels"][chosen], scores["logits"][chosen], scores["users"][chosen]
        )
        result[f"{name}_samples"] = int(chosen.sum())
    return result


def rule_metrics(data: Path, design_path: Path) -> dict[str, float]:
    """The planted rule's own target AUC on the test split (the ceiling for a run's)."""
    design = json.loads(design_path.read_text())
    return {"design": str(design_path), "strength": design["strength"],
            **by_user_type(rule_scores(data, design), design, "rule_target_auc")}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", help="a finished trainer run directory (without: the rule's "
                        "own target AUC)")
    parser.add_argument("--data", required=True, help="the ETL output root it was trained on")
    parser.add_argument("--design", required=True, help="planted.json of the raw log")
    arguments = parser.parse_args(argv)
    if arguments.run is None:
        result = rule_metrics(Path(arguments.data), Path(arguments.design))
    else:
        result = planted_metrics(Path(arguments.run), Path(arguments.data), Path(arguments.design))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
