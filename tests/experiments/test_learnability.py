"""The in-model planted task: its draws follow the rule, and the task is learnable by a detector."""

from __future__ import annotations

import pytest
import torch

from experiments.learnability import PAIRS, Distractor, PlantedTask, Rule, main
from model.batch import Keys
from model.synthetic_batch import tiny_feature_spec

SPEC = tiny_feature_spec(max_len=128, short_len=50, num_items=500 + 3 * PAIRS, num_categories=20)


def trigger_lags(task: PlantedTask, num_requests: int, seed: int = 0):
    batch, pattern = task.batch(num_requests, torch.Generator().manual_seed(seed))
    items = batch.sparse_features[Keys.HISTORY_ITEM].values().view(num_requests, -1)
    target = batch.sparse_features[Keys.CANDIDATE_ITEM].values()
    ordinary = SPEC.num_items - 3 * PAIRS
    pair = target - ordinary - 2 * PAIRS
    length = items.shape[1]
    first = (items == (ordinary + pair)[:, None]).int().argmax(1)
    second = (items == (ordinary + PAIRS + pair)[:, None]).int().argmax(1)
    return batch, pattern, length - first, length - second, items, ordinary


def test_each_request_holds_its_pair_once_in_the_far_window_and_the_label_follows_the_rule():
    task = PlantedTask(SPEC, strength=1.0)
    batch, pattern, first_lag, second_lag, items, ordinary = trigger_lags(task, 2000)
    assert ((items >= ordinary).sum(1) == 2).all()  # exactly the two triggers, nothing else planted
    for lag in (first_lag, second_lag):
        assert ((lag >= task.lag_min) & (lag <= task.lag_max)).all()
    assert torch.equal(pattern, (first_lag - second_lag).abs() <= task.window)
    assert torch.equal(batch.labels.bool(), pattern)  # strength 1: the label is the pattern
    assert 0.45 < pattern.float().mean() < 0.55


def test_no_single_trigger_lag_tells_the_arrangement():
    task = PlantedTask(SPEC, strength=1.0)
    _, pattern, first_lag, second_lag, _, _ = trigger_lags(task, 20_000, seed=1)
    for lag in (first_lag, second_lag):
        together, apart = lag[pattern].float(), lag[~pattern].float()
        # both uniform on [60, 120]: mean 90, standard error of a mean ~0.25
        assert abs(together.mean() - apart.mean()) < 1.5
        assert abs(together.std() - apart.std()) < 1.5


def test_presence_rule_keeps_the_second_trigger_only_when_together():
    task = PlantedTask(SPEC, strength=1.0, rule=Rule.PRESENCE)
    batch, pattern, _, _, items, ordinary = trigger_lags(task, 2000, seed=3)
    planted = (items >= ordinary).sum(1)
    assert torch.equal(planted, torch.where(pattern, 2, 1))  # apart: only the first trigger
    assert torch.equal(batch.labels.bool(), pattern)


def test_without_distractors_only_the_item_sequence_varies_and_the_draws_are_the_same():
    noisy, noisy_pattern = PlantedTask(SPEC).batch(500, torch.Generator().manual_seed(4))
    quiet, pattern = PlantedTask(SPEC, distractors=frozenset()).batch(
        500, torch.Generator().manual_seed(4)
    )
    assert torch.equal(pattern, noisy_pattern) and torch.equal(quiet.labels, noisy.labels)
    for key in (Keys.HISTORY_ITEM, Keys.CANDIDATE_ITEM):
        assert torch.equal(quiet.sparse_features[key].values(), noisy.sparse_features[key].values())
    for key in quiet.sparse_features.keys():
        if key not in (Keys.HISTORY_ITEM, Keys.CANDIDATE_ITEM):
            assert quiet.sparse_features[key].values().unique().numel() == 1, key
            assert noisy.sparse_features[key].values().unique().numel() > 1, key
    assert not quiet.dense_features.any() and noisy.dense_features.std() > 0.5


def test_each_distractor_group_varies_only_its_own_inputs():
    items = {Keys.HISTORY_ITEM, Keys.CANDIDATE_ITEM}
    categories = {Keys.HISTORY_CATEGORY, Keys.CANDIDATE_CATEGORY}
    side = {Keys.HISTORY_BEHAVIOR, Keys.HISTORY_TIME_GAP, Keys.HISTORY_WATCH_TIME}
    for kind in Distractor:
        batch, _ = PlantedTask(SPEC, distractors=frozenset({kind})).batch(
            500, torch.Generator().manual_seed(5)
        )
        keys = set(batch.sparse_features.keys())
        varying = {k for k in keys if batch.sparse_features[k].values().unique().numel() > 1}
        profile = keys - items - categories - side  # demographics and top categories
        expected = {Distractor.CATEGORY: categories, Distractor.SIDE: side}.get(kind, profile)
        assert varying - items == expected, kind
        assert bool(batch.dense_features.any()) == (kind is Distractor.PROFILE), kind


def test_strength_zero_labels_are_independent_of_the_pattern():
    task = PlantedTask(SPEC, strength=0.0)
    batch, pattern, *_ = trigger_lags(task, 20_000, seed=2)
    gap = batch.labels[pattern].mean() - batch.labels[~pattern].mean()
    assert abs(gap) < 0.03  # standard error ~0.007


def test_the_reference_detector_learns_the_task_and_the_runner_prints_the_table(capsys):
    # measured: held-out AUC 0.51 after 250 steps, 1.00 after 500 (the default 5,000 items)
    arguments = ["--models", "reference", "--steps", "600", "--evaluate-every", "600"]
    assert main([*arguments, "--eval-requests", "1024"]) == 0
    out = capsys.readouterr().out
    assert "ceiling (the rule's own held-out AUC): 1.0000" in out
    row = next(line for line in out.splitlines() if line.startswith("| reference |"))
    assert float(row.split("|")[2]) > 0.9, out


def test_an_unknown_distractor_group_is_refused_naming_the_groups(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--distractors", "side,weather", "--steps", "1"])
    assert exit_info.value.code == 2
    assert "category, side, profile" in capsys.readouterr().err
