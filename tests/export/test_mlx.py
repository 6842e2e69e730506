"""The MLX target: every translated op against PyTorch, unknown ops, shapes, and real models.

``test_llama_structure_shapeless`` covers SmolLM2-135M's architecture with a small random Llama;
the generation bundle tests export a random two-layer Llama, and one slow test exports SmolLM2
itself (minutes) and generates with it.

Each entry of the translation table has a case below: a tiny function whose
decomposed graph contains that op. It runs eagerly with fixed shapes, and as a
shapeless exported function at three shapes (the example, every dynamic axis one
longer, every dynamic axis 1 long), each compared with PyTorch.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F

mx = pytest.importorskip("mlx.core")

from edgesmith import api as es  # noqa: E402
from edgesmith.bundle import Bundle  # noqa: E402
from edgesmith.cli import main  # noqa: E402
from edgesmith.errors import BadInputError, UsageError, exit_code_for  # noqa: E402
from edgesmith.export import get_exporter  # noqa: E402
from edgesmith.export.mlx import check_feeds, trace_feeds  # noqa: E402
from edgesmith.export.mlx import graph as mlx_graph  # noqa: E402
from edgesmith.export.mlx.context import NeedsStatic, op_name  # noqa: E402
from edgesmith.export.mlx.graph import OPS, MlxGraph, decompose  # noqa: E402
from edgesmith.registry import OpTable  # noqa: E402
from edgesmith.models.program import export_program  # noqa: E402
from edgesmith.models.variant import Variant  # noqa: E402
from edgesmith.runtimes import open_runtime  # noqa: E402
from edgesmith.runtimes.generate import Generator, Sampling  # noqa: E402
from edgesmith.specs import TensorSpec  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel:UserWarning"),
    pytest.mark.filterwarnings("ignore:`isinstance\\(treespec, LeafSpec\\)` is deprecated:FutureWarning"),
]

_rng = np.random.default_rng(0)
B = {0: "batch"}
S = {1: "sequence"}
BS = {0: "batch", 1: "sequence"}


def f32(*shape, lo=-2.0, hi=2.0):
    return _rng.uniform(lo, hi, shape).astype(np.float32)


def pos(*shape):
    return f32(*shape, lo=0.5, hi=3.0)


def i64(high, *shape):
    return _rng.integers(0, high, shape).astype(np.int64)


def flag(*shape):
    return _rng.uniform(size=shape) > 0.5


def t(a):
    return torch.from_numpy(a)


@dataclass
class Case:
    """A function, its example inputs, and the dynamic axes of each input (default: batch on axis 0)."""

    fn: Callable
    inputs: list
    dynamic: list | None = None
    atol: float = 1e-5
    static_only: bool = False  # the translation refuses shapeless export for this case
    params: dict = field(default_factory=dict)


W8x6, B8 = t(f32(8, 6)), t(f32(8))
CONV_W, CONV_B, DEPTHWISE = t(f32(4, 3, 3, 3)), t(f32(4)), t(f32(6, 1, 3, 3))
TABLE = t(f32(10, 6))
BN = [t(f32(3)), t(f32(3)), t(f32(3)), t(pos(3))]
LN_W, LN_B = t(f32(6)), t(f32(6))
aten = torch.ops.aten

CASES: dict[str, Case] = {
    # elementwise
    "aten.neg.default": Case(lambda x: -x, [f32(3, 4)]),
    "aten.abs.default": Case(torch.abs, [f32(3, 4)]),
    "aten.exp.default": Case(torch.exp, [f32(3, 4)]),
    "aten.log.default": Case(torch.log, [pos(3, 4)]),
    "aten.sqrt.default": Case(torch.sqrt, [pos(3, 4)]),
    "aten.rsqrt.default": Case(torch.rsqrt, [pos(3, 4)]),
    "aten.sin.default": Case(torch.sin, [f32(3, 4)]),
    "aten.cos.default": Case(torch.cos, [f32(3, 4)]),
    "aten.tanh.default": Case(torch.tanh, [f32(3, 4)]),
    "aten.sigmoid.default": Case(torch.sigmoid, [f32(3, 4)]),
    "aten.erf.default": Case(torch.erf, [f32(3, 4)]),
    "aten.reciprocal.default": Case(torch.reciprocal, [pos(3, 4)]),
    "aten.floor.default": Case(torch.floor, [f32(3, 4)]),
    "aten.ceil.default": Case(torch.ceil, [f32(3, 4)]),
    "aten.relu.default": Case(torch.relu, [f32(3, 4)]),
    "aten.silu.default": Case(F.silu, [f32(3, 4)]),
    "aten.logical_not.default": Case(torch.logical_not, [flag(3, 4)]),
    "aten.alias.default": Case(lambda x: aten.alias.default(x) + 1, [f32(3, 4)]),
    "aten.clone.default": Case(lambda x: x.clone() + 1, [f32(3, 4)]),
    "aten.detach.default": Case(lambda x: aten.detach.default(x) * 2, [f32(3, 4)]),
    "aten.add.Tensor": Case(lambda x, y: x + 2 * y, [f32(3, 4), f32(3, 4)]),
    "aten.add.Scalar": Case(lambda x: aten.add.Scalar(x, 2.5), [f32(3, 4)]),
    "aten.sub.Tensor": Case(lambda x, y: torch.sub(x, y, alpha=3), [f32(3, 4), f32(3, 4)]),
    "aten.sub.Scalar": Case(lambda x: aten.sub.Scalar(x, 1.5), [f32(3, 4)]),
    "aten.rsub.Scalar": Case(lambda x: aten.rsub.Scalar(x, 1.5), [f32(3, 4)]),
    "aten.mul.Tensor": Case(lambda x, y: x * y, [f32(3, 4), f32(3, 4)]),
    "aten.mul.Scalar": Case(lambda x: aten.mul.Scalar(x, 3.0), [f32(3, 4)]),
    "aten.div.Tensor": Case(lambda x, y: x / y, [f32(3, 4), pos(3, 4)]),
    "aten.div.Scalar": Case(lambda x: aten.div.Scalar(x, 3.0), [f32(3, 4)]),
    "aten.div.Tensor_mode": Case(lambda x, y: (torch.div(x, y, rounding_mode="floor"),
                                               torch.div(x, y, rounding_mode="trunc")), [f32(3, 4), pos(3, 4)]),
    "aten.pow.Tensor_Scalar": Case(lambda x: (x ** 2, x ** 3, x.abs() ** 0.5, x.abs() ** 1.7), [f32(3, 4)]),
    "aten.pow.Tensor_Tensor": Case(lambda x, y: x ** y, [pos(3, 4), f32(3, 4)]),
    "aten.pow.Scalar": Case(lambda x: 2.0 ** x, [f32(3, 4)]),
    "aten.maximum.default": Case(torch.maximum, [f32(3, 4), f32(3, 4)]),
    "aten.minimum.default": Case(torch.minimum, [f32(3, 4), f32(3, 4)]),
    "aten.remainder.Tensor": Case(torch.remainder, [f32(3, 4), pos(3, 4)]),
    "aten.remainder.Scalar": Case(lambda x: torch.remainder(x, 0.7), [f32(3, 4)]),
    "aten.eq.Tensor": Case(lambda x, y: x == y, [i64(3, 3, 4), i64(3, 3, 4)]),
    "aten.eq.Scalar": Case(lambda x: x == 1, [i64(3, 3, 4)]),
    "aten.ne.Tensor": Case(lambda x, y: x != y, [i64(3, 3, 4), i64(3, 3, 4)]),
    "aten.ne.Scalar": Case(lambda x: x != 1, [i64(3, 3, 4)]),
    "aten.lt.Tensor": Case(lambda x, y: x < y, [f32(3, 4), f32(3, 4)]),
    "aten.lt.Scalar": Case(lambda x: x < 0.1, [f32(3, 4)]),
    "aten.le.Tensor": Case(lambda x, y: x <= y, [i64(3, 3, 4), i64(3, 3, 4)]),
    "aten.le.Scalar": Case(lambda x: x <= 1, [i64(3, 3, 4)]),
    "aten.gt.Tensor": Case(lambda x, y: x > y, [f32(3, 4), f32(3, 4)]),
    "aten.gt.Scalar": Case(lambda x: x > 0.1, [f32(3, 4)]),
    "aten.ge.Tensor": Case(lambda x, y: x >= y, [i64(3, 3, 4), i64(3, 3, 4)]),
    "aten.ge.Scalar": Case(lambda x: x >= 1, [i64(3, 3, 4)]),
    "aten.logical_and.default": Case(torch.logical_and, [flag(3, 4), flag(3, 4)]),
    "aten.logical_or.default": Case(torch.logical_or, [flag(3, 4), flag(3, 4)]),
    "aten.bitwise_and.Tensor": Case(lambda a, b, i, j: (a & b, i & j), [flag(3, 4), flag(3, 4), i64(9, 3, 4),
                                                                          i64(9, 3, 4)]),
    "aten.bitwise_or.Tensor": Case(lambda a, b, i, j: (a | b, i | j), [flag(3, 4), flag(3, 4), i64(9, 3, 4),
                                                                         i64(9, 3, 4)]),
    "aten.bitwise_not.default": Case(lambda a, i: (~a, ~i), [flag(3, 4), i64(9, 3, 4)]),
    "aten.where.self": Case(lambda c, x, y: torch.where(c, x, y), [flag(3, 4), f32(3, 4), f32(3, 4)]),
    "aten.scalar_tensor.default": Case(lambda c, x: torch.where(c, x, 0.5), [flag(3, 4), f32(3, 4)]),
    "aten.masked_fill.Scalar": Case(lambda x, m: x.masked_fill(m, -7.0), [f32(3, 4), flag(3, 4)]),
    "aten.masked_fill.Tensor": Case(lambda x, m: x.masked_fill(m, torch.tensor(-7.0)), [f32(3, 4), flag(3, 4)]),
    "aten.clamp.default": Case(lambda x: (x.clamp(-0.5, 0.7), x.clamp(min=0.2)), [f32(3, 4)]),
    "aten.hardtanh.default": Case(F.relu6, [f32(3, 4, lo=-8, hi=8)]),
    "aten.gelu.default": Case(lambda x: (F.gelu(x), F.gelu(x, approximate="tanh")), [f32(3, 4, lo=-4, hi=4)]),
    "aten.leaky_relu.default": Case(lambda x: F.leaky_relu(x, 0.2), [f32(3, 4)]),
    "aten.hardsigmoid.default": Case(F.hardsigmoid, [f32(3, 4, lo=-5, hi=5)]),
    "aten.hardswish.default": Case(F.hardswish, [f32(3, 4, lo=-5, hi=5)]),
    "aten._to_copy.default": Case(lambda x, i: (x.to(torch.int64), i.float(), i.bool()), [f32(3, 4, lo=-9, hi=9),
                                                                                        i64(3, 3, 4)]),
    # reductions and normalisation
    "aten.mean.dim": Case(lambda x: (x.mean(-1), x.mean((0, 1), keepdim=True)), [f32(3, 4)], dynamic=[BS]),
    "aten.sum.dim_IntList": Case(lambda x: (x.sum(1), x.sum(0, keepdim=True)), [f32(3, 4)], dynamic=[BS]),
    "aten.sum.default": Case(lambda x: x.sum(), [f32(3, 4)]),
    "aten.amax.default": Case(lambda x: (x.amax(1), x.amax(0)), [f32(3, 4)], dynamic=[BS]),
    "aten.amin.default": Case(lambda x, i: (x.amin(1), i.amin(0)), [f32(3, 4), i64(50, 3, 4)], dynamic=[BS, BS]),
    "aten.argmax.default": Case(lambda x: (x.argmax(-1), x.argmax(0, keepdim=True)), [f32(3, 4)], dynamic=[BS]),
    "aten.var.correction": Case(lambda x: (x.var(-1), x.var(-1, correction=0, keepdim=True)), [f32(3, 4)]),
    "aten.cumsum.default": Case(lambda x: x.cumsum(1), [f32(3, 4)], dynamic=[BS]),
    "aten._softmax.default": Case(lambda x: x.softmax(-1), [f32(3, 4)], dynamic=[BS]),
    "aten._log_softmax.default": Case(lambda x: (x.log_softmax(-1), x.log_softmax(0)), [f32(3, 4)], dynamic=[BS]),
    "aten.layer_norm.default": Case(lambda x: (F.layer_norm(x, (6,), LN_W, LN_B, 1e-6), F.layer_norm(x, (4, 6))),
                                    [f32(2, 4, 6)], dynamic=[BS]),
    "aten.rms_norm.default": Case(lambda x: (F.rms_norm(x, (6,), LN_W, 1e-6), F.rms_norm(x, (4, 6))),
                                  [f32(2, 4, 6)], dynamic=[BS]),
    "aten._native_batch_norm_legit_no_training.default": Case(
        lambda x: F.batch_norm(x, BN[2], BN[3], BN[0], BN[1], False, 0.1, 1e-3), [f32(2, 3, 4, 4)]),
    # linear algebra
    "aten.linear.default": Case(lambda x: (F.linear(x, W8x6, B8), F.linear(x, W8x6)), [f32(2, 5, 6)], dynamic=[BS]),
    "aten.mm.default": Case(lambda x: aten.mm.default(x, W8x6.T), [f32(3, 6)]),
    "aten.bmm.default": Case(torch.bmm, [f32(2, 3, 5), f32(2, 5, 4)]),
    "aten.matmul.default": Case(lambda x, y: x @ y, [f32(2, 3, 5), f32(5, 4)], dynamic=[BS, {}]),
    "aten.addmm.default": Case(lambda x: torch.addmm(B8, x, W8x6.T, beta=0.5, alpha=2.0), [f32(3, 6)]),
    "aten.scaled_dot_product_attention.default": Case(
        lambda q, k, v, m: (F.scaled_dot_product_attention(q, k, v, attn_mask=m),
                            F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.3),
                            F.scaled_dot_product_attention(q, k, v, attn_mask=m.float() * -3.0),
                            F.scaled_dot_product_attention(q, k[:, :1], v[:, :1], enable_gqa=True)),
        [f32(2, 2, 5, 4), f32(2, 2, 5, 4), f32(2, 2, 5, 4), np.tril(np.ones((5, 5), bool)) | flag(1, 1, 5, 5)],
        dynamic=[{0: "batch", 2: "sequence"}] * 3 + [{2: "sequence", 3: "sequence"}], atol=1e-5),
    # convolution and pooling
    "aten.conv2d.default": Case(lambda x: (F.conv2d(x, CONV_W, CONV_B, padding=1),
                                           F.conv2d(x, CONV_W, stride=2, dilation=2),
                                           F.conv2d(x, DEPTHWISE, groups=3)),
                                [f32(2, 3, 9, 9)]),
    "aten.conv1d.default": Case(lambda x: F.conv1d(x, CONV_W[..., 0], CONV_B, padding=1, stride=2), [f32(2, 3, 9)]),
    "aten.conv2d.padding": Case(lambda x: F.conv2d(x, CONV_W[:3, :1, :2], padding="same", groups=3),
                                [f32(2, 3, 7, 7)]),
    "aten.conv1d.padding": Case(lambda x: F.conv1d(x, CONV_W[..., 0], padding="valid"), [f32(2, 3, 9)]),
    "aten.convolution.default": Case(lambda x: aten.convolution.default(x, CONV_W, CONV_B, [1, 2], [0, 1], [1, 1],
                                                                          False, [0, 0], 1), [f32(2, 3, 8, 8)]),
    "aten.max_pool2d_with_indices.default": Case(
        lambda x: (F.max_pool2d(x, 2), F.max_pool2d(x, 3, 2, 1), F.max_pool2d(x, 2, 2, ceil_mode=True)),
        [f32(2, 3, 7, 7)]),
    "aten.avg_pool2d.default": Case(
        lambda x: (F.avg_pool2d(x, 2), F.avg_pool2d(x, 3, 2, 1), F.avg_pool2d(x, 3, 2, 1, count_include_pad=False),
                   F.avg_pool2d(x, 2, divisor_override=3)), [f32(2, 3, 8, 8)]),
    "aten._adaptive_avg_pool2d.default": Case(lambda x: F.adaptive_avg_pool2d(x, (2, 4)), [f32(2, 3, 8, 8)]),
    "aten.upsample_bilinear2d.vec": Case(
        lambda x: (F.interpolate(x, size=(11, 4), mode="bilinear"),
                   F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=True),
                   F.interpolate(x, scale_factor=1.5, mode="bilinear"),
                   F.interpolate(x, size=(1, 3), mode="bilinear")), [f32(2, 3, 8, 6)]),
    "aten.upsample_nearest2d.vec": Case(
        lambda x: (F.interpolate(x, size=(12, 5), mode="nearest"),
                   F.interpolate(x, scale_factor=2.0, mode="nearest")), [f32(2, 3, 8, 6)]),
    # shapes and indexing
    "aten.sym_size.int": Case(lambda x: x.view(x.shape[0], -1), [f32(2, 3, 4)]),
    "aten._assert_tensor_metadata.default": Case(lambda x: x.to(torch.int32), [f32(3, 4, lo=-9, hi=9)]),
    "aten.view.default": Case(lambda x: (x.view(x.shape[0], x.shape[1], 2, 3).transpose(1, 2).contiguous()
                                         .view(x.shape[0], 2, -1), x.view(-1, 6)),
                              [f32(2, 5, 6)], dynamic=[BS]),
    "aten._unsafe_view.default": Case(lambda x: x.unsqueeze(2).expand(-1, -1, 2, -1).reshape(x.shape[0], -1, 6),
                                      [f32(2, 5, 6)], dynamic=[BS]),
    "aten.permute.default": Case(lambda x: x.permute(2, 0, 1), [f32(2, 3, 4)], dynamic=[BS]),
    "aten.transpose.int": Case(lambda x: x.transpose(0, -1), [f32(2, 3, 4)], dynamic=[BS]),
    "aten.unsqueeze.default": Case(lambda x: (x.unsqueeze(1), x.unsqueeze(-1)), [f32(3, 4)]),
    "aten.squeeze.dim": Case(lambda x: x.squeeze(1), [f32(3, 1, 4)]),
    "aten.squeeze.dims": Case(lambda x: x.squeeze((1, 3)), [f32(3, 1, 4, 1)]),
    "aten.squeeze.default": Case(lambda x: aten.squeeze.default(x), [f32(3, 1, 4, 1)], dynamic=[{}]),
    "aten.expand.default": Case(lambda x, m: (x.expand(-1, 3, -1), m[:, None, None, :].expand(-1, 1, m.shape[1], -1)),
                                [f32(2, 1, 4), flag(2, 5)], dynamic=[B, BS]),
    "aten.cat.default": Case(lambda x, y: (torch.cat([x, y], 1), torch.cat([x, x], 0)), [f32(2, 3), f32(2, 4)]),
    "aten.slice.Tensor": Case(lambda x: (x[:, 1:3], x[:, -2:], x[:, -3:-1], x[..., :4], x[..., 1::2], x[:, :]),
                              [f32(2, 5, 6)], dynamic=[BS]),
    "aten.select.int": Case(lambda x: (x[:, 0], x[:, -1], x[1], x[..., -1]), [f32(2, 5, 6)],
                            dynamic=[S]),
    "aten.split_with_sizes.default": Case(lambda x: torch.split(x, [1, 3, 2], dim=-1), [f32(2, 5, 6)],
                                          dynamic=[BS]),
    "aten.split.Tensor": Case(lambda x: x.split(4, dim=-1), [f32(2, 5, 6)], dynamic=[BS]),
    "aten.index.Tensor": Case(
        lambda x, i, m: (x.t()[i], x[:, i], x[torch.arange(x.shape[0])[:, None, None], torch.arange(x.shape[1])],
                         m[torch.arange(m.shape[0])[:, None], torch.tensor([0, -1])]),
        [f32(3, 5), i64(3, 2, 2), flag(3, 5)], dynamic=[B, {}, BS]),
    "aten.index_select.default": Case(lambda x, i: x.index_select(1, i), [f32(3, 5), i64(5, 4)], dynamic=[B, {}]),
    "aten.gather.default": Case(lambda x, i: x.gather(1, i), [f32(3, 5), i64(5, 3, 5)], dynamic=[B, B]),
    "aten.embedding.default": Case(lambda i: F.embedding(i, TABLE), [i64(10, 2, 7)], dynamic=[BS]),
    "aten.constant_pad_nd.default": Case(lambda x: (F.pad(x, (1, 2)), F.pad(x, (0, 1, 2, 0), value=-1.5)),
                                         [f32(2, 3, 4)], dynamic=[B]),
    # creation
    "aten.arange.start_step": Case(lambda x: (x + torch.arange(0, 2 * x.shape[1], 2),
                                              torch.arange(-1.0, 1.0, 0.3)), [i64(5, 3, 4)], dynamic=[BS]),
    "aten.arange.start": Case(lambda x: x + aten.arange.start(1, 5), [f32(3, 4)]),
    "aten.arange.default": Case(lambda x: x + torch.arange(x.shape[1]), [i64(5, 3, 4)], dynamic=[BS]),
    "aten.full.default": Case(lambda x: x + torch.full((x.shape[0], 1), 2.5), [f32(3, 4)], dynamic=[BS]),
    "aten.full_like.default": Case(lambda x: (torch.full_like(x, 3), torch.zeros_like(x), torch.ones_like(x)),
                                   [f32(3, 4)], dynamic=[BS]),
}


class _Fn(torch.nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *args):
        return self.fn(*args)


def _variant(name: str, module: torch.nn.Module, inputs: list[np.ndarray], dynamic: list | None,
             task: str = "generic") -> Variant:
    names = [f"x{i}" for i in range(len(inputs))]
    if dynamic is None:
        dynamic = [dict(B) if a.ndim >= 2 else {} for a in inputs]
    example = dict(zip(names, inputs))
    with torch.no_grad():
        out = module(*[t(a) for a in inputs])
    outs = out if isinstance(out, (tuple, list)) else (out,)
    return Variant(
        name=name, module=module.eval(),
        inputs=[TensorSpec(n, a.shape, str(a.dtype), d) for n, a, d in zip(names, inputs, dynamic)],
        outputs=[TensorSpec(f"y{i}", tuple(o.shape), str(o.dtype).removeprefix("torch.")) for i, o in enumerate(outs)],
        example=example, source={"reference": f"test:{name}", "format": "test", "sha256": ""}, task=task,
    )


def _assert_close(ref: dict, got, atol: float, where: str) -> None:
    for (name, r), g in zip(ref.items(), got):
        g = np.array(g)
        assert g.shape == r.shape, (where, name, g.shape, r.shape)
        assert g.dtype == r.dtype, (where, name, g.dtype, r.dtype)
        if np.issubdtype(r.dtype, np.floating):
            np.testing.assert_allclose(g, r, atol=atol * max(1.0, float(np.abs(r).max(initial=0))), rtol=1e-5,
                                       err_msg=f"{where} {name}")
        else:
            np.testing.assert_array_equal(g, r, err_msg=f"{where} {name}")


def _mx_args(variant, feeds):
    return [mx.array(feeds[s.name]) for s in variant.inputs]


# ---------------------------------------------------------------- the translation table, op by op

def test_every_op_has_a_case():
    assert sorted(set(OPS) - set(CASES)) == []
    assert sorted(set(CASES) - set(OPS)) == []


@pytest.mark.parametrize("op", sorted(OPS))
def test_op_matches_torch(op, tmp_path):
    _check(op, CASES[op], tmp_path)


# Reductions over axes that are statically 1 long (a global pool on a 1x1 map) crashed MLX's
# shapeless functions; they are squeezed instead.
EXTRA = {
    "mean over 1x1": ("aten.mean.dim", Case(lambda x: (x.mean((2, 3)), x.mean(-1, keepdim=True)), [f32(2, 3, 1, 1)])),
    "sum over 1 and 4": ("aten.sum.dim_IntList", Case(lambda x: x.sum((2, 3)), [f32(2, 3, 1, 4)])),
    "amax over 1": ("aten.amax.default", Case(lambda x: x.amax(2), [f32(2, 3, 1)])),
}


@pytest.mark.parametrize("label", list(EXTRA))
def test_reduction_over_static_ones(label, tmp_path):
    _check(*EXTRA[label], tmp_path)


def _check(op, case, tmp_path):
    variant = _variant(op.split(".")[1], _Fn(case.fn), case.inputs, case.dynamic)
    wants_dynamic = any(s.dynamic for s in variant.inputs)
    program = decompose(export_program(variant))
    ops = {op_name(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert op in ops, f"the case for {op} does not exercise it: {sorted(ops)}"
    assert any(s.dynamic for s in variant.inputs) == wants_dynamic, variant.notes
    graph = MlxGraph(program)

    got = graph.function(shapeless=False)(*_mx_args(variant, variant.example))
    _assert_close(variant.run(), got, case.atol, "fixed shapes")

    if not wants_dynamic:
        return
    path = str(tmp_path / "f.mlxfn")
    trace = _mx_args(variant, trace_feeds(variant))
    if case.static_only:
        with pytest.raises(NeedsStatic, match=op):
            mx.export_function(path, graph.function(shapeless=True), *trace, shapeless=True)
        return
    mx.export_function(path, graph.function(shapeless=True), *trace, shapeless=True)
    imported = mx.import_function(path)
    for feeds, label in zip([variant.example, *check_feeds(variant, program)], ["example", "longer", "shortest"]):
        _assert_close(variant.run(feeds), imported(*_mx_args(variant, feeds)), case.atol, f"shapeless, {label}")


# ---------------------------------------------------------------- unknown ops

class _Lgamma(torch.nn.Module):
    def forward(self, x):
        return torch.lgamma(x.abs() + 1.0)


def test_unknown_op_names_op_node_and_module(tmp_path):
    net = torch.nn.Sequential(torch.nn.Linear(6, 6), _Lgamma())
    variant = _variant("custom-net", net, [f32(2, 6)], None)
    with pytest.raises(BadInputError) as info:
        get_exporter("mlx").export(variant, tmp_path)
    text = str(info.value)
    assert "MLX has no translation for aten.lgamma.default (node 'lgamma', module 1)" in text, text
    assert exit_code_for(info.value) == 3
    assert list(tmp_path.iterdir()) == []


def test_unknown_op_on_the_command_line(tmp_path, monkeypatch, capsys):
    name = f"es_mlx_nets_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(
        "import torch\n\n"
        "class Lgamma(torch.nn.Module):\n"
        "    def forward(self, x):\n"
        "        return torch.lgamma(x)\n\n"
        "def net():\n"
        "    return torch.nn.Sequential(torch.nn.Linear(6, 6), Lgamma())\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "out"
    code = main(["export", f"py:{name}:net", "--input", "x:2x6", "--target", "mlx", "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 3, err
    assert "Traceback" not in err
    assert "aten.lgamma.default" in err and "'lgamma'" in err and "module 1" in err, err
    assert not any(out.glob("*.mlx"))


# ---------------------------------------------------------------- shapes

class _NeedsStatic(torch.nn.Module):
    """``arange(2 n)``: a size that is no input's size nor a sum of them, so no shape-agnostic MLX form exists."""

    def forward(self, x):
        return x * torch.arange(2 * x.shape[1])[::2]


