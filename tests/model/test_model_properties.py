"""Properties every registered model has: shapes, padding, per-request sharing, gradients, seeds,
and a few training steps that lower the loss."""

from __future__ import annotations

import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from model.batch import Batch
from model.registry import MODELS, build_model
from model.synthetic_batch import synthetic_batch, tiny_feature_spec
from model.train_wrapper import CTRTrain

ALL_MODELS = sorted(MODELS)


# Small enough that every registered model trains in well under a second.
TINY = {"embedding_dim": 4, "mlp_dims": [16, 8], "attention_hidden_dims": [8, 4]}


def build(name: str, spec, seed: int = 0, **extra):
    torch.manual_seed(seed)
    return build_model(name, spec, {**TINY, **extra})


@pytest.mark.parametrize("name", ALL_MODELS)
def test_logits_have_one_value_per_sample(name, spec, batch):
    logits = build(name, spec)(batch)
    assert logits.shape == (batch.num_samples,)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", ALL_MODELS)
def test_extra_padding_does_not_change_outputs(name, spec, batch):
    model = build(name, spec).eval()
    with torch.no_grad():
        tight = model(batch)
        model.dense_arch.embedding_layout.pad_history_to = spec.max_len + 13
        padded = model(batch)
    torch.testing.assert_close(padded, tight, rtol=1e-5, atol=1e-5)


def one_request_per_candidate(batch: Batch) -> Batch:
    """The same samples, each as its own request with a copy of its request's history."""
    per_key = batch.sparse_features.to_dict()
    request_of_sample = batch.request_index.tolist()
    candidate_values: dict[str, list[torch.Tensor]] = {}
    request_values: dict[str, list[torch.Tensor]] = {}
    for key, jagged in per_key.items():
        rows = jagged.to_dense()
        if key.startswith("candidate_"):
            flat = jagged.values()
            candidate_values[key] = [flat[i : i + 1] for i in range(len(request_of_sample))]
        else:
            request_values[key] = [rows[r] for r in request_of_sample]
    keys = list(per_key)
    values, lengths = [], []
    for key in keys:
        pieces = candidate_values[key] if key in candidate_values else request_values[key]
        values += pieces
        lengths += [len(piece) for piece in pieces]
    sparse = KeyedJaggedTensor(
        keys=keys, values=torch.cat(values), lengths=torch.tensor(lengths, dtype=torch.int32)
    )
    return Batch(
        sparse_features=sparse,
        dense_features=batch.dense_features[batch.request_index],
        labels=batch.labels,
        request_index=torch.arange(batch.num_samples),
        user_ids=batch.user_ids,
        weights=batch.weights,
    )


@pytest.mark.parametrize("name", ALL_MODELS)
def test_sharing_a_request_equals_scoring_each_candidate_alone(name, spec):
    shared = synthetic_batch(spec, num_requests=3, candidates_per_request=4, seed=5)
    model = build(name, spec).eval()
    with torch.no_grad():
        torch.testing.assert_close(
            model(one_request_per_candidate(shared)), model(shared), rtol=1e-4, atol=1e-5
        )


@pytest.mark.parametrize("name", ALL_MODELS)
def test_every_parameter_receives_a_gradient(name):
    # Histories long enough that CAIN's 4th layer (stride 4 twice) still has 2+ positions to
    # attend over; with one position its softmax is constant and W_Q, W_K get no gradient.
    spec = tiny_feature_spec(max_len=80, short_len=4)
    batch = synthetic_batch(
        spec, num_requests=4, candidates_per_request=(1, 3), history_length=(65, 80)
    )
    model = CTRTrain(build(name, spec))
    loss, _ = model(batch)
    loss.backward()
    missing = [
        parameter_name
        for parameter_name, parameter in model.named_parameters()
        if parameter.grad is None or not parameter.grad.abs().sum() > 0
    ]
    assert not missing, f"no gradient for {missing}"


@pytest.mark.parametrize("name", ALL_MODELS)
def test_same_seed_gives_same_parameters(name, spec):
    first, second, other = build(name, spec, 7), build(name, spec, 7), build(name, spec, 8)
    first_state, second_state = first.state_dict(), second.state_dict()
    assert first_state.keys() == second_state.keys()
    for key in first_state:
        torch.testing.assert_close(first_state[key], second_state[key], rtol=0, atol=0)
    assert any(
        not torch.equal(value, other.state_dict()[key]) for key, value in first_state.items()
    )


