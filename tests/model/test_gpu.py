"""The models on CUDA: a few fp32 training steps equal the same steps on CPU, and bf16 autocast
trains. Marked `gpu` and skipped without a CUDA device (they have not run here: no GPU).

TF32 is switched off for the comparison: with it, CUDA matmuls and convolutions round inputs to
10 mantissa bits and could not match the CPU's fp32 within a tight tolerance.
"""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch

from model.registry import build_model
from model.synthetic_batch import synthetic_batch, tiny_feature_spec
from model.train_wrapper import CTRTrain

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

TINY = {"embedding_dim": 8, "mlp_dims": [32, 16], "attention_hidden_dims": [8, 4]}
STEPS = 3


@pytest.fixture
def fp32_without_tf32():
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def train(
    model: CTRTrain, batches: list, device: torch.device, autocast: bool = False, adam: bool = True
):
    """One optimizer step per batch -> (losses, logits of each step), on the CPU.

    The CPU / CUDA comparison uses SGD: Adam divides by the root of the squared gradient, so a
    gradient that is zero up to rounding (and rounds differently on the two devices) would move
    its parameter by a whole learning rate in either direction."""
    model = model.to(device)
    parameters = model.parameters()
    optimizer = (
        torch.optim.Adam(parameters, lr=1e-2) if adam else torch.optim.SGD(parameters, lr=0.1)
    )
    losses, logits = [], []
    for batch in batches:
        context = (
            torch.autocast(device.type, dtype=torch.bfloat16)
            if autocast
            else contextlib.nullcontext()
        )
        with context:
            loss, (_, step_logits, _) = model(batch.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.detach().float().cpu())
        logits.append(step_logits.float().cpu())
    return torch.stack(losses), logits


def batches_for(spec) -> list:
    return [
        synthetic_batch(spec, num_requests=6, candidates_per_request=(1, 3), seed=seed)
        for seed in range(STEPS)
    ]


@pytest.mark.parametrize("name", ["cain", "lap"])
def test_training_steps_on_cuda_equal_the_same_steps_on_cpu(name, fp32_without_tf32):
    # Histories no longer than LAP's k_top (20): every real item is a finalist on both devices, so
    # a near-tie at the k-th place cannot pick different items (the top-k still runs on CUDA).
    spec = tiny_feature_spec(max_len=20, short_len=5)
    torch.manual_seed(0)
    reference = CTRTrain(build_model(name, spec, TINY))
    on_cuda = copy.deepcopy(reference)
    batches = batches_for(spec)
    cpu_losses, cpu_logits = train(reference, batches, torch.device("cpu"), adam=False)
    cuda_losses, cuda_logits = train(on_cuda, batches, torch.device("cuda"), adam=False)
    torch.testing.assert_close(cuda_losses, cpu_losses, rtol=1e-4, atol=1e-5)
    for cuda_step, cpu_step in zip(cuda_logits, cpu_logits, strict=True):
        torch.testing.assert_close(cuda_step, cpu_step, rtol=1e-4, atol=1e-4)
    for (key, trained), (_, expected) in zip(
        on_cuda.state_dict().items(), reference.state_dict().items(), strict=True
    ):
        torch.testing.assert_close(trained.cpu(), expected, rtol=1e-3, atol=1e-4, msg=key)


@pytest.mark.parametrize("name", ["cain", "lap", "twin", "sim_soft", "eta", "sdim", "din"])
def test_bf16_autocast_training_runs_and_stays_near_fp32(name):
    spec = tiny_feature_spec(max_len=40, short_len=5)
    torch.manual_seed(0)
    fp32 = CTRTrain(build_model(name, spec, TINY))
    bf16 = copy.deepcopy(fp32)
    batches = batches_for(spec)
    device = torch.device("cuda")
    fp32_losses, fp32_logits = train(fp32, batches, device)
    bf16_losses, bf16_logits = train(bf16, batches, device, autocast=True)
    assert torch.isfinite(bf16_losses).all()
    for parameter in bf16.parameters():
        assert parameter.grad is None or torch.isfinite(parameter.grad).all()
    # bf16 keeps 8 bits of mantissa: the first step's logits agree to about 1e-2 of their scale.
    scale = fp32_logits[0].abs().max().clamp(min=1.0)
    torch.testing.assert_close(bf16_logits[0] / scale, fp32_logits[0] / scale, rtol=0, atol=5e-2)
    torch.testing.assert_close(bf16_losses[0], fp32_losses[0], rtol=5e-2, atol=5e-2)
