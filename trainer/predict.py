"""Scoring: rebuild a trained model from its checkpoint alone and score requests.

    python -m trainer.predict --checkpoint RUN_DIR/checkpoints/step_00000042 \
        --data ROOT --split test --output scores.parquet

A checkpoint carries the model name, the resolved config, the run's config (its history cut,
`data.max_history`) and the feature spec (`trainer_state.json`), so `Scorer.from_checkpoint`
needs nothing else: it builds the model on CPU (or the given device) in one process, loads the
sharded weights through DCP — which gathers the shards into full tables whatever world size and
sharding wrote them — and scores `Batch`es or raw rows of the samples table. `Scorer.random`
builds an untrained model for latency benchmarks.

Letters: B candidates of the scored requests.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import logging
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.distributed.checkpoint as dcp
from tqdm import tqdm

from contract.config import ConfigError, to_plain
from contract.feature_spec import FeatureSpec
from model.batch import Batch
from model.registry import build_model, resolve_config
from model.tables import table_layout
from model.train_wrapper import CTRTrain
from trainer import checkpoint
from trainer.batching import BatchBuilder
from trainer.data import SamplesTable, SampleStream, rank_share

logger = logging.getLogger("trainer.predict")


@dataclass
class Scorer:
    """A model in eval mode plus the batch builder matching its tables.

    Args:
        module: CTRTrain(model), the same module tree the trainer checkpoints.
        builder: samples rows -> Batch with this model's row mapping.
        model_name: registry name.
        device: where scoring runs.
    """

    module: CTRTrain
    builder: BatchBuilder
    model_name: str
    device: torch.device

    @staticmethod
    def random(
        model_name: str,
        spec: FeatureSpec,
        options: dict | None = None,
        device: str = "cpu",
        seed: int = 0,
    ) -> Scorer:
        """An untrained model (seeded) for latency measurements."""
        torch.manual_seed(seed)
        config = resolve_config(model_name, options)
        model = build_model(model_name, spec, config, device=torch.device(device))
        layout = table_layout(spec, config.max_table_rows)
        return Scorer(
            CTRTrain(model).to(device).eval(),
            BatchBuilder(spec, layout),
            model_name,
            torch.device(device),
        )

    @staticmethod
    def from_checkpoint(path: str | Path, device: str = "cpu") -> Scorer:
        """`path`: a checkpoint, or a run directory (its SELECTED checkpoint).

        The model is rebuilt from the checkpoint's own resolved config; a config this code
        resolves differently (a field added or removed since) is refused, naming the keys."""
        directory = checkpoint.find(path)
        state = checkpoint.verify(directory)
        origin = str(directory / checkpoint.STATE_FILE)
        spec = FeatureSpec.from_dict(state["feature_spec"], origin=origin)
        try:
            config = resolve_config(state["model"], state["model_config"])
        except ConfigError as error:
            raise checkpoint.CheckpointError(
                f"{origin}: this code cannot rebuild the stored model config ({error}); it was "
                f"written by code {state.get('code_version', 'unknown')}"
            ) from error
        checkpoint.ModelIdentity(state["model"], to_plain(config)).check(state, directory)
        module = CTRTrain(build_model(state["model"], spec, config, device=torch.device("cpu")))
        # Histories cut as in training (data.max_history), or the scores are not the evaluated
        # model's: a model trained on its last 128 events would attend over up to max_len.
        max_history = (state.get("config") or {}).get("data", {}).get("max_history")
        builder = BatchBuilder(spec, table_layout(spec, config.max_table_rows), max_history)
        # Only the weights: DCP reads every shard the keys need and fills the full local tensors.
        content = {"model": module.state_dict()}
        try:
            dcp.load(
                content, storage_reader=checkpoint.SafeFileSystemReader(directory), no_dist=True
            )
        except checkpoint.CheckpointError:
            raise
        except Exception as error:
            raise checkpoint.CheckpointError(
                f"cannot load checkpoint {directory}: {error}"
            ) from error
        module.load_state_dict(content["model"])
        logger.info("loaded %s (step %d) from %s", state["model"], state["step"], directory)
        return Scorer(module.to(device).eval(), builder, state["model"], torch.device(device))

    @torch.inference_mode()
    def logits(self, batch: Batch) -> torch.Tensor:
        """Logits [B] for a Batch."""
        _, (_, logits, _) = self.module(batch.to(self.device))
        return logits.float()

    def score(self, batch: Batch) -> torch.Tensor:
        """Click probabilities [B] for a Batch."""
        return torch.sigmoid(self.logits(batch))


def score_split(scorer: Scorer, root: str, split: str, batch_size: int) -> pa.Table:
    """Score a whole split of the samples table: user_id, label, logit, score per candidate.

    The split's dates come from ROOT's own feature spec (a later day's data has later dates than
    the checkpoint's); rows still map to the model's tables through the checkpoint's spec."""
    spec = FeatureSpec.read(root)
    table = SamplesTable.open(root, spec)
    dates = spec.splits[split].dates if split in spec.splits else None
    stream = SampleStream(
        rank_share(table.files(dates), 0, 1),
        scorer.builder,
        split=split,
        batch_size=batch_size,
        shuffle_rows=1024,
        read_rows=256,
        seed=None,
    )
    users, labels, logits = [], [], []
    for batch in tqdm(stream.batches(), desc=f"score {split}", unit="batch"):
        users.append(batch.user_ids.numpy())
        labels.append(batch.labels.numpy())
        logits.append(scorer.logits(batch).cpu().numpy())
    logit = np.concatenate(logits) if logits else np.zeros(0, np.float32)
    return pa.table(
        {
            "user_id": np.concatenate(users) if users else np.zeros(0, np.int64),
            "label": np.concatenate(labels) if labels else np.zeros(0, np.float32),
            "logit": logit,
            "score": 1.0 / (1.0 + np.exp(-logit.astype(np.float64))),
        }
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--checkpoint",
        required=True,
        help="a checkpoint directory (step_XXXXXXXX) or a run directory (its selected checkpoint)",
    )
    parser.add_argument("--data", required=True, help="ETL output root")
    parser.add_argument("--split", default="test")
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--output", required=True, help="Parquet file for user_id, label, score")
    arguments = parser.parse_intermixed_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    logger.setLevel(logging.INFO)
    try:
        scorer = Scorer.from_checkpoint(arguments.checkpoint)
    except checkpoint.CheckpointError as error:
        sys.exit(f"error: {error}")
    scores = score_split(scorer, arguments.data, arguments.split, arguments.batch_size)
    Path(arguments.output).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(scores, arguments.output)
    from trainer.metrics import compute_metrics

    metrics = compute_metrics(
        scores.column("label").to_numpy(),
        scores.column("logit").to_numpy(),
        scores.column("user_id").to_numpy(),
    )
    shown = {name: value for name, value in metrics.to_json().items() if name != "undefined"}
    print(
        f"model={scorer.model_name} auc={shown['auc']} gauc={shown['gauc']} "
        f"logloss={shown['logloss']} n={metrics.samples} -> {arguments.output}"
    )


if __name__ == "__main__":
    main()
