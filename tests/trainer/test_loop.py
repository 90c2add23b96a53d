"""TrainState's bookkeeping of validation, early stopping and learning-rate plateaus, and the
schedule's scale (trainer/loop.py, trainer/optimizers.py); the runs are in
test_train_distributed.py."""

from __future__ import annotations

import pytest
import torch

from trainer.config import LRSchedule, SelectionMetric, TrainConfig
from trainer.loop import TrainState
from trainer.metrics import Metrics
from trainer.optimizers import ClippedSteps, LearningRates


def _validate(state: TrainState, logloss: float) -> bool:
    state.epoch += 1
    state.step += 10
    return state.record_validation(
        Metrics(auc=0.7, gauc=0.7, logloss=logloss, samples=100, gauc_users=10),
        SelectionMetric.LOGLOSS,
    )


def test_a_plateau_scales_the_rates_and_is_recorded_per_epoch():
    config = TrainConfig(epochs=6, early_stopping_patience=3, plateau_lr_factor=0.1)
    state = TrainState()
    assert _validate(state, 0.50)
    assert not state.reduce_on_plateau(0.1, config)  # an improvement: go on as planned
    assert not _validate(state, 0.55)
    assert state.reduce_on_plateau(0.1, config) and state.lr_scale == pytest.approx(0.1)
    assert state.best_step == 10  # the weights to reload
    assert _validate(state, 0.45)
    assert state.validation_history[-1]["lr_scale"] == pytest.approx(0.1)
    assert not state.reduce_on_plateau(0.1, config)
    assert not _validate(state, 0.46)
    assert state.reduce_on_plateau(0.1, config) and state.lr_scale == pytest.approx(0.01)


def test_no_plateau_step_when_off_when_no_best_or_when_the_run_is_over():
    config = TrainConfig(epochs=2, plateau_lr_factor=0.5)
    state = TrainState()
    _validate(state, 0.5)
    _validate(state, 0.6)
    assert not state.reduce_on_plateau(1.0, config)  # factor 1: off
    assert not state.reduce_on_plateau(0.5, config)  # epoch 2 of 2: nothing left to train
    assert state.lr_scale == 1.0
    undefined = TrainState()
    undefined.record_validation(
        Metrics(auc=float("nan"), gauc=float("nan"), logloss=float("nan"), samples=0,
                gauc_users=0),
        SelectionMetric.AUC,
    )
    assert not undefined.reduce_on_plateau(0.5, config)  # no best weights to go back to


def test_the_scale_multiplies_the_scheduled_rates():
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=0.2)
    rates = LearningRates(
        optimizer, TrainConfig(warmup_steps=0, lr_schedule=LRSchedule.CONSTANT), 100
    )
    assert rates.apply(1) == pytest.approx(1.0)
    rates.scale = 0.1
    assert rates.apply(2) == pytest.approx(0.1)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.02)


def test_a_validation_at_an_epochs_last_step_counts_for_that_epoch():
    state = TrainState()
    state.step = 9
    state.record_validation(
        Metrics(auc=0.7, gauc=0.7, logloss=0.5, samples=100, gauc_users=10),
        SelectionMetric.LOGLOSS,
    )
    assert state.validation_history[-1]["epoch"] == 0 and state.best_epoch == 0
    state.end_epoch()
    assert state.validation_history[-1]["epoch"] == 1 and state.best_epoch == 1
    state.step = 12
    state.end_epoch()  # no validation at step 12: the history is left alone
    assert state.validation_history[-1]["epoch"] == 1 and state.epoch == 2


def test_a_resume_on_another_world_size_keeps_the_global_sample_count():
    saved = TrainState(step=7, samples=1001).to_checkpoint(global_samples=1001, world_size=2)
    shares = [TrainState.from_checkpoint(saved, 3, rank).samples for rank in range(3)]
    assert sum(shares) == 1001 and shares == [335, 333, 333]


def test_clipped_steps_record_the_norm_before_clipping_and_step_with_the_clipped_gradient():
    weight = torch.nn.Parameter(torch.zeros(2))
    steps = ClippedSteps(torch.optim.SGD([weight], lr=1.0), [weight], max_norm=1.0)
    steps.zero_grad()
    (torch.tensor([3.0, 4.0]) * weight).sum().backward()  # gradient (3, 4), norm 5
    steps.step()
    assert steps.norm == pytest.approx(5.0)
    torch.testing.assert_close(weight.detach(), torch.tensor([-0.6, -0.8]))