def test_fixed_shape_fallback_is_noted_and_correct(tmp_path):
    variant = _variant("arange-net", _NeedsStatic(), [f32(3, 5)], [BS])
    bundle, parity = get_exporter("mlx").export(variant, tmp_path)
    assert parity.passed and parity.tier == "verified"
    m = bundle.manifest
    assert all(s.dynamic == {} for s in m.inputs + m.outputs)
    (note,) = [n for n in m.options["notes"] if n.startswith("mlx:")]
    assert "fixed shapes" in note and "aten.arange" in note and "2*sequence" in note, note
    assert variant.inputs[0].dynamic == BS  # the caller's variant is untouched
    with pytest.raises(BadInputError, match="shape"):
        open_runtime(bundle.path).run({"x0": f32(4, 5)})
    # the manifest records what was written, as the file's own metadata does
    meta = json.loads(mx.import_function(str(bundle.path / "model.mlxfn"), return_metadata=True)[1])
    assert meta["shapeless"] is False
    assert m.options["shapeless"] is False
    assert m.details["mlx"] == {"shapeless": False, "shapeless_asked": True}


class _CachePositions(torch.nn.Module):
    """A decoder's size arithmetic: positions ``past + arange(new)``, and a length that is a sum of axes."""

    def forward(self, x, past):
        positions = torch.arange(x.shape[1]) + past.shape[1]
        both = torch.cat([past, x], 1)
        return x * positions, both * torch.arange(past.shape[1] + x.shape[1] + 1)[1:]


