"""Each exact fold of the ``reparam`` pass: outputs unchanged (1e-5 relative) with random BN
statistics and non-zero biases, and the graph really lost the folded ops."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from edgesmith.optimize import parse_pass_spec
from edgesmith.optimize.reparam.graph import op_name

from .test_reparam import _randomise, _variant


class RepVGGDW(nn.Module):
    """LSNet's depthwise block: BN(conv3x3-BN(x) + conv1x1-BN(x) + x)."""

    def __init__(self, c=8):
        super().__init__()
        self.c3, self.b3 = nn.Conv2d(c, c, 3, padding=1, groups=c), nn.BatchNorm2d(c)
        self.c1, self.b1 = nn.Conv2d(c, c, 1, groups=c), nn.BatchNorm2d(c)
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x):
        return self.bn(self.b3(self.c3(x)) + self.b1(self.c1(x)) + x)


class RepVGGDense(nn.Module):
    """RepVGG's block on full convs (3x3 + 1x1 + identity), then ReLU."""

    def __init__(self, c=6, stride=1, identity=True):
        super().__init__()
        self.c3, self.b3 = nn.Conv2d(c, c, 3, stride, 1), nn.BatchNorm2d(c)
        self.c1, self.b1 = nn.Conv2d(c, c, 1, stride, 0), nn.BatchNorm2d(c)
        self.identity = identity

    def forward(self, x):
        y = self.b3(self.c3(x)) + self.b1(self.c1(x))
        if self.identity:
            y = y + x
        return torch.relu(y)


class ThreeKernels(nn.Module):
    """1x1 + 3x3 + 5x5 of one input, each centred (padding k // 2)."""

    def __init__(self):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(4, 6, k, padding=k // 2) for k in (1, 3, 5))

    def forward(self, x):
        return self.convs[0](x) + self.convs[1](x) + self.convs[2](x)


class BNLinear(nn.Module):
    """LSNet's classifier head: BatchNorm1d then Linear."""

    def __init__(self):
        super().__init__()
        self.bn, self.fc = nn.BatchNorm1d(12), nn.Linear(12, 5)

    def forward(self, x):
        return self.fc(self.bn(x.mean((2, 3))))


class BNConv1x1(nn.Module):
    def __init__(self, padding=0):
        super().__init__()
        self.bn, self.conv = nn.BatchNorm2d(8), nn.Conv2d(8, 6, 1 if padding == 0 else 3, padding=padding, groups=2)

    def forward(self, x):
        return self.conv(self.bn(torch.relu(x)))


class LayerScaleMLP(nn.Module):
    """EfficientFormer's 4-D MLP with LayerScale: x + ls * BN(conv(GELU(BN(conv(x)))))."""

    def __init__(self, c=6):
        super().__init__()
        self.fc1, self.n1 = nn.Conv2d(c, 2 * c, 1), nn.BatchNorm2d(2 * c)
        self.fc2, self.n2 = nn.Conv2d(2 * c, c, 1), nn.BatchNorm2d(c)
        self.ls = nn.Parameter(torch.randn(c) * 0.5)

    def forward(self, x):
        y = self.n2(self.fc2(nn.functional.gelu(self.n1(self.fc1(x)))))
        return x + self.ls.unsqueeze(-1).unsqueeze(-1) * y


class LayerScaleTokens(nn.Module):
    """A 3-D (tokens) MLP with LayerScale on the last axis."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 6)
        self.ls = nn.Parameter(torch.randn(6))

    def forward(self, x):
        t = x.flatten(2).transpose(1, 2)
        return t + self.ls * self.fc(t)


class BiasTable(nn.Module):
    """Relative-position bias gathered by a constant index: folded into one constant."""

    def __init__(self):
        super().__init__()
        self.table = nn.Parameter(torch.randn(2, 7))
        self.register_buffer("idx", torch.randint(0, 7, (16, 16)), persistent=False)

    def forward(self, x):
        t = x.flatten(2)  # (B, 2, 16)
        attn = t[:, :, :, None] * t[:, :, None, :] + self.table[:, self.idx]
        return attn.softmax(-1)


class Unrelated(nn.Module):
    """Convs of different inputs, a strided identity: nothing to merge."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 1)

    def forward(self, x):
        return self.a(x) + self.b(torch.relu(x))


# name -> (factory, input shape, expected counts per fold, ops that must be gone)
CASES = {
    "repvgg-depthwise": (RepVGGDW, (8, 6, 6), {"bn_forward": 3, "branches": 1}, {"batch_norm", "add"}),
    "repvgg-dense": (RepVGGDense, (6, 5, 5), {"bn_forward": 2, "branches": 1}, {"add"}),
    "repvgg-stride2": (lambda: RepVGGDense(stride=2, identity=False), (6, 6, 6),
                       {"bn_forward": 2, "branches": 1}, {"add", "batch_norm"}),
    "three-kernels": (ThreeKernels, (4, 7, 7), {"branches": 1}, {"add"}),
    "bn-linear": (BNLinear, (12, 3, 3), {"bn_backward": 1}, {"batch_norm"}),
    "bn-conv1x1-grouped": (BNConv1x1, (8, 4, 4), {"bn_backward": 1}, {"batch_norm"}),
    "bn-padded-conv": (lambda: BNConv1x1(padding=1), (8, 4, 4), {}, set()),
    "layerscale-conv": (LayerScaleMLP, (6, 4, 4), {"bn_forward": 2, "channel_scale": 1}, {"mul", "batch_norm"}),
    "layerscale-linear": (LayerScaleTokens, (6, 4, 4), {"channel_scale": 1}, {"mul"}),
    "bias-table": (BiasTable, (2, 4, 4), {}, {"index"}),
    "unrelated-branches": (Unrelated, (4, 5, 5), {}, set()),
}


def _ops(gm) -> list[str]:
    return [op_name(n) for n in gm.graph.nodes if n.op == "call_function"]


@pytest.mark.parametrize("case", list(CASES))
def test_fold_is_exact(case):
    factory, shape, expected, gone = CASES[case]
    torch.manual_seed(len(case))
    module = _randomise(factory(), seed=len(case) + 1)
    folded = parse_pass_spec("reparam").apply(_variant(case, module, shape))
    report = folded.passes[-1]["report"]
    assert report["by_fold"] == expected, report
    assert report["folded"] == sum(expected.values())
    ops = _ops(folded.module)
    assert not gone & set(ops), ops
    used = {n.target for n in folded.module.graph.nodes if n.op == "get_attr"}
    assert {n for n, _ in folded.module.named_parameters()} <= used  # no weight left behind by a fold
    if case == "bn-padded-conv":
        assert "batch_norm" in ops  # a padded conv after BN must keep the BN: the fold would not be exact

    rng = np.random.default_rng(2)
    for batch in (1, 5):
        x = torch.from_numpy(rng.standard_normal((batch, *shape)).astype(np.float32))
        with torch.no_grad():
            ref, got = module(x), folded.module(x)
        scale = max(1.0, float(ref.abs().max()))
        assert float((got - ref).abs().max()) / scale < 1e-5, case


def test_merged_block_is_one_conv():
    """A RepVGG depthwise block becomes exactly one depthwise 3x3 conv, nothing else."""
    module = _randomise(RepVGGDW(), seed=7)
    folded = parse_pass_spec("reparam").apply(_variant("dw", module, (8, 6, 6)))
    assert [op for op in _ops(folded.module) if op != "_guards_fn"] == ["conv2d"]
    conv = next(n for n in folded.module.graph.nodes if n.op == "call_function" and op_name(n) == "conv2d")
    assert conv.args[4] == [1, 1] and conv.args[6] == 8
