"""The neutral contract every package imports: etl writes it, trainer and model read it.

- `contract.feature_spec`: `feature_spec.json`, the description of a built data root (sizes,
  splits, per-file sample counts) written by the ETL next to its Delta tables;
- `contract.samples`: the schema of the `samples` table the trainer streams;
- `contract.config`: how YAML presets and `key=value` overrides become typed, frozen dataclasses
  (one mechanism for the ETL, the trainer and the models).

No Spark and no torch: `feature_spec` and `config` are plain Python (+ PyYAML), so even the
Airflow virtualenv imports them; `samples` adds pyarrow.
"""