def test_sizes_as_values_and_sums_of_sizes_stay_shapeless(tmp_path):
    variant = _variant("positions", _CachePositions(), [f32(2, 3), f32(2, 5)], [{1: "new"}, {1: "past"}])
    bundle, parity = get_exporter("mlx").export(variant, tmp_path)
    assert parity.passed and bundle.manifest.options["shapeless"] is True and bundle.manifest.options["notes"] == []
    runtime = open_runtime(bundle.path)
    for new, past in [(1, 9), (4, 0), (6, 2)]:  # an empty past too: a prefill
        feeds = {"x0": f32(2, new), "x1": f32(2, past)}
        for name, want in variant.run(feeds).items():
            np.testing.assert_allclose(runtime.run(feeds)[name], want, rtol=1e-6, err_msg=f"{name} at {new}, {past}")


class _RowSum(torch.nn.Module):
    def forward(self, x):
        return x.sum(1) * 2


@pytest.mark.parametrize("bad, expected", [
    # a reduction over a dynamic axis that is 1 long at run time kills a shapeless MLX function
    (lambda ctx, x, dim, keepdim=False, dtype=None: mx.sum(x, axis=dim, keepdims=keepdim), "crashed with signal"),
    # mx.take keeps the traced size of the other axes in a shapeless function
    (lambda ctx, x, dim, keepdim=False, dtype=None: mx.sum(mx.take(x, mx.arange(x.shape[1]), axis=1), axis=dim,
                                                           keepdims=keepdim), "wrong at 4x6"),
], ids=["crash", "wrong-shape"])
def test_broken_shapeless_function_falls_back_to_fixed_shapes(tmp_path, monkeypatch, bad, expected):
    """The exporter's own check (in a child process) catches shapeless functions MLX gets wrong."""
    table = OpTable(OPS.target, OPS.what, hint=OPS.hint)
    for name in OPS:
        if name != "aten.sum.dim_IntList":
            table.op(name, **OPS.info(name))(OPS.get(name))
    table.op("aten.sum.dim_IntList")(bad)
    monkeypatch.setattr(mlx_graph, "OPS", table)
    variant = _variant("row-sum", _RowSum(), [f32(3, 5)], [BS])
    bundle, parity = get_exporter("mlx").export(variant, tmp_path)
    assert parity.passed
    (note,) = bundle.manifest.options["notes"]
    assert "fixed shapes" in note and expected in note, note
    assert bundle.manifest.inputs[0].dynamic == {}