@pytest.mark.parametrize("name", ALL_MODELS)
def test_a_few_training_steps_lower_the_loss(name, spec):
    batch = synthetic_batch(spec, num_requests=16, candidates_per_request=(1, 3), seed=11)
    model = CTRTrain(build(name, spec))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    losses = []
    for _ in range(8):
        loss, _ = model(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses


@pytest.mark.parametrize("name", ALL_MODELS)
def test_models_run_without_side_features(name, spec, batch):
    logits = build(name, spec, use_side_features=False)(batch)
    assert logits.shape == (batch.num_samples,) and torch.isfinite(logits).all()


SWITCHES = [
    ("cain", {"context_length": -1}),
    ("cain", {"context_length": 0, "num_layers": 2}),
    ("cain", {"peg_mode": "sum"}),
    ("cain", {"peg_mode": "concat"}),
    ("cain", {"peg_placement": "first"}),
    ("cain", {"peg_placement": "latter"}),
    ("cain", {"peg_inputs": ["demographics"]}),
    ("cain", {"auxiliary_softmax": False, "auxiliary_heads": 2, "auxiliary_dim": 3}),
    ("cain", {"later_context_length": 1, "later_stride": 2}),
    ("cain", {"major_attention": "din"}),
    ("cain", {"context_extractor": "gru", "num_layers": 3}),
    ("cain", {"short_term_attention": "multi_head"}),
    ("cain", {"tcn_bottleneck_dim": 3}),
    ("cain", {"tcn_bottleneck_dim": 2, "peg_mode": "concat", "later_stride": 2}),
    ("cain", {"peg_cache_size": 4}),
    ("lap", {"lap.fsa": "multi_head_ffn", "lap.integration": "sum"}),
    ("lap", {"lap.k_mid": 5, "lap.k_top": 2}),
    ("sim_soft", {"sim_soft.hard_search": True}),
    ("sdim", {"sdim.with_esu": True}),
    ("din", {"din.use_softmax": False, "din.fast": False}),
    ("twin", {"twin.num_heads": 1, "twin.top_k": 3}),
]


@pytest.mark.parametrize("name,overrides", SWITCHES, ids=[str(s) for s in SWITCHES])
def test_switches_build_train_and_keep_padding_invariance(name, overrides, spec, batch):
    model = build(name, spec, **overrides)
    loss, _ = CTRTrain(model)(batch)
    loss.backward()
    assert torch.isfinite(loss)
    model.eval()
    with torch.no_grad():
        tight = model(batch)
        model.dense_arch.embedding_layout.pad_history_to = spec.max_len + 9
        torch.testing.assert_close(model(batch), tight, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel", ["conv", "tap_gemm", "tap_gemm_float32_sum", "auto"])
def test_cain_tcn_kernel_matches_reference(kernel, spec, batch):
    fast = build("cain", spec, tcn_kernel=kernel).eval()
    reference = build("cain", spec, tcn_kernel="reference").eval()
    reference.load_state_dict(fast.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fast(batch), reference(batch), rtol=1e-4, atol=1e-5)


def test_lap_reports_level_overlap(spec, batch):
    model = build("lap", spec, **{"lap.k_mid": 6, "lap.k_top": 3})
    model(batch)
    assert 0.0 <= model.dense_arch.long_term_arch.attention.level_overlap <= 1.0


def test_sim_soft_adds_its_gsu_loss_and_others_do_not(spec, batch):
    _, sim_loss = build("sim_soft", spec).forward_with_losses(batch)
    _, lap_loss = build("lap", spec).forward_with_losses(batch)
    assert sim_loss.item() > 0 and lap_loss.item() == 0


def test_loss_weights_give_the_weighted_sum_and_zero_weights_no_gradient(spec, batch):
    model = CTRTrain(build("lap", spec))
    mean_loss, _ = model(batch)
    doubled, _ = model(batch.with_weights(2 * batch.weights))
    torch.testing.assert_close(doubled, 2 * mean_loss)
    silent, _ = model(batch.with_weights(torch.zeros_like(batch.weights)))
    silent.backward()
    assert silent.item() == 0
    assert all(
        parameter.grad is None or not parameter.grad.any() for parameter in model.parameters()
    )


@pytest.mark.parametrize("name", ["cain", "lap", "twin", "sim_soft", "eta", "sdim", "din"])
def test_taobao_like_spec_without_demographics_or_dense_features(name):
    spec = tiny_feature_spec(max_len=20, short_len=3, demographics={}, dense_features=())
    batch = synthetic_batch(spec, num_requests=4, candidates_per_request=2, seed=2)
    loss, (_, logits, labels) = CTRTrain(build(name, spec))(batch)
    loss.backward()
    assert logits.shape == (8,) and torch.isfinite(loss)
    assert torch.equal(labels, batch.labels)


def test_peg_on_empty_inputs_is_refused():
    spec = tiny_feature_spec(demographics={}, dense_features=())
    with pytest.raises(ValueError, match="peg_inputs"):
        build("cain", spec, peg_inputs=["demographics"])


@pytest.mark.parametrize("name", ALL_MODELS)
def test_empty_histories_give_finite_outputs_and_gradients(name, spec):
    batch = synthetic_batch(spec, num_requests=4, candidates_per_request=2, history_length=(0, 3))
    all_empty = synthetic_batch(spec, num_requests=2, candidates_per_request=1, history_length=0)
    model = CTRTrain(build(name, spec))
    for sample in (batch, all_empty):
        loss, (_, logits, _) = model(sample)
        loss.backward()
        assert torch.isfinite(logits).all() and torch.isfinite(loss)
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_split_over_arch_matches_concatenation_in_outputs_and_gradients(spec, batch):
    assert batch.num_samples > batch.num_requests  # requests share candidates: the split runs
    split = build("cain", spec, split_over_arch=True)
    plain = build("cain", spec, split_over_arch=False)
    plain.load_state_dict(split.state_dict())
    split_logits, plain_logits = split(batch), plain(batch)
    torch.testing.assert_close(split_logits, plain_logits, rtol=1e-5, atol=1e-6)
    upstream = torch.randn_like(split_logits)
    split_logits.backward(upstream)
    plain_logits.backward(upstream)
    for (name, a), (_, b) in zip(
        split.named_parameters(), plain.named_parameters(), strict=True
    ):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_cain_peg_cache_gives_the_same_logits(spec, batch):
    cached = build("cain", spec, peg_cache_size=8).eval()
    plain = build("cain", spec).eval()
    plain.load_state_dict(cached.state_dict())
    with torch.no_grad():
        expected = plain(batch)
        torch.testing.assert_close(cached(batch), expected)  # cold
        torch.testing.assert_close(cached(batch), expected)  # every profile cached
