"""Can a model learn the planted co-occurrence at all, when it is the only signal?

    python -m experiments.learnability --models reference,din,lap,lap_tcn,cain --steps 1000 \
        [--strength 1] [--rule cooccurrence|presence] [--lr 1e-3] [model key=value ...]

The planted suites (docs/experiments.md) ask the question through the whole pipeline, where the
planted targets are a few percent of the impressions and one epoch shows each trigger pair a few
hundred times. This asks it of the model alone, in one process, with nothing else to learn:
every sample is a planted target, and the label depends only on whether its pair's two trigger
items sit within `window` positions of each other far back in the history. A model that cannot
reach the rule's AUC here cannot show the context effect in any suite; one that can but does not
in the suites is short of data or steps there, not of capacity.

Each request (the process of `etl/planted_context.py`, in model space): a history of L random
ordinary items (oldest first); a pair p; its first trigger A_p at lag a uniform in
[lag_min, lag_max] (lag 1 = the newest item) and its second trigger B_p at lag
b = lag_min + (a - lag_min + offset) mod R, R = lag_max - lag_min + 1, the offset within
+-window ("together") or at cyclic distance > window ("apart") with probability 1/2 each, so
each trigger's lag is uniform either way; one candidate, the target T_p, clicked with probability
1/2 + strength/2 when together, 1/2 - strength/2 apart. The rule's AUC (the ceiling) is
1/2 + strength/2. Everything else is a *distractor*, random and unrelated to the label: item
categories (fixed per item), side features (behavior, time gap, watch time), demographics, top
categories and dense profile features. `--no-distractors` makes them all constant (one
category, zeros), so only the item sequence varies: the same draws otherwise; `--distractors
side,profile` keeps only the named groups random (`Distractor`: category, side, profile).

`--rule presence` is the sanity check: the same draws, but an "apart" request loses its second
trigger (its slot keeps the ordinary item), so the label says whether B_p is in the far window at
all. A single item decides it, which every model with a long-term attention should learn; a
model that fails it has a broken history path, not a context problem.

`reference` (not a paper model) is the control that the task is learnable at the given budget:
a plain convolutional detector: item embeddings -> one TCN layer (model.layers'
`TemporalConvNet`, CAIN's default cl = 7) -> ReLU -> max over positions, concatenated with the
candidate's embedding -> MLP. The ReLU before the pooling is what lets it represent "A next to
B"; in CAIN (eq. 5) the TCN output is linear and only the attention's weighting is non-linear in
it.

Training: every parameter (the embedding tables too) with Adam (`--optimizer sgd`: SGD with
momentum 0.9), batches of fresh requests from
one seeded stream; evaluation on a held-out set from another stream; one line per evaluation.
The printed table: each model's held-out AUC after every evaluation and the ceiling.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from enum import Enum
from functools import cached_property

import torch
import torch.nn.functional as F
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from contract.feature_spec import FeatureSpec
from model.batch import Batch, Keys, mean_weights
from model.layers.temporal_convolution import TemporalConvNet
from model.registry import MODELS, build_model
from model.synthetic_batch import tiny_feature_spec
from model.tables import table_layout
from trainer.metrics import auc

PAIRS = 32
REFERENCE = "reference"


class Rule(Enum):
    """What the label depends on (see the module docstring)."""

    COOCCURRENCE = "cooccurrence"  # A_p and B_p within `window` of each other: the planted rule
    PRESENCE = "presence"  # B_p in the far window at all: a single item, the sanity check


class Distractor(Enum):
    """A group of inputs that are random and unrelated to the label (constant when left out)."""

    CATEGORY = "category"  # item categories (fixed per item) of the history and the candidate
    SIDE = "side"  # per-event side features: behavior, time gap, watch time
    PROFILE = "profile"  # demographics, top categories, dense profile features


ALL_DISTRACTORS = frozenset(Distractor)


@dataclass(frozen=True)
class PlantedTask:
    """The planted co-occurrence rule in model space (see the module docstring)."""

    spec: FeatureSpec
    strength: float = 1.0
    window: int = 3
    lag_min: int = 60
    lag_max: int = 120
    pairs: int = PAIRS
    rule: Rule = Rule.COOCCURRENCE
    distractors: frozenset[Distractor] = ALL_DISTRACTORS

    @property
    def span(self) -> int:
        return self.lag_max - self.lag_min + 1

    @cached_property
    def rows(self) -> dict[str, int]:
        """Rows of each embedding table (side-feature ids stay below these)."""
        return table_layout(self.spec, 1 << 22).rows

    @cached_property
    def item_category(self) -> torch.Tensor:
        """One fixed category per item, the same in every batch."""
        fixed = torch.Generator().manual_seed(0)
        return torch.randint(0, self.spec.num_categories, (self.spec.num_items,), generator=fixed)

    def batch(self, num_requests: int, generator: torch.Generator) -> tuple[Batch, torch.Tensor]:
        """-> (batch of one target per request, pattern [R] bool)."""
        spec, length = self.spec, self.spec.max_len
        rows, item_category = self.rows, self.item_category
        ordinary = spec.num_items - 3 * self.pairs  # trigger and target ids sit above these

        def integers(low: int, high: int, size: tuple[int, ...]) -> torch.Tensor:
            return torch.randint(low, high, size, generator=generator)

        history = integers(0, ordinary, (num_requests, length))
        pair = integers(0, self.pairs, (num_requests,))
        first_lag = integers(self.lag_min, self.lag_max + 1, (num_requests,))
        together = torch.rand(num_requests, generator=generator) < 0.5
        near = integers(1, self.window + 1, (num_requests,)) * (
            integers(0, 2, (num_requests,)) * 2 - 1
        )
        far = integers(self.window + 1, self.span - self.window, (num_requests,))
        offset = torch.where(together, near, far)
        second_lag = self.lag_min + (first_lag - self.lag_min + offset) % self.span
        rows_index = torch.arange(num_requests)
        history[rows_index, length - first_lag] = ordinary + pair
        pattern = (first_lag - second_lag).abs() <= self.window
        second = ordinary + self.pairs + pair
        if self.rule is Rule.PRESENCE:  # apart: the second trigger's slot keeps its ordinary item
            second = torch.where(pattern, second, history[rows_index, length - second_lag])
        history[rows_index, length - second_lag] = second
        click = 0.5 + self.strength * (pattern.float() - 0.5)
        labels = (torch.rand(num_requests, generator=generator) < click).float()

        target = ordinary + 2 * self.pairs + pair
        ones = torch.ones(num_requests, dtype=torch.long)
        lengths = torch.full((num_requests,), length, dtype=torch.long)
        flat = history.reshape(-1)

        def distractor(kind: Distractor, values: torch.Tensor) -> torch.Tensor:
            """Random ids when `kind` is on; one constant id (0) when off: the same draws."""
            return values if kind in self.distractors else torch.zeros_like(values)

        top_lengths = torch.full((num_requests,), spec.top_categories, dtype=torch.long)
        features = {
            Keys.CANDIDATE_ITEM: (target, ones),
            Keys.CANDIDATE_CATEGORY: (distractor(Distractor.CATEGORY, item_category[target]), ones),
            Keys.HISTORY_ITEM: (flat, lengths),
            Keys.HISTORY_CATEGORY: (distractor(Distractor.CATEGORY, item_category[flat]), lengths),
            Keys.HISTORY_BEHAVIOR: (
                distractor(Distractor.SIDE, integers(0, len(spec.behaviors), flat.shape)) + 1,
                lengths,
            ),
            Keys.HISTORY_TIME_GAP: (
                distractor(Distractor.SIDE, integers(0, rows["time_gap"], flat.shape)),
                lengths,
            ),
            Keys.HISTORY_WATCH_TIME: (
                distractor(Distractor.SIDE, integers(0, rows["watch_time"], flat.shape)),
                lengths,
            ),
            Keys.PROFILE_TOP_CATEGORY: (
                distractor(
                    Distractor.PROFILE,
                    integers(0, spec.num_categories, (num_requests * spec.top_categories,)),
                ),
                top_lengths,
            ),
        }
        for name, cardinality in spec.demographics.items():
            features[Keys.demographic(name)] = (
                distractor(Distractor.PROFILE, integers(0, cardinality, (num_requests,))),
                ones,
            )
        sparse = KeyedJaggedTensor(
            keys=list(features),
            values=torch.cat([values for values, _ in features.values()]),
            lengths=torch.cat([counts for _, counts in features.values()]).int(),
        )
        batch = Batch(
            sparse_features=sparse,
            dense_features=torch.randn(
                num_requests, len(spec.dense_features), generator=generator
            )
            * (Distractor.PROFILE in self.distractors),
            labels=labels,
            request_index=torch.arange(num_requests),
            user_ids=torch.arange(num_requests),
            weights=mean_weights(num_requests),
        )
        return batch, pattern


class ConvolutionalDetector(torch.nn.Module):
    """`reference`: embeddings -> TCN layer -> ReLU -> max-pool, with the candidate -> MLP."""

    def __init__(self, spec: FeatureSpec, dim: int = 16, context_length: int = 7) -> None:
        super().__init__()
        self.items = torch.nn.Embedding(spec.num_items, dim)
        torch.nn.init.uniform_(self.items.weight, -(spec.num_items**-0.5), spec.num_items**-0.5)
        self.tcn = TemporalConvNet(dim, 2 * dim, [context_length], [1], [None])
        self.head = torch.nn.Sequential(
            torch.nn.Linear(3 * dim, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1)
        )

    def forward(self, batch: Batch) -> torch.Tensor:
        history = batch.sparse_features[Keys.HISTORY_ITEM]
        items = self.items(history.values()).view(batch.num_requests, -1, self.items.embedding_dim)
        mask = torch.ones(items.shape[:2], dtype=torch.bool)
        context = torch.relu(self.tcn(items, mask)[0][0]).amax(1)  # [R, 2D]
        candidate = self.items(batch.sparse_features[Keys.CANDIDATE_ITEM].values())
        return self.head(torch.cat([context, candidate], -1)).squeeze(-1)


def build(name: str, spec: FeatureSpec, overrides: dict[str, object]) -> torch.nn.Module:
    if name == REFERENCE:
        return ConvolutionalDetector(spec)
    return build_model(name, spec, {"embedding_dim": 16, "mlp_dims": (128, 64), **overrides})


def evaluate(model: torch.nn.Module, batches: list[Batch]) -> float:
    model.eval()
    with torch.no_grad():
        scores = torch.cat([model(batch) for batch in batches])
    model.train()
    labels = torch.cat([batch.labels for batch in batches])
    return auc(labels.numpy(), scores.numpy())


def train(
    name: str,
    task: PlantedTask,
    steps: int,
    batch_size: int,
    lr: float,
    optimizer_name: str,
    seed: int,
    evaluate_every: int,
    eval_batches: list[Batch],
    overrides: dict[str, object],
) -> list[tuple[int, float]]:
    """-> [(step, held-out AUC)] after every `evaluate_every` steps and the last."""
    torch.manual_seed(seed)
    model = build(name, task.spec, overrides)
    optimizer = (
        torch.optim.Adam(model.parameters(), lr=lr)
        if optimizer_name == "adam"
        else torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    )
    generator = torch.Generator().manual_seed(seed)
    curve: list[tuple[int, float]] = []
    started = time.monotonic()
    for step in range(1, steps + 1):
        batch, _ = task.batch(batch_size, generator)
        logits = model(batch)
        loss = F.binary_cross_entropy_with_logits(logits, batch.labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % evaluate_every == 0 or step == steps:
            curve.append((step, evaluate(model, eval_batches)))
            print(
                f"{name}: step {step}/{steps} loss {loss.item():.4f} "
                f"held-out AUC {curve[-1][1]:.4f} ({time.monotonic() - started:.0f} s)",
                flush=True,
            )
    return curve


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="reference,din,lap,lap_tcn,cain")
    parser.add_argument("--strength", type=float, default=1.0)
    parser.add_argument("--window", type=int, default=3)
    parser.add_argument("--rule", choices=[rule.value for rule in Rule], default="cooccurrence")
    parser.add_argument(
        "--distractors",
        default=",".join(kind.value for kind in Distractor),
        help="comma list of the random input groups (category, side, profile); the others are "
        "constant",
    )
    parser.add_argument(
        "--no-distractors",
        action="store_true",
        help="constant categories, side features and profile: only the item sequence varies",
    )
    parser.add_argument("--max-len", type=int, default=128)
    parser.add_argument("--items", type=int, default=5000, help="catalog size (ordinary items)")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument(
        "--optimizer",
        choices=["adam", "sgd"],
        default="adam",
        help="for every parameter; sgd = SGD with momentum 0.9 at --lr",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--eval-requests", type=int, default=4096)
    parser.add_argument("--evaluate-every", type=int, default=250)
    parser.add_argument(
        "overrides", nargs="*", help="model key=value for every model, e.g. context_length=3"
    )
    args = parser.parse_args(argv)
    names = args.models.split(",")
    unknown = [name for name in names if name not in MODELS and name != REFERENCE]
    if unknown:
        parser.error(f"unknown models {unknown}; registered: {', '.join(MODELS)}")
    overrides = dict(item.split("=", 1) for item in args.overrides)
    kinds = {kind.value: kind for kind in Distractor}
    chosen = [name for name in args.distractors.split(",") if name]
    if any(name not in kinds for name in chosen):
        parser.error(f"--distractors takes a comma list of {', '.join(kinds)}, got {chosen}")
    distractors = frozenset() if args.no_distractors else frozenset(map(kinds.get, chosen))
    spec = tiny_feature_spec(
        max_len=args.max_len, short_len=50, num_items=args.items + 3 * PAIRS, num_categories=50
    )
    task = PlantedTask(
        spec,
        strength=args.strength,
        window=args.window,
        rule=Rule(args.rule),
        distractors=distractors,
    )
    eval_generator = torch.Generator().manual_seed(10_000 + args.seed)
    eval_batches, patterns = zip(
        *(task.batch(1024, eval_generator) for _ in range(math.ceil(args.eval_requests / 1024))),
        strict=True,
    )
    labels = torch.cat([batch.labels for batch in eval_batches])
    ceiling = auc(labels.numpy(), torch.cat(patterns).float().numpy())
    print(f"ceiling (the rule's own held-out AUC): {ceiling:.4f}", flush=True)
    curves = {
        name: train(
            name,
            task,
            args.steps,
            args.batch_size,
            args.lr,
            args.optimizer,
            args.seed,
            args.evaluate_every,
            list(eval_batches),
            overrides,
        )
        for name in names
    }
    steps = [step for step, _ in next(iter(curves.values()))]
    print("\n| model | " + " | ".join(f"step {step}" for step in steps) + " |")
    print("|---|" + "---|" * len(steps))
    for name, curve in curves.items():
        print(f"| {name} | " + " | ".join(f"{value:.4f}" for _, value in curve) + " |")
    print("| rule (ceiling) | " + " | ".join(f"{ceiling:.4f}" for _ in steps) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
