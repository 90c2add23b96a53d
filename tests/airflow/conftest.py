"""Fixtures for the Airflow tests (helpers in airflow_harness.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def airflow_python() -> str:
    python = os.environ.get("CAIN_AIRFLOW_PYTHON")
    if not python:
        pytest.skip("CAIN_AIRFLOW_PYTHON is unset: run `source scripts/setup_airflow.sh` first")
    if not Path(python).is_file():
        pytest.fail(f"CAIN_AIRFLOW_PYTHON={python} does not exist: re-run scripts/setup_airflow.sh")
    return python