def test_shapeless_false_exports_fixed_shapes(tmp_path):
    variant = es.load("zoo:digits-cnn")
    exporter = get_exporter("mlx", {"shapeless": "false"})
    bundle, parity = exporter.export(variant, tmp_path)
    assert parity.passed and bundle.manifest.inputs[0].dynamic == {}
    assert bundle.manifest.options["shapeless"] is False and bundle.manifest.options["notes"] == []
    meta = json.loads(mx.import_function(str(bundle.path / "model.mlxfn"), return_metadata=True)[1])
    assert meta == {"inputs": ["image"], "outputs": ["logits"], "shapeless": False}


def _tiny_llama() -> Variant:
    """A random Llama with SmolLM2's structure: GQA, rotary embeddings, RMSNorm, SiLU MLP, tied head."""
    transformers = pytest.importorskip("transformers")
    from edgesmith.models.hf import wrap_model

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                   tie_word_embeddings=True)
    module = wrap_model(transformers.LlamaForCausalLM(cfg).eval(), ["input_ids", "attention_mask"], "logits")
    ids = i64(128, 1, 12)
    mask = np.ones_like(ids)
    mask[:, 9:] = 0  # right padding, as the zoo's prompts
    return _variant("tiny-llama", module, [ids, mask], [BS, BS], task="lm")


