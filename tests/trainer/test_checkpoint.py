"""Checkpoints in one process (a plain module; DCP saves without a process group): which
directories count as finished, what SELECTED names, and a re-save at the same step."""

from __future__ import annotations

import pytest
import torch

from trainer.checkpoint import Checkpoints, step_name

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")


@pytest.fixture
def saving(tmp_path):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    checkpoints = Checkpoints(tmp_path / "checkpoints", keep=1)

    def save(step: int, **keywords):
        with torch.no_grad():
            model.weight.fill_(step)  # which save a directory holds
        return checkpoints.save(step, model, optimizer, {"step": step}, **keywords)

    return checkpoints, save


def _saved_weight(directory) -> float:
    model = torch.nn.Linear(3, 2)
    content = {"model": model.state_dict()}
    torch.distributed.checkpoint.load(content, checkpoint_id=directory)
    return float(content["model"]["weight"][0, 0])


def test_selected_names_the_protected_best_only_when_asked(saving):
    checkpoints, save = saving
    save(4)
    save(8, protect=4)  # keep=1 prunes nothing protected
    assert [path.name for path in checkpoints.complete()] == [step_name(4), step_name(8)]
    assert checkpoints.selected().name == step_name(8)  # e.g. restore_best=false: the last
    save(12, protect=4, selected=4)
    assert [path.name for path in checkpoints.complete()] == [step_name(4), step_name(12)]
    assert checkpoints.selected().name == step_name(4)


def test_a_resave_killed_between_its_renames_leaves_the_first_save_usable(saving):
    checkpoints, save = saving
    first = save(4)
    # The second save at step 4 moves the first aside, then renames its new directory: a kill
    # between the two renames leaves only the moved-aside copy.
    aside = first.with_name(first.name + ".replaced")
    first.rename(aside)
    assert checkpoints.complete() == [aside]
    assert checkpoints.latest() == aside and checkpoints.at(4) == aside
    assert checkpoints.selected() == aside  # SELECTED still says step_00000004
    assert _saved_weight(aside) == 4
    # The relaunched run saves step 4 again: one finished step_00000004, nothing left aside.
    save(4)
    assert [path.name for path in checkpoints.directory.iterdir() if path.is_dir()] == [
        step_name(4)
    ]


def test_a_resave_replaces_the_first_and_partial_directories_never_count(saving):
    checkpoints, save = saving
    save(4)
    save(4)  # an epoch end on a checkpoint_every step
    assert checkpoints.complete() == [checkpoints.directory / step_name(4)]
    (checkpoints.directory / f"{step_name(8)}.partial").mkdir()  # a save killed mid-write
    assert checkpoints.latest().name == step_name(4)
