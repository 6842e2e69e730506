"""LSNet T/S/B: paper counts, shapes, the narrow student, SKA against an unfold reference, ONNX parity."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edgesmith.errors import UsageError
from edgesmith.models.zoo import lsnet
from edgesmith.models.complexity import count_macs, count_params
from edgesmith.models.zoo import ZOO

# Parameter counts printed in the authors' training logs (logs/lsnet_{t,s}.log, no distillation head).
LOGGED_PARAMS = {"t": 11_409_832, "s": 16_146_304}
STUDENT = {"num_classes": 10, "image_size": 32, "in_chans": 1, "widths": [16, 32, 64, 96], "depths": [0, 1, 1, 1]}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These models are small: one thread is faster, and far faster on a busy shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def randomize_batchnorm(model: torch.nn.Module, seed: int = 0) -> None:
    """Random BN scales, shifts and statistics: zero-init residual scales would make parity trivial."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.weight.data = torch.rand(n, generator=gen) + 0.5
            m.bias.data = torch.randn(n, generator=gen) * 0.1
            m.running_mean = torch.randn(n, generator=gen) * 0.1
            m.running_var = torch.rand(n, generator=gen) + 0.5


@pytest.mark.parametrize("name", list(lsnet.CONFIGS))
def test_counts_match_paper(name):
    with torch.device("meta"):  # shapes are all the counts need
        model = lsnet.build(name)
        image = torch.zeros(1, 3, 224, 224)
    paper_params, paper_gmacs = ZOO.get("lsnet-" + name.replace("_", "-")).paper
    params = count_params(model)
    assert abs(params / 1e6 - paper_params) <= 0.01 * paper_params
    if name in LOGGED_PARAMS:
        assert params == LOGGED_PARAMS[name]
    # The paper's convention counts SKA as a depthwise 3x3 conv; count_macs does not see it.
    gmacs = (count_macs(model, image) + lsnet.ska_macs(model)) / 1e9
    # The paper prints one decimal: "0.5 G" stands for anything in [0.45, 0.55].
    assert abs(gmacs - paper_gmacs) <= max(0.05 * paper_gmacs, 0.05)


def test_unknown_name_lists_known():
    with pytest.raises(UsageError) as info:
        lsnet.build("xl")
    assert "xl" in str(info.value) and all(name in str(info.value) for name in lsnet.CONFIGS)


@pytest.mark.parametrize("widths, depths", [([12, 32, 64, 96], None), ([16, 32, 64], None), (None, [0, 1, -1, 1])])
def test_bad_overrides(widths, depths):
    with pytest.raises(UsageError):
        lsnet.build("t", widths=widths, depths=depths)


@pytest.mark.parametrize("name", list(lsnet.CONFIGS))
def test_output_shape_other_size_and_classes(name):
    model = lsnet.build(name, num_classes=10, image_size=72)  # 72 -> 9 -> 5 -> 3 -> 2: odd sizes
    assert not model.training
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 72, 72))
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()
    assert (logits[0] - logits[1]).abs().max() > 1e-2  # not degenerate: the input matters


@pytest.mark.parametrize("depths", [[0, 1, 1, 1], [0, 2, 2, 2]])  # the second has LS convs and attention at 1x1
def test_narrow_student_trains(depths):
    torch.manual_seed(0)
    model = lsnet.build("t", **{**STUDENT, "depths": depths})
    images = torch.rand(4, 1, 32, 32)
    with torch.no_grad():
        logits = model(images)
    assert logits.shape == (4, 10) and (logits[0] - logits[1]).abs().max() > 1e-3
    model.train()
    loss = F.cross_entropy(model(images), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.head.weight.grad.abs().sum() > 0 and model.stem[0][0].weight.grad.abs().sum() > 0


def test_ska_matches_unfold_reference():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 48, 5, 7, generator=gen)
    weight = torch.randn(2, 6, 9, 5, 7, generator=gen)
    # Upstream: channel c aggregates with kernel c % G, zero padding, taps in row-major order.
    patches = F.unfold(x, kernel_size=3, padding=1).reshape(2, 48, 9, 5, 7)
    reference = (patches * weight[:, torch.arange(48) % 6]).sum(dim=2)
    torch.testing.assert_close(lsnet.small_kernel_aggregate(x, weight), reference, atol=1e-5, rtol=1e-5)


def test_kernel_norm_is_group_norm():
    x = torch.randn(2, 36, 3, 5)
    norm, reference = lsnet.KernelNorm(4), torch.nn.GroupNorm(4, 36)
    for p in (*norm.parameters(), *reference.parameters()):
        torch.nn.init.normal_(p, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(norm(x), reference(x).reshape(2, 4, 9, 3, 5), atol=1e-5, rtol=1e-5)


def test_eval_is_deterministic():
    model = lsnet.build("t", **STUDENT)
    x = torch.rand(3, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


def test_onnx_export_matches_onnxruntime(tmp_path):
    """LSNet-T's widths and every block kind (RepVGG + SE, LS conv, attention), at 64x64; the
    full depth [0, 2, 8, 10] passes too but takes three times as long to export."""
    pytest.importorskip("onnxruntime")
    from edgesmith import api as es
    from edgesmith.models.variant import Variant
    from edgesmith.runtimes import open_runtime
    from edgesmith.specs import TensorSpec

    torch.manual_seed(0)
    model = lsnet.build("t", image_size=64, depths=[0, 2, 2, 2])
    randomize_batchnorm(model)
    example = {"image": np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)}
    variant = Variant(
        name="lsnet-t", module=model,
        inputs=[TensorSpec("image", (2, 3, 64, 64), "float32", {0: "batch"})],
        outputs=[TensorSpec("logits", (2, 1000), "float32", {0: "batch"})],
        example=example, source={"reference": "test:lsnet-t", "format": "py", "sha256": ""}, task="classifier",
    )
    bundle, parity = es.export(variant, tmp_path, target="onnx")
    assert parity.passed, parity.failures
    assert bundle.manifest.inputs[0].dynamic == {0: "batch"}  # captured with a dynamic batch, not static

    import onnx

    ops = {node.op_type for node in onnx.load(str(bundle.path / "model.onnx")).graph.node}
    assert not ops & {"Dropout", "Bernoulli", "RandomUniform", "RandomUniformLike", "RandomNormal", "RandomNormalLike"}
    x = np.random.default_rng(1).standard_normal((3, 3, 64, 64)).astype(np.float32)
    got = open_runtime(bundle.path).run({"image": x})["logits"]
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    assert np.abs(ref).max() > 0.1  # parity on O(1) logits, not on near-zero ones
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-4)
