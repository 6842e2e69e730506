"""The ``reparam`` pass: BatchNorm folding is exact with random statistics, and only where it may fold."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from edgesmith.errors import UsageError
from edgesmith.models.variant import Variant
from edgesmith.optimize import PASSES, parse_pass_spec
from edgesmith.optimize.reparam import Reparam
from edgesmith.specs import TensorSpec


def _randomise_bn(bn: nn.modules.batchnorm._BatchNorm, gen: torch.Generator) -> None:
    """Random running statistics and affine parameters, far from the identity fold."""
    n = bn.num_features
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(n, generator=gen) * 2)
        bn.running_var.copy_(torch.rand(n, generator=gen) * 3 + 0.05)
        if bn.affine:
            bn.weight.copy_(torch.randn(n, generator=gen) * 1.5)
            bn.bias.copy_(torch.randn(n, generator=gen))
    bn.eps = 1e-3  # not the default, so a fold that ignores eps shows


def _randomise(module: nn.Module, seed: int) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            _randomise_bn(m, gen)
        elif isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)) and m.bias is not None:
            with torch.no_grad():
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen))  # non-zero biases
    return module.eval()


class _SharedConv(nn.Module):
    """The conv's output feeds the BN *and* a skip connection: folding would change the skip."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y


class _TwoBranches(nn.Module):
    """One foldable pair, and one pair whose conv output is also returned."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.bn_a = nn.BatchNorm2d(4)
        self.b = nn.Conv2d(3, 4, 1)
        self.bn_b = nn.BatchNorm2d(4)

    def forward(self, x):
        yb = self.b(x)
        return torch.relu(self.bn_a(self.a(x))) + self.bn_b(yb) * yb


# name -> (module factory, input shape without batch, BN folds expected)
CASES = {
    "conv2d+bn2d": (lambda: nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()),
                    (3, 6, 6), 1),
    "conv1d+bn1d": (lambda: nn.Sequential(nn.Conv1d(4, 6, 3), nn.BatchNorm1d(6)), (4, 10), 1),
    "linear+bn1d": (lambda: nn.Sequential(nn.Linear(12, 16), nn.BatchNorm1d(16), nn.Linear(16, 5)), (12,), 1),
    "conv2d-nobias+bn2d": (lambda: nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8)),
                           (3, 6, 6), 1),
    "bn-affine-false": (lambda: nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8, affine=False)),
                        (3, 6, 6), 1),
    "depthwise+bn": (lambda: nn.Sequential(nn.Conv2d(8, 8, 3, groups=8, padding=1), nn.BatchNorm2d(8)),
                     (8, 5, 5), 1),
    "grouped+bn": (lambda: nn.Sequential(nn.Conv2d(8, 12, 3, groups=4), nn.BatchNorm2d(12)), (8, 5, 5), 1),
    "stacked": (lambda: nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.Conv2d(8, 8, 3, groups=2), nn.BatchNorm2d(8), nn.Flatten(),
                                      nn.Linear(8 * 4 * 4, 10), nn.BatchNorm1d(10)),
                (3, 6, 6), 3),
    "shared-conv-output": (_SharedConv, (3, 5, 5), 0),
    "one-of-two-branches": (_TwoBranches, (3, 4, 4), 1),
}


def _variant(name: str, module: nn.Module, shape: tuple[int, ...]) -> Variant:
    example = {"x": np.random.default_rng(0).standard_normal((4, *shape)).astype(np.float32)}
    with torch.no_grad():
        out = module(torch.from_numpy(example["x"]))
    return Variant(
        name=name,
        module=module,
        inputs=[TensorSpec("x", example["x"].shape, "float32", {0: "batch"})],
        outputs=[TensorSpec("y", tuple(out.shape), "float32", {0: "batch"})],
        example=example,
        source={"reference": f"test:{name}", "format": "test", "sha256": ""},
    )


def _batch_norm_nodes(gm) -> list:
    return [n for n in gm.graph.nodes if n.op == "call_function" and "batch_norm" in str(n.target)]


def _count_bn(module: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


@pytest.mark.parametrize("case", list(CASES))
def test_fold_is_exact_with_random_statistics(case):
    factory, shape, expected = CASES[case]
    torch.manual_seed(0)
    module = _randomise(factory(), seed=len(case))
    variant = _variant(case, module, shape)
    folded = parse_pass_spec("reparam").apply(variant)

    record = folded.passes[-1]
    assert record["name"] == "reparam" and record["params"] == {"check": True}
    assert record["report"]["folded"] == expected
    assert len(record["report"]["pairs"]) == expected
    assert record["report"]["max_abs"] < 1e-4
    assert variant.passes == []  # the input variant is left as it was

    remaining = _batch_norm_nodes(folded.module)
    assert len(remaining) == _count_bn(module) - expected
    if expected == 0:
        assert folded.module is not module  # still a captured graph, just unfolded

    rng = np.random.default_rng(1)
    for batch in (3, 7):
        x = torch.from_numpy(rng.standard_normal((batch, *shape)).astype(np.float32))
        with torch.no_grad():
            ref = module(x)
            got = folded.module(x)
        assert got.shape == ref.shape
        scale = max(1.0, float(ref.abs().max()))
        diff = float((got - ref).abs().max())
        assert diff / scale < 1e-5, f"{case} at batch {batch}: max abs diff {diff:g} (scale {scale:g})"


def test_fold_changes_weights_not_just_graph():
    """The folded conv really carries the BN: a sanity check that the exactness test can fail."""
    module = _randomise(nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)), seed=3)
    folded = parse_pass_spec("reparam").apply(_variant("check", module, (3, 2, 2)))
    params = dict(folded.module.named_parameters())
    new_w = [p for n, p in params.items() if n.startswith("_reparam") and p.dim() == 4]
    assert len(new_w) == 1
    assert not torch.allclose(new_w[0], module[0].weight)
    bn = module[1]
    a = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    torch.testing.assert_close(new_w[0], module[0].weight * a[:, None, None, None])


def test_check_false_option():
    p = parse_pass_spec("reparam:check=false")
    assert isinstance(p, Reparam) and p.options.check is False
    assert parse_pass_spec(" reparam : check = true ").options.check is True
    module = _randomise(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)), seed=5)
    folded = p.apply(_variant("nocheck", module, (3, 5, 5)))
    record = folded.passes[-1]
    assert record["params"] == {"check": False}
    assert record["report"]["folded"] == 1 and "max_abs" not in record["report"]


def test_unknown_option_names_the_key():
    with pytest.raises(UsageError) as info:
        parse_pass_spec("reparam:bogus=1")
    assert "bogus" in str(info.value) and "check" in str(info.value)  # lists the known options


def test_unknown_pass_names_the_pass():
    with pytest.raises(UsageError) as info:
        parse_pass_spec("nosuchpass")
    assert "nosuchpass" in str(info.value) and "reparam" in str(info.value)


def test_wrong_value_type():
    with pytest.raises(UsageError) as info:
        parse_pass_spec("reparam:check=maybe")
    assert "maybe" in str(info.value) and "check" in str(info.value)


def test_malformed_option():
    with pytest.raises(UsageError, match="key=value"):
        parse_pass_spec("reparam:check")


def test_registered_under_its_name():
    assert PASSES.get("reparam") is Reparam and Reparam.name == "reparam"
