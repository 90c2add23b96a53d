"""The feature spec: the JSON contract between the ETL (writer) and the trainer (reader).

`etl/build_sequences.py` writes `ROOT/feature_spec.json` next to the Delta tables; the trainer
builds its TorchRec tables and length limits from it and refuses a spec it does not understand.
Pure Python (no Spark, no torch): the trainer, the models and the Airflow checks import it.

Version history (`version`): 1 named the samples columns `hist_*`, `req_*`, `cand_*`; 2 names them
`timeline_*`, `request_*`, `candidate_*` (contract/samples.py) and adds `file_samples`. A table
built by an older ETL is refused with a message saying to rebuild it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

SPEC_FILE = "feature_spec.json"
SPEC_VERSION = 2


class FeatureSpecError(ValueError):
    """The spec file is missing, malformed or inconsistent with what the reader expects."""


@dataclass(frozen=True)
class SplitStats:
    """Counts for one split; positive_rate = positives / samples."""

    dates: tuple[str, ...]
    requests: int
    samples: int
    positives: int

    @property
    def positive_rate(self) -> float:
        return self.positives / self.samples if self.samples else 0.0


@dataclass(frozen=True)
class FeatureSpec:
    """Args:
    source: "taobao" or "feed".
    protocol: sample protocol name (see etl/protocols.py).
    behaviors: behavior names; behavior code i + 1 means behaviors[i] (0 is never used).
    num_users / num_items / num_categories: distinct ids in the cleaned events.
    max_item_id / max_category_id: largest raw id, for sizing id-indexed tables.
    max_len: longest lifelong history a request carries; short_len: the short-term window.
    top_categories: k of the profile's most-interacted categories (authors for feed data).
    dense_features: names of the columns of Batch.dense_features, in order.
    demographics: profile field -> cardinality (codes 0..cardinality-1); empty for Taobao.
    time_gap_buckets / watch_time_buckets: sizes of the log2-bucket vocabularies.
    splits: "train"/"test" -> SplitStats.
    tables: logical table name -> path relative to the spec's directory.
    file_samples: samples table file (path relative to the table, as in its Delta log) ->
        split -> samples (candidates) in that file, so trainer ranks balance their shares
        without scanning every file (files missing here are scanned).
    """

    source: str
    protocol: str
    behaviors: tuple[str, ...]
    num_users: int
    num_items: int
    num_categories: int
    max_item_id: int
    max_category_id: int
    max_len: int
    short_len: int
    top_categories: int
    dense_features: tuple[str, ...]
    demographics: dict[str, int] = field(default_factory=dict)
    time_gap_buckets: int = 64
    watch_time_buckets: int = 32
    splits: dict[str, SplitStats] = field(default_factory=dict)
    tables: dict[str, str] = field(default_factory=dict)
    file_samples: dict[str, dict[str, int]] = field(default_factory=dict)
    version: int = SPEC_VERSION

    def to_json(self) -> str:
        payload = asdict(self)
        for name, stats in self.splits.items():
            payload["splits"][name]["positive_rate"] = stats.positive_rate
        return json.dumps(payload, indent=2, sort_keys=True)

    def write(self, root: str | Path) -> Path:
        path = Path(root) / SPEC_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(self.to_json())
        tmp.replace(path)  # atomic: a reader never sees half a spec
        return path

    @staticmethod
    def read(root: str | Path) -> FeatureSpec:
        """From a local ROOT or a URI (s3://, gs://, hdfs://, file://), the latter via pyarrow."""
        path = join(root, SPEC_FILE)
        text = _read_text(path)
        if text is None:
            raise FeatureSpecError(f"no feature spec at {path}: run etl/build_sequences.py first")
        try:
            payload = json.loads(text)
        except json.JSONDecodeError as error:
            raise FeatureSpecError(f"{path} is not valid JSON: {error}") from error
        return FeatureSpec.from_dict(payload, origin=path)

    @staticmethod
    def from_dict(payload: dict, origin: str = "feature spec") -> FeatureSpec:
        version = payload.get("version")
        if version != SPEC_VERSION:
            older = isinstance(version, int) and version < SPEC_VERSION
            raise FeatureSpecError(
                f"{origin}: feature spec version {version!r}, this code reads version "
                f"{SPEC_VERSION}"
                + (
                    ": the tables were built by an older ETL (other column names); rebuild them "
                    "with etl/build_sequences.py"
                    if older
                    else ""
                )
            )
        known = {f.name for f in fields(FeatureSpec)}
        unknown = sorted(set(payload) - known)
        if unknown:
            raise FeatureSpecError(f"{origin}: unknown keys {unknown}")
        values = dict(payload)
        try:
            values["behaviors"] = tuple(values["behaviors"])
            values["dense_features"] = tuple(values["dense_features"])
            values["splits"] = {
                name: SplitStats(
                    dates=tuple(stats["dates"]),
                    requests=int(stats["requests"]),
                    samples=int(stats["samples"]),
                    positives=int(stats["positives"]),
                )
                for name, stats in values.get("splits", {}).items()
            }
            return FeatureSpec(**values)
        except (KeyError, TypeError) as error:
            raise FeatureSpecError(f"{origin}: {error}") from error


def join(root: str | Path, relative: str) -> str:
    """ROOT/relative for a local directory or a URI (Path would fold `s3://` into `s3:/`)."""
    root = str(root)
    if "://" in root:
        return root.rstrip("/") + "/" + relative
    return str(Path(root) / relative)


def _read_text(location: str) -> str | None:
    """The file's text, or None when there is no such file."""
    if "://" not in location:
        path = Path(location)
        return path.read_text() if path.is_file() else None
    from pyarrow import fs

    filesystem, path = fs.FileSystem.from_uri(location)
    if filesystem.get_file_info(path).type != fs.FileType.File:
        return None
    with filesystem.open_input_stream(path) as stream:
        return stream.read().decode("utf-8")
