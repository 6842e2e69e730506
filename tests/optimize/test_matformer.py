"""The matformer pass: FFNs found, reordering exact, slices equal the masked model, refusals by name."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgesmith import api as es
from edgesmith.cli import main
from edgesmith.errors import BadInputError, UsageError
from edgesmith.models.variant import Variant, run_module
from edgesmith.optimize.matformer import find_ffns


@pytest.fixture(scope="module", params=["digits-mlp", "digits-cnn", "tiny-llama", "minilm"])
def variant(request):
    if request.param == "tiny-llama":
        return request.getfixturevalue("tiny_llama")
    return es.load("zoo:all-minilm-l6-v2" if request.param == "minilm" else f"zoo:{request.param}")


EXPECTED = {"digits-mlp": ("sequential", 2), "digits-cnn": ("sequential", 1), "tiny-llama": ("gated", 2),
            "all-minilm-l6-v2": ("bert", 6)}


def _outputs(v: Variant, module=None) -> np.ndarray:
    out = run_module(module or v.module, v.inputs, v.outputs, v.example)
    return out[v.outputs[0].name]


def test_the_ffns_are_found(variant):
    kind, count = EXPECTED[variant.name]
    ffns = find_ffns(variant.module)
    assert [f.kind for f in ffns] == [kind] * count


def test_full_width_with_importance_order_equals_the_original(variant):
    full = es.optimize(variant, ["matformer:ratio=1"])
    report = full.passes[-1]["report"]
    assert report["widths"] == report["hidden"] and report["params_after"] == report["params_before"]
    ref, got = _outputs(variant), _outputs(full)
    np.testing.assert_allclose(got, ref, atol=1e-5 * max(1.0, float(np.abs(ref).max())), rtol=0)
    # the order really changed something: some FFN's units are no longer in their original order
    before = [f.layer(f.down).weight for f in find_ffns(variant.module)]
    after = [f.layer(f.down).weight for f in find_ffns(full.module)]
    assert any(not torch.equal(a, b) for a, b in zip(before, after))


def test_a_sliced_model_equals_the_masked_full_model(variant):
    """Slicing to the first m units (after ordering) = zeroing the others in the full-width model."""
    full = es.optimize(variant, ["matformer:ratio=1"])
    sliced = es.optimize(variant, ["matformer:ratio=0.5"])
    widths = sliced.passes[-1]["report"]["widths"]

    def mask(width):
        def hook(_module, args):
            h = args[0].clone()
            h[..., width:] = 0
            return (h,)
        return hook

    handles = [f.layer(f.down).register_forward_pre_hook(mask(w)) for f, w in zip(find_ffns(full.module), widths)]
    try:
        masked = _outputs(full)
    finally:
        for h in handles:
            h.remove()
    got = _outputs(sliced)
    np.testing.assert_allclose(got, masked, atol=1e-5 * max(1.0, float(np.abs(masked).max())), rtol=0)
    assert sliced.passes[-1]["report"]["params_after"] < sliced.passes[-1]["report"]["params_before"]
    assert [f.hidden for f in find_ffns(sliced.module)] == widths


def test_widths_per_layer_and_the_naive_order():
    v = es.load("zoo:digits-mlp")
    w = es.optimize(v, ["matformer:widths=48/8,order=first"])
    assert w.passes[-1]["report"]["widths"] == [48, 8]
    assert [f.hidden for f in find_ffns(w.module)] == [48, 8]
    # order=first keeps the first units as they were
    first = find_ffns(v.module)[0].layer("1").weight[:48]
    assert torch.equal(find_ffns(w.module)[0].layer("1").weight, first)


@pytest.mark.parametrize("target", ["onnx", "coreml", "mlx"])
def test_a_sliced_model_exports_and_passes_parity(target, tmp_path):
    sliced = es.optimize(es.load("zoo:digits-mlp"), ["matformer:ratio=0.5"])
    bundle, parity = es.export(sliced, tmp_path, target=target)
    assert parity.passed, parity.failures
    assert bundle.manifest.passes[-1]["name"] == "matformer"


@pytest.mark.parametrize("spec,error,text", [
    ("matformer:ratio=0", UsageError, "ratio=0.0 is outside (0, 1]"),
    ("matformer:ratio=1.5", UsageError, "ratio=1.5 is outside (0, 1]"),
    ("matformer:widths=32", BadInputError, "widths gives 1 width(s), digits-mlp has 2 FFN layers"),
    ("matformer:widths=32/40", BadInputError, "width 40 for FFN [3:6] exceeds its 32 hidden units"),
    ("matformer:widths=32/x", UsageError, "width 'x' is not a positive integer"),
    ("matformer:order=random", UsageError, "order='random'"),
])
def test_bad_options_are_refused_by_name(spec, error, text):
    with pytest.raises(error) as info:
        es.optimize(es.load("zoo:digits-mlp"), [spec])
    assert text in str(info.value)


CONV_NET = """
import torch


def net():
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 3)).eval()
"""


def test_a_model_without_an_ffn_says_what_it_found(tmp_path, capsys, py_module):
    module = py_module(CONV_NET, prefix="es_convnet")
    out = tmp_path / "x.pt2"
    assert main(["optimize", f"py:{module}:net", "--input", "x:1x1x8x8", "-p", "matformer:ratio=0.5",
                 "-o", str(out)]) == 3
    err = capsys.readouterr().err
    assert "found no FFN it recognises in net" in err and "Conv2d x2" in err and "ReLU x1" in err
    assert not out.exists()
