"""EfficientFormer V1/V2: counts against the papers, shapes, determinism, bias resizing, ONNX parity."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from edgesmith import api as es
from edgesmith.errors import UsageError
from edgesmith.models.zoo import efficientformer as ef
from edgesmith.models.complexity import count_macs, count_params
from edgesmith.models.variant import Variant
from edgesmith.models.zoo import ZOO
from edgesmith.specs import TensorSpec

# Every parameter of the authors' training-time models (distillation head included), counted by
# instantiating their code (snap-research/EfficientFormer at d01da42). Ours must equal them.
UPSTREAM_PARAMS = {
    "l1": 12_289_928, "l3": 31_406_000, "l7": 82_229_328,
    "v2_s0": 3_600_256, "v2_s1": 6_185_560, "v2_s2": 12_710_112, "v2_l": 26_322_288,
}

# Cheap stand-ins with every block type: V1 has pooling and attention blocks in stage 4; V2 a
# stride-2 attention block in stage 3, an attention block in stage 4 and the attention downsampler.
SHALLOW = [1, 1, 1, 1]


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give LayerScales, bias tables and BN statistics values that make every branch count."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "scale" in name or "table" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model


@pytest.mark.parametrize("name", list(ef.CONFIGS))
def test_counts_match_paper(name):
    with torch.device("meta"):
        model = ef.build(name)
        macs = count_macs(model, torch.empty(1, 3, 224, 224))
    paper_params, paper_gmacs = ZOO.get("efficientformer-" + name.replace("_", "-")).paper
    assert count_params(model) == UPSTREAM_PARAMS[name]
    # Within 1%, or within the rounding of the published figure (S0: 3.546M is printed "3.5M").
    params = ef.paper_param_count(model) / 1e6
    assert abs(params - paper_params) <= max(0.01 * paper_params, 0.05), params
    assert abs(macs / 1e9 - paper_gmacs) <= 0.05 * paper_gmacs, macs


@pytest.mark.parametrize("name", list(ef.CONFIGS))
def test_output_shape_at_other_sizes(name):
    with torch.device("meta"):
        model = ef.build(name, num_classes=10, image_size=64)
        for size in (64, 96):  # the build size, then a resized attention bias
            assert model(torch.empty(3, 3, size, size)).shape == (3, 10)
    assert not model.training


@pytest.mark.parametrize("name", list(ef.CONFIGS))
def test_eval_is_deterministic_and_finite(name):
    torch.manual_seed(0)
    model = randomize(ef.build(name, num_classes=10, image_size=96, depths=SHALLOW, in_chans=1))
    assert not any(isinstance(m, nn.Dropout) for m in model.modules())
    for size in (96, 64):
        x = torch.randn(2, 1, size, size)
        with torch.no_grad():
            a, b = model(x), model(x)
        assert a.shape == (2, 10) and torch.isfinite(a).all()
        assert torch.equal(a, b)


@pytest.mark.parametrize("step", [1, 2])
@pytest.mark.parametrize("height,width", [(7, 7), (4, 6), (3, 1)])
def test_offset_index_matches_the_definition(height, width, step):
    queries = [(y, x) for y in range(0, height, step) for x in range(0, width, step)]
    keys = [(y, x) for y in range(height) for x in range(width)]
    want = [[abs(qy - ky) * width + abs(qx - kx) for ky, kx in keys] for qy, qx in queries]
    assert ef.offset_index(height, width, step).tolist() == want


def test_resized_bias_keeps_the_end_offsets():
    bias = ef.RelativePositionBias(num_heads=2, size=7)
    with torch.no_grad():
        bias.table.copy_(torch.randn(2, 49))
        assert torch.equal(bias(7, 7), bias.table[:, ef.offset_index(7, 7)])
        small = bias(3, 3)  # offsets 0..2 stretched onto the table's 0..6
    assert small.shape == (2, 9, 9)
    torch.testing.assert_close(small[:, 0, 0], bias.table[:, 0])  # same position
    torch.testing.assert_close(small[:, 0, 8], bias.table[:, 48])  # opposite corners


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(UsageError) as info:
        ef.build("l9")
    assert "l9" in str(info.value) and all(n in str(info.value) for n in ef.CONFIGS)


@pytest.mark.parametrize("kwargs", [{"image_size": 100}, {"widths": [8, 16]}, {"depths": [1, 1, 0, 1]}])
def test_bad_arguments(kwargs):
    with pytest.raises(UsageError):
        ef.build("v2_s0", **kwargs)


# (name, build size, run size): V1 at its build size (constant bias index); V2 built for 224 and
# exported at 64, so the resized bias and the bilinear upsample are in the graph.
@pytest.mark.parametrize("name,build_size,run_size", [("l1", 64, 64), ("v2_s0", 224, 64)])
def test_onnx_export_matches_torch(name, build_size, run_size, tmp_path):
    onnx = pytest.importorskip("onnx")
    model = randomize(ef.build(name, num_classes=10, image_size=build_size, depths=SHALLOW))
    x = np.random.default_rng(0).standard_normal((2, 3, run_size, run_size)).astype(np.float32)
    variant = Variant(
        name=f"efficientformer-{name}", module=model,
        inputs=[TensorSpec("image", x.shape, "float32", {0: "batch"})],
        outputs=[TensorSpec("logits", (2, 10), "float32", {0: "batch"})],
        example={"image": x}, source={"reference": f"test:{name}", "format": "test", "sha256": ""},
        task="classifier",
    )
    bundle, parity = es.export(variant, tmp_path, target="onnx")
    assert parity.passed and parity.tier == "verified", parity.failures
    assert bundle.manifest.inputs[0].dynamic == {0: "batch"}  # captured with a dynamic batch
    assert any("@batch" in o.name for o in parity.outputs)  # and checked at a second batch size
    graph = onnx.load(str(bundle.path / "model.onnx")).graph
    ops = {n.op_type for n in graph.node}
    assert not ops & {"Dropout", "Bernoulli", "RandomUniform", "RandomUniformLike", "RandomNormal"}
    for node in graph.node:
        if node.op_type == "Resize":  # bilinear, never cubic (Core ML has no bicubic resize)
            assert {a.name: a.s for a in node.attribute}["mode"] == b"linear"