def test_llama_structure_shapeless(tmp_path):
    variant = _tiny_llama()
    variant.inputs = [TensorSpec(n, s.shape, "int64", s.dynamic) for n, s in zip(["input_ids", "attention_mask"],
                                                                                 variant.inputs)]
    variant.example = {"input_ids": variant.example["x0"], "attention_mask": variant.example["x1"]}
    # the prefill graph with a padded mask (the generation step is tested below)
    bundle, parity = get_exporter("mlx", {"generation": "false"}).export(variant, tmp_path)
    assert parity.passed and parity.tier == "verified", parity.failures
    assert all(o.top1_agreement == 1.0 for o in parity.outputs)
    assert bundle.manifest.inputs[0].dynamic == BS and bundle.manifest.options["notes"] == []
    runtime = open_runtime(bundle.path)
    for shape in [(1, 1), (3, 20)]:
        feeds = {"input_ids": i64(128, *shape), "attention_mask": np.ones(shape, np.int64)}
        np.testing.assert_allclose(runtime.run(feeds)["y0"], variant.run(feeds)["y0"], atol=1e-4, rtol=0)


# ---------------------------------------------------------------- real models

@pytest.fixture(scope="module")
def minilm_bundle(tmp_path_factory):
    pytest.importorskip("transformers")
    out = tmp_path_factory.mktemp("mlx-minilm")
    return es.export(es.load("zoo:all-minilm-l6-v2"), out, target="mlx")


