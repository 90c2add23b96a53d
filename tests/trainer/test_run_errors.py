"""Bad configs and unusable data stop every rank before any process group starts: one line from
rank 0, exit code 2, no run directory (a regression test per failure users hit under torchrun).

The cases found by two ranks run under a real `torchrun` (what the launcher prints, the ranks'
race to report); a one-process case runs `main()` in this process, as rank 0 of a run of one:
the same pre-flight code, without the launcher's ~11 s of imports per case."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from deltalake import DeltaTable, write_deltalake

from contract.feature_spec import FeatureSpec
from tests.trainer.conftest import REPO_ROOT, TINY_OVERRIDES, main_in_process, torchrun
from trainer import main
from trainer.synthetic_samples import write_synthetic_samples

pytestmark = pytest.mark.distributed


def _copy(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def _without_test_rows(tiny_data: Path, root: Path) -> Path:
    """The test day's rows deleted through Delta: the spec still names the day, no rows remain."""
    _copy(tiny_data, root)
    test_day = FeatureSpec.read(root).splits["test"].dates[0]
    DeltaTable(str(root / "samples")).delete(f"date = '{test_day}'")
    return root


def _without_a_file(tiny_data: Path, root: Path) -> Path:
    """A Parquet file deleted by hand: the Delta log still lists it."""
    _copy(tiny_data, root)
    next((root / "samples").rglob("*.parquet")).unlink()
    return root


def _unpartitioned(tiny_data: Path, root: Path) -> Path:
    """The samples rewritten without `date` partitions (not what the ETL writes)."""
    _copy(tiny_data, root)
    rows = DeltaTable(str(root / "samples")).to_pyarrow_table()
    shutil.rmtree(root / "samples")
    write_deltalake(str(root / "samples"), rows)
    return root


# case -> (prepare the data root, overrides, the message, processes)
CASES = {
    "misspelled key": (lambda data, root: data, ["train.batch_sizee=5"], "train.batch_sizee", 2),
    "unknown model": (lambda data, root: data, ["model.name=nope"], "unknown model 'nope'", 1),
    "empty data directory": (lambda data, root: root.mkdir() or root, [], "no feature spec at", 1),
    "deleted parquet file": (_without_a_file, [], "are missing", 2),
    "empty test split": (_without_test_rows, [], "the test split", 1),
    "validation days without date partitions": (
        _unpartitioned, ["data.validation_days=1"], "without a `date` partition value", 1
    ),
    "exact adam on cpu": (
        lambda data, root: data, ["train.sparse_optimizer=adam"], "no CPU kernel", 1
    ),
    "row-wise adam on cpu": (
        lambda data, root: data, ["train.sparse_optimizer=rowwise_adam"], "no CPU kernel", 1
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_exit_code_two_and_no_run_directory(
    case, tiny_data, tmp_path, capfd
):
    prepare, overrides, message, nproc = CASES[case]
    data = prepare(tiny_data, tmp_path / "data")
    run_dir = tmp_path / "run"
    arguments = ["--data", str(data), "--output", str(run_dir), *TINY_OVERRIDES, *overrides]
    if nproc > 1:
        process = torchrun(arguments, nproc=nproc)
        assert process.returncode != 0
        # the workers' exit code, as torchrun reports it
        assert "exitcode  : 2" in process.stderr, process.stderr[-3000:]
        stderr = process.stderr
    else:
        code, stderr = main_in_process(arguments, capfd)
        assert code == main.INPUT_ERROR, stderr[-3000:]
    ours = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(ours) == 1 and message in ours[0], stderr[-3000:]
    # No Python traceback from our code on any rank (torchrun adds its own failure summary).
    assert f'File "{REPO_ROOT / "trainer"}' not in stderr
    assert not run_dir.exists()


def test_an_empty_split_in_a_fresh_build_is_refused(tmp_path, capfd):
    """0 train samples (a build of bad input) would train nothing and report auc=NaN."""
    root = tmp_path / "data"
    write_synthetic_samples(root, users=4, days=2)
    train_day = FeatureSpec.read(root).splits["train"].dates[0]
    DeltaTable(str(root / "samples")).delete(f"date = '{train_day}'")
    code, stderr = main_in_process(
        ["--data", str(root), "--output", str(tmp_path / "run"), *TINY_OVERRIDES], capfd
    )
    assert code == main.INPUT_ERROR
    assert "error: the train split" in stderr and "is empty" in stderr
    assert not (tmp_path / "run").exists()


def test_a_rank_whose_first_rank_found_nothing_reports_the_error_itself(
    tiny_data, monkeypatch, capfd
):
    """Ranks other than 0 wait before exiting (torchrun stops every worker when the first exits,
    which once cut rank 0's line); still running after the wait, a rank prints the error itself."""
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setattr(main, "REPORT_GRACE_S", 0.0)
    with pytest.raises(SystemExit) as exit_info:
        main.main(["--data", str(tiny_data), *TINY_OVERRIDES, "train.batch_sizee=5"])
    assert exit_info.value.code == main.INPUT_ERROR
    lines = capfd.readouterr().err.splitlines()
    assert lines[-1].startswith("error (rank 1): ") and "train.batch_sizee" in lines[-1]
