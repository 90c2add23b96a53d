"""The paper's experiments as suites of trainer runs: which models and switches each compares.

A suite is a list of variants (a registered model plus `model.*` overrides) and a baseline; the
report pairs every variant with its reference run of the same seed (the suite's baseline, or the
variant's own reference: Tables 2-3 compare X_TCN / X_MSIA with X). Figure suites give each
variant an x value for the plot.

Default sizes fit the 2-core development machine (docs/experiments.md): the laptop model of
conf/train/default.yaml (16-dim embeddings, MLP 128-64), one epoch, and histories cut to the last
`max_len` = 128 events (`data.max_history`). 128 covers the planted far window (lags 60-120 plus the
window of 3, etl/planted_context.py) while keeping the costliest extractors affordable: the
bidirectional GRU of Table 1 takes over 60 s per 256-sample step at L = 1000 on 2 cores
(docs/models.md). `python -m experiments.run --max-len`, `--config`, `--epochs` and overrides
scale a run up.

Not covered: Figure 7's first-layer stride (CAIN fixes layer 1's stride at 1; there is no
switch), so `fig7` varies the later layers' stride only.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

DEFAULT_MAX_LEN = 128
SIZES = ("model.embedding_dim=16", "model.mlp_dims=[128,64]")


@dataclass(frozen=True)
class Variant:
    """One column of a paper table (one point of a figure).

    Args:
        name: unique label within the suite (its run directories are named after it).
        model: a key of model.registry.MODELS.
        overrides: `model.*` key=value overrides for the trainer.
        reference: name of the variant it is compared with; None = the suite's baseline.
        x: the variant's value on a figure's x axis (figure suites only).
    """

    name: str
    model: str
    overrides: tuple[str, ...] = ()
    reference: str | None = None
    x: float | None = None


@dataclass(frozen=True)
class Suite:
    """Args:
    name: the CLI name (table1 ... table7, fig5 ... fig7).
    title: what the paper's table or figure compares.
    baseline: name of the variant the others are compared with by default.
    variants: the runs of one seed.
    overrides: trainer overrides shared by every run (sizes).
    max_len: L, the history length every run reads (`data.max_history`).
    x_label: the x axis of a figure suite; None for a table.
    """

    name: str
    title: str
    baseline: str
    variants: tuple[Variant, ...]
    overrides: tuple[str, ...] = SIZES
    max_len: int = DEFAULT_MAX_LEN
    x_label: str | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        names = [variant.name for variant in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"suite {self.name}: duplicate variant names {names}")
        for name in (self.baseline, *(v.reference for v in self.variants if v.reference)):
            if name not in names:
                raise ValueError(f"suite {self.name}: no variant named {name!r}")

    def subset(self, names: list[str]) -> Suite:
        """The suite with only `names`, plus the baseline and the references they need."""
        known = {variant.name: variant for variant in self.variants}
        unknown = sorted(set(names) - set(known))
        if unknown:
            raise ValueError(f"suite {self.name} has no variants {unknown}; it has {list(known)}")
        keep = {self.baseline, *names}
        keep |= {self.reference_of(known[name]) for name in names}
        return replace(self, variants=tuple(v for v in self.variants if v.name in keep))

    def reference_of(self, variant: Variant) -> str:
        return variant.reference or self.baseline

    @property
    def is_figure(self) -> bool:
        return self.x_label is not None


BACKBONES = ("sim_soft", "eta", "sdim", "twin", "lap")


def backbone_suite(name: str, title: str, suffix: str) -> Suite:
    """Tables 2 and 3: each backbone X next to X_<suffix>, compared pairwise."""
    variants = []
    for backbone in BACKBONES:
        variants.append(Variant(backbone, backbone))
        variants.append(Variant(f"{backbone}_{suffix}", f"{backbone}_{suffix}", reference=backbone))
    return Suite(name, title, baseline="lap", variants=tuple(variants))


SUITES: dict[str, Suite] = {
    "table1": Suite(
        "table1",
        "Table 1: the context extractor of one layer (GRU, self-attention) vs. the TCN (LAP_TCN)",
        baseline="tcn",
        variants=(
            Variant("tcn", "lap_tcn"),
            Variant("gru", "cain_gru"),
            Variant("self_attention", "cain_self_attention"),
        ),
    ),
    "table2": backbone_suite(
        "table2", "Table 2: backbones X vs. X_TCN (one TCN layer feeding X's attention)", "tcn"
    ),
    "table3": backbone_suite(
        "table3", "Table 3: backbones X vs. X_MSIA (TCN stack with X as major attention)", "msia"
    ),
    "table4": Suite(
        "table4",
        "Table 4: PEG placement in the MSIA (none = CAIN w/o PEG)",
        baseline="none",
        variants=tuple(
            Variant(placement, "cain", (f"model.peg_placement={placement}",))
            for placement in ("none", "first", "latter", "all")
        ),
    ),
    "table5": Suite(
        "table5",
        "Table 5: PEG inputs (each group alone vs. all; demographics need a feed source)",
        baseline="all",
        variants=(
            Variant("demographics", "cain", ("model.peg_inputs=[demographics]",)),
            Variant("behavior_statistics", "cain", ("model.peg_inputs=[behavior_statistics]",)),
            Variant("top_categories", "cain", ("model.peg_inputs=[top_categories]",)),
            Variant("all", "cain"),
        ),
    ),
    "table6": Suite(
        "table6",
        "Table 6: how PEG's filters combine with the global ones",
        baseline="replace",
        variants=tuple(
            Variant(mode, "cain", (f"model.peg_mode={mode}",))
            for mode in ("replace", "sum", "concat")
        ),
    ),
    "table7": Suite(
        "table7",
        "Table 7: overall (LAP_TCN = CAIN w/o MSIA and PEG, LAP_MSIA = CAIN w/o PEG)",
        baseline="lap",
        variants=tuple(
            Variant(model, model)
            for model in (
                "din",
                "sim_soft",
                "eta",
                "sdim",
                "twin",
                "lap",
                "lap_tcn",
                "lap_msia",
                "cain",
            )
        ),
    ),
    "fig5": Suite(
        "fig5",
        "Figure 5: context length of the single TCN layer (-1 = no TCN, 0 = per-item linear)",
        baseline="cl_-1",
        variants=tuple(
            Variant(f"cl_{length}", "lap_tcn", (f"model.context_length={length}",), x=length)
            for length in (-1, 0, 1, 3, 7, 15, 31)
        ),
        x_label="context length",
    ),
    "fig6": Suite(
        "fig6",
        "Figure 6: MSIA depth (CAIN w/o PEG; 1 layer = LAP_TCN; later layers with layer 1's "
        "stride 1, as the paper sets them for this figure)",
        baseline="layers_1",
        variants=tuple(
            Variant(
                f"layers_{layers}",
                "lap_msia",
                (f"model.num_layers={layers}", "model.later_stride=1"),
                x=layers,
            )
            for layers in range(1, 7)
        ),
        x_label="TCN layers",
    ),
    "fig7": Suite(
        "fig7",
        "Figure 7: stride of the later TCN layers (CAIN w/o PEG, 4 layers; layer 1 stride 1)",
        baseline="stride_4",
        variants=tuple(
            Variant(f"stride_{stride}", "lap_msia", (f"model.later_stride={stride}",), x=stride)
            for stride in range(1, 7)
        ),
        x_label="later-layer stride",
        notes=("The first-layer stride of the paper's Figure 7 has no switch (fixed at 1).",),
    ),
}