def test_minilm_parity_verified_fp32(minilm_bundle):
    bundle, parity = minilm_bundle
    assert parity.passed and parity.tier == "verified" and parity.precision == "fp32"
    for o in parity.outputs:
        assert o.max_abs <= 1e-4 * max(1.0, o.ref_max_abs), o
    m = Bundle.open(bundle.path).manifest
    assert m.runtime == "mlx" and m.model_file == "model.mlxfn" and m.versions["mlx"]
    assert m.inputs[0].dynamic == BS and m.outputs[0].dynamic == BS


def test_minilm_other_batch_and_sequence(minilm_bundle):
    bundle, _ = minilm_bundle
    variant = es.load("zoo:all-minilm-l6-v2")
    runtime = open_runtime(bundle.path)
    for batch, seq in [(1, 5), (3, 23)]:
        feeds = {k: np.resize(v, (batch, seq)).astype(np.int64) for k, v in variant.example.items()}
        feeds["attention_mask"][:, :1] = 1
        ref = variant.run(feeds)["last_hidden_state"]
        got = runtime.run(feeds)["last_hidden_state"]
        assert got.shape == (batch, seq, 384)
        assert np.abs(got - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max())


# ---------------------------------------------------------------- generation bundles (issue 24)

def _greedy(model, ids: list[int], tokens: int, eos: set[int] | None = None) -> list[int]:
    """transformers' greedy ``generate`` (the new tokens, end-of-sequence ids left out)."""
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=tokens, do_sample=False,
                             attention_mask=torch.ones(1, len(ids), dtype=torch.long), pad_token_id=0)
    return [t for t in out[0, len(ids):].tolist() if t not in (eos or set())]


