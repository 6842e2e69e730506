"""SLAB's simplified linear attention: the math, the conversion of real attention modules, bad input."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgesmith import api as es
from edgesmith.errors import BadInputError, UsageError
from edgesmith.optimize.slab.layers import Layout, SimplifiedLinearAttention, attentions, build_sla, layout_of


def _quadratic(sla: SimplifiedLinearAttention, x, grid=None):
    """The same attention computed the quadratic way: row-normalised ReLU(Q) ReLU(K)^T, then V."""
    b, n, _ = x.shape
    h, dk, dv = sla.heads, sla.key_dim, sla.value_dim
    k = sla.k(x) + (sla.pos if sla.pos is not None else 0)
    q = torch.relu(sla.q(x)).reshape(b, n, h, dk).transpose(1, 2)
    k = torch.relu(k).reshape(b, n, h, dk).transpose(1, 2)
    v = sla.v(x).reshape(b, n, h, dv).transpose(1, 2)
    weights = q @ k.transpose(-2, -1)
    out = weights @ v / (weights.sum(-1, keepdim=True) + 1e-6)
    maps = v.reshape(b * h, n, dv).transpose(1, 2)
    if grid:
        local = sla.dwc(maps.reshape(b * h, dv, *grid)).reshape(b * h, dv, n)
    else:
        local = sla.dwc(maps)
    out = out + local.transpose(1, 2).reshape(b, h, n, dv)
    return sla.proj(out.transpose(1, 2).reshape(b, n, h * dv))


@pytest.mark.parametrize("grid", [(4, 5), None])
def test_linear_form_equals_the_quadratic_form(grid):
    torch.manual_seed(0)
    sla = SimplifiedLinearAttention(12, 3, 4, 6, nn.Linear(18, 12), grid, kernel=5, two_d=grid is not None)
    with torch.no_grad():  # non-zero position term and convolution, so both branches count
        nn.init.normal_(sla.dwc.weight)
        if sla.pos is not None:
            nn.init.normal_(sla.pos)
    x = torch.randn(2, 20, 12, dtype=torch.float64)
    sla = sla.double()
    got, ref = sla(x), _quadratic(sla, x, grid)
    assert float((got - ref).abs().max()) < 1e-9
    assert float(ref.abs().max()) > 0.1


class _Attention(nn.Module):
    def __init__(self, dim=16, heads=4):
        super().__init__()
        self.heads, self.qkv, self.proj = heads, nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)


def test_projections_are_taken_over_per_head():
    """SLA's q, k and v start as the original's: for the timm layout and EfficientFormer's per-head layout."""
    attn = _Attention()
    layout = layout_of(attn)
    assert layout == Layout(4, 4, 4, per_head=False)
    sla = build_sla(attn, layout, None, 3, False)
    x = torch.randn(2, 7, 16)
    q, k, v = attn.qkv(x).reshape(2, 7, 3, 16).unbind(2)
    assert torch.allclose(sla.q(x), q) and torch.allclose(sla.k(x), k) and torch.allclose(sla.v(x), v)

    from edgesmith.models.zoo.efficientformer import HEADS, KEY_DIM, _TokenAttention

    token = _TokenAttention(64, 7)
    layout = layout_of(token)
    sla = build_sla(token, layout, (7, 7), 5, True)
    x = torch.randn(1, 49, 64)
    per_head = token.qkv(x).reshape(1, 49, HEADS, -1)
    q, k, v = per_head.split([KEY_DIM, KEY_DIM, token.value_dim], dim=-1)
    assert torch.allclose(sla.q(x), q.reshape(1, 49, -1), atol=1e-6)
    assert torch.allclose(sla.k(x), k.reshape(1, 49, -1), atol=1e-6)
    assert torch.allclose(sla.v(x), v.reshape(1, 49, -1), atol=1e-6)


def test_efficientformer_token_attention_is_recognised():
    from edgesmith.models.zoo.efficientformer import _TokenAttention

    model = nn.Sequential(nn.Linear(4, 64), _TokenAttention(64, 7))
    assert [name for name, _, _ in attentions(model)] == ["1"]


@pytest.mark.parametrize("spec,error,text", [
    ("sla", BadInputError, "digits-cnn has no attention the pass recognises (found: no attention module)"),
    ("sla:kernel=4", UsageError, "kernel=4 must be odd"),
    ("sla:grid=3d", UsageError, "grid='3d' is not auto or 1d"),
])
def test_bad_sla_input_is_refused(spec, error, text):
    with pytest.raises(error) as info:
        es.optimize(es.load("zoo:digits-cnn"), [spec])
    assert text in str(info.value)


@pytest.fixture(scope="module")
def digits_vit_sla():
    return es.optimize(es.load("zoo:digits-vit"), ["sla:train=sklearn-digits,steps=200,tune_steps=200"])


def test_digits_vit_attention_is_replaced_and_distilled(digits_vit_sla):
    report = digits_vit_sla.passes[-1]["report"]
    assert [c["module"] for c in report["converted"]] == ["blocks.0.attn", "blocks.1.attn"]
    for c in report["converted"]:
        assert c["grid"] == [4, 4] and c["relative_mse_last"] < c["relative_mse_first"] / 3
    assert sum(isinstance(m, SimplifiedLinearAttention) for m in digits_vit_sla.module.modules()) == 2
    acc = report["test_accuracy"]
    assert acc["sla"] >= acc["softmax"] - 0.02, acc


@pytest.mark.parametrize("target", ["onnx", "coreml", "mlx"])
def test_sla_digits_vit_exports_and_passes_parity(digits_vit_sla, target, tmp_path):
    from edgesmith.export import EXPORTERS

    if target not in EXPORTERS:
        pytest.skip(f"{target} is not installed")
    bundle, parity = es.export(digits_vit_sla, tmp_path, target=target)
    assert parity.passed, parity.summary()


def test_tokens_as_a_sequence_get_a_1d_convolution_and_no_position_term():
    variant = es.optimize(es.load("zoo:digits-vit"), ["sla:train=sklearn-digits,grid=1d,steps=5,tune_steps=0"])
    assert [c["grid"] for c in variant.passes[-1]["report"]["converted"]] == [None, None]
    layers = [m for m in variant.module.modules() if isinstance(m, SimplifiedLinearAttention)]
    assert all(isinstance(m.dwc, nn.Conv1d) and m.pos is None for m in layers)
