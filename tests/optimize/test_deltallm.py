"""DeltaLLM: the closed form against the recursion, exact limits, decode state, counted sparsity, refusals, export."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from edgesmith import api as es
from edgesmith.errors import BadInputError, UsageError
from edgesmith.models.variant import Variant
from edgesmith.optimize.deltallm import decode_logits
from edgesmith.optimize.deltallm.attention import DeltaState, delta_scores, reference_queries
from edgesmith.specs import TensorSpec


def _recursion(q, k, theta: float, window: int, sinks: int = 0):
    """Scores step by step as the paper states them: exact in the window, previous score + dq . k outside."""
    b, h, n, _ = q.shape
    scores = torch.zeros(b, h, n, n, dtype=q.dtype)
    ref = q[..., 0, :].clone()
    for t in range(n):
        dq = torch.zeros_like(ref)
        if t > 0:
            fired = (q[..., t, :] - ref).abs() >= theta
            dq = torch.where(fired, q[..., t, :] - ref, torch.zeros_like(ref))
            ref = torch.where(fired, q[..., t, :], ref)
        for j in range(t + 1):
            if t - j < window or j < sinks:
                scores[..., t, j] = (q[..., t, :] * k[..., j, :]).sum(-1)
            else:
                scores[..., t, j] = scores[..., t - 1, j] + (dq * k[..., j, :]).sum(-1)
    return scores


@pytest.mark.parametrize("window,sinks", [(1, 0), (3, 0), (11, 0), (2, 3)])
def test_closed_form_equals_the_step_by_step_recursion(window, sinks):
    gen = torch.Generator().manual_seed(window)
    q = torch.randn(2, 3, 11, 5, dtype=torch.float64, generator=gen).cumsum(-2) * 0.3  # drifting queries
    k = torch.randn(2, 3, 11, 5, dtype=torch.float64, generator=gen)
    causal = torch.ones(11, 11, dtype=torch.bool).tril()
    expected = _recursion(q, k, 0.4, window, sinks)
    scores, fired, _ = delta_scores(q, k, 0.4, window, sinks=sinks)
    assert torch.allclose(scores[..., causal], expected[..., causal], rtol=0, atol=1e-12)
    assert 0.2 < float(fired[..., 1:, :].double().mean()) < 0.9  # the threshold bites: some fire, some not
    # the same scores in two calls, the second continuing from the first's carry (prefill, then decode)
    head, _, carry = delta_scores(q[..., :6, :], k[..., :6, :], 0.4, window, sinks=sinks)
    tail, _, _ = delta_scores(q[..., 6:, :], k, 0.4, window, carry, sinks=sinks)
    assert torch.allclose(tail[..., causal[6:]], expected[..., 6:, :][..., causal[6:]], rtol=0, atol=1e-12)


def test_theta_zero_keeps_every_query_bit_exact():
    q = torch.randn(2, 3, 9, 4)
    for scale in (None, torch.rand(3, 4)):
        ref, fired = reference_queries(q, 0.0, scale=scale)
        assert torch.equal(ref, q) and bool(fired.all())


def test_the_key_criterion_fires_where_keys_are_large():
    q = torch.randn(1, 2, 40, 4).cumsum(-2)
    scale = torch.tensor([[0.0, 0.1, 1.0, 10.0]] * 2)  # key RMS per entry
    _, fired = reference_queries(q, 0.5, scale=scale)
    rate = fired[..., 1:, :].float().mean(dim=(0, 1, 2))
    assert rate[0] == 0 and rate[1] < rate[2] < rate[3]


def test_macs_are_counted_per_pair():
    state = DeltaState("attn", theta=1.0, window=2)
    fired = torch.zeros(1, 1, 4, 3, dtype=torch.bool)
    fired[0, 0, 2, :2] = True  # token 2: 2 of 3 entries fire; token 3: none
    state.count(fired, 0, 4, 3)
    # pairs per token 1, 2, 3, 4; in the window 1, 2, 2, 2; out of it 0, 0, 1, 2 keys
    assert state.macs["prefill"] == {"tokens": 4, "scores_dense": 10 * 3, "scores_delta": 7 * 3 + 1 * 2 + 2 * 0,
                                     "pv": 10 * 3}
    state.count(fired[..., :1, :], 4, 5, 3)  # a decode step at position 4: 2 in the window, 3 out, nothing fired
    assert state.macs["decode"] == {"tokens": 1, "scores_dense": 15, "scores_delta": 6, "pv": 15}


@pytest.fixture(scope="module")
def counting_text(tmp_path_factory):
    path = tmp_path_factory.mktemp("deltallm") / "ids.npz"
    np.savez(path, input_ids=np.random.default_rng(1).integers(0, 97, (6, 16)).astype(np.int64))
    return path


def _delta(variant, text, theta: float, window: int):
    return es.optimize(variant, [f"deltallm:theta={theta},window={window},text={text},seq_len=16,samples=4"])


def _rel(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max())


def _ids(n: int = 14, seed: int = 2) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 97, (2, n)).astype(np.int64))


@pytest.mark.parametrize("theta,window", [(0.0, 3), (0.7, 14)])
def test_exact_limits_equal_dense_attention_in_prefill_and_decode(tiny_llama, counting_text, theta, window):
    delta = _delta(tiny_llama, counting_text, theta, window)
    ids = _ids()
    with torch.no_grad():
        dense = tiny_llama.module.model(input_ids=ids).logits
        assert _rel(delta.module.model(input_ids=ids).logits, dense) < 1e-5
    decoded, counted = decode_logits(delta.module, ids, prefix=5, count=True)
    assert _rel(decoded, dense) < 1e-5
    assert counted["decode"] == {"tokens": 2 * 9, "scores": 0.0, "attention": 0.0}


def test_decode_continues_the_prefill_with_the_delta_state(tiny_llama, counting_text):
    delta = _delta(tiny_llama, counting_text, 0.7, 3)
    ids = _ids()  # two rows: the state is per row
    with torch.no_grad():
        whole = delta.module.model(input_ids=ids).logits
        dense = tiny_llama.module.model(input_ids=ids).logits
        rows = torch.cat([delta.module.model(input_ids=ids[i:i + 1]).logits for i in range(2)])
    decoded, counted = decode_logits(delta.module, ids, prefix=5, count=True)
    assert _rel(decoded, whole) < 1e-5 and _rel(rows, whole) < 1e-5
    assert _rel(whole, dense) > 1e-3  # not trivially dense
    assert counted["prefill"]["tokens"] == 10 and counted["decode"]["tokens"] == 18
    assert 0.0 < counted["decode"]["scores"] < 1.0


def test_a_cache_the_state_does_not_cover_is_refused(tiny_llama, counting_text):
    lm = _delta(tiny_llama, counting_text, 0.7, 3).module.model
    ids = _ids()
    with torch.no_grad():
        first = lm(input_ids=ids[:, :5], use_cache=True)
        lm(input_ids=ids[:, :3], use_cache=True)  # another sequence starts: the state now covers 3 tokens
        with pytest.raises(BadInputError, match=r"attention model.model.layers.0.self_attn got 5 cached token\(s\) of 2 "
                                                r"row\(s\), but its delta state covers 3 token\(s\) of 2 row\(s\)"):
            lm(input_ids=ids[:, 5:6], past_key_values=first.past_key_values, use_cache=True)


def test_pass_counts_its_sparsity_on_text(tiny_llama, counting_text):
    report = _delta(tiny_llama, counting_text, 0.7, 4).passes[-1]["report"]
    assert report["attention_layers"] == 2 and report["counting_tokens"] == 4 * 16
    assert report["counted_on"] == "prefill" and 0.2 < report["score_sparsity"] < 0.9, report
    assert report["attention_sparsity"] == pytest.approx(report["score_sparsity"] / 2, abs=1e-4)  # PV dense
    assert _delta(tiny_llama, counting_text, 0.0, 4).passes[-1]["report"]["score_sparsity"] == 0.0
    assert tiny_llama.module.model.config._attn_implementation == "sdpa"  # the source model is untouched
    assert not any(n.endswith("deltallm") for n, _ in tiny_llama.module.named_modules())


@pytest.mark.parametrize("spec,text", [
    ("deltallm:theta=-0.1", "theta=-0.1 must be at least 0"),
    ("deltallm:window=0", "window=0 must be at least 1"),
    ("deltallm:sinks=-1", "sinks=-1 must be at least 0"),
    ("deltallm:criterion=norm", "criterion='norm' is not key or query"),
])
def test_bad_options_are_refused(spec, text, tiny_llama):
    with pytest.raises(UsageError) as info:
        es.optimize(tiny_llama, [spec])
    assert text in str(info.value)


class _MhaLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed, self.attn, self.head = nn.Embedding(97, 8), nn.MultiheadAttention(8, 2, batch_first=True), \
            nn.Linear(8, 97)

    def forward(self, ids):
        x = self.embed(ids)
        return self.head(self.attn(x, x, x, need_weights=False)[0])


def _lm(module: nn.Module) -> Variant:
    ids = np.zeros((1, 4), np.int64)
    return Variant(name="toy-lm", module=module.eval(), inputs=[TensorSpec("input_ids", (1, 4), "int64")],
                   outputs=[TensorSpec("logits", (1, 4, 97), "float32")], example={"input_ids": ids},
                   source={"reference": "test:toy-lm", "format": "test", "sha256": ""}, task="lm")


def test_attention_it_does_not_recognise_is_refused_by_name():
    with pytest.raises(BadInputError, match=r"attention module attn \(MultiheadAttention\) is not Llama-family "
                                            r"attention \(q_proj/k_proj/v_proj/o_proj with rotary embeddings\)"):
        es.optimize(_lm(_MhaLM()), ["deltallm"])


def test_models_without_attention_or_not_language_models_are_refused():
    with pytest.raises(BadInputError, match="toy-lm has no attention module"):
        es.optimize(_lm(nn.Sequential(nn.Embedding(97, 8), nn.Linear(8, 97))), ["deltallm"])
    with pytest.raises(BadInputError, match="digits-mlp is not a language model"):
        es.optimize(es.load("zoo:digits-mlp"), ["deltallm"])


@pytest.mark.parametrize("target", ["onnx", "mlx"])
def test_the_delta_model_exports_with_parity(tiny_llama, counting_text, tmp_path, target):
    if target == "mlx":
        pytest.importorskip("mlx.core")
    delta = _delta(tiny_llama, counting_text, 0.7, 4)  # window 4 < 12 tokens of the example
    bundle, parity = es.export(delta, tmp_path, target=target)
    assert parity.passed and parity.tier == "verified", parity.summary()
    got = es.run(bundle.path, tiny_llama.example)["logits"]
    dense = tiny_llama.run()["logits"]
    assert np.abs(got - dense).max() / np.abs(dense).max() > 1e-3  # the artifact computes delta attention