@pytest.fixture(scope="module")
def tiny_generation(tiny_llama, tmp_path_factory):
    """tiny_llama's mlx and onnx generation bundles."""
    out = tmp_path_factory.mktemp("mlx-generation")
    mlx_bundle, parity = es.export(tiny_llama, out, target="mlx")
    assert parity.passed and parity.tier == "verified", parity.failures
    onnx_bundle, _ = es.export(tiny_llama, out, target="onnx")
    return mlx_bundle, onnx_bundle


def test_a_decoder_exports_to_mlx_as_a_shapeless_generation_bundle(tiny_generation):
    m = tiny_generation[0].manifest
    assert m.task == "lm" and m.runtime == "mlx" and m.generation["layers"] == 2 and m.generation["kv_heads"] == 2
    # one shapeless function for the prefill and every decode step: no fixed-shape fallback
    assert m.options["shapeless"] is True and m.options["generation"] is True and m.options["notes"] == []
    assert m.inputs[3].name == "past_key_0" and m.inputs[3].dynamic == {0: "batch", 2: "past"}
    assert m.outputs[1].name == "present_key_0" and m.outputs[1].dynamic == {0: "batch", 2: "total"}
    names = {o["name"] for o in m.parity["outputs"]}
    assert {"logits@prefill", "logits@decode", "present_value_1@decode"} <= names
    greedy = m.parity["generation"]
    assert greedy["passed"] and greedy["matched"] == greedy["tokens"] == 8


def test_mlx_greedy_tokens_equal_transformers_and_the_onnx_bundle(tiny_llama, tiny_generation):
    mlx_bundle, onnx_bundle = tiny_generation
    prompt = [5, 17, 42, 8, 3]
    want = _greedy(tiny_llama.module.model, prompt, 24)
    sampling = Sampling(max_new_tokens=24, ignore_eos=True)
    onnx = Generator(onnx_bundle).generate(prompt, sampling)
    for binding in (True, False):  # the cache kept as MLX arrays, and the numpy stepper
        got = Generator(mlx_bundle, binding=binding).generate(prompt, sampling)
        assert got.tokens == want == onnx.tokens, binding
        assert got.stop_reason == "length" and got.decode_steps == 23
    assert type(Generator(mlx_bundle)._stepper()).__name__ == "MlxStepper"
    # a one-token prompt: the prefill at its smallest
    assert es.generate(mlx_bundle.path, ids=[9], max_new_tokens=6, ignore_eos=True).tokens == _greedy(
        tiny_llama.module.model, [9], 6)


def test_mlx_generation_refuses_bad_input_clearly(tiny_llama, tiny_generation, tmp_path):
    mlx_bundle, _ = tiny_generation
    gen = Generator(mlx_bundle)
    with pytest.raises(BadInputError, match="the prompt is 80 tokens; tiny-llama.mlx takes at most 64"):
        gen.generate(list(range(1, 81)))
    with pytest.raises(BadInputError, match="tiny-llama.mlx has no tokenizer"):
        gen.encode("hello")
    with pytest.raises(UsageError, match="generation='maybe' is not a valid bool"):
        get_exporter("mlx", {"generation": "maybe"})
    prefill_only, _ = get_exporter("mlx", {"generation": "false"}).export(tiny_llama, tmp_path)
    assert prefill_only.manifest.generation is None and [s.name for s in prefill_only.manifest.inputs] == ["input_ids"]
    with pytest.raises(BadInputError, match="tiny-llama.mlx is not a generation bundle: it holds a language model"):
        Generator(prefill_only.path)


@pytest.mark.slow
def test_smollm2_mlx_generates_the_tokens_transformers_does(smollm2, tmp_path_factory):
    """Acceptance item 1 of issue 24 on MLX: SmolLM2's greedy tokens, through the mlx bundle, are transformers'."""
    bundle, parity = es.export(smollm2, tmp_path_factory.mktemp("smollm2-mlx"), target="mlx")
    assert parity.passed and parity.generation["passed"], parity.failures
    assert bundle.manifest.options["shapeless"] is True and bundle.manifest.options["notes"] == []
    gen = Generator(bundle)
    assert gen.tokenizer is not None and gen.eos == {2}
    for prompt in ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village,"]:
        ids = gen.encode(prompt)
        got = es.generate(bundle.path, prompt, max_new_tokens=20)
        assert got.prompt_tokens == ids and got.tokens == _greedy(smollm2.module.model, ids, 20, gen.eos), prompt
