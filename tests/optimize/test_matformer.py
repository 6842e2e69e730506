"""The matformer pass: FFNs found, reordering exact, slices equal the masked model, refusals by name."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgesmith import api as es
from edgesmith.cli import main
from edgesmith.errors import BadInputError, UsageError
from edgesmith.models.variant import Variant, run_module
from edgesmith.optimize import parse_pass_spec
from edgesmith.optimize.base import PassContext
from edgesmith.optimize.matformer import find_ffns


BACKBONES = {"lsnet-t": "zoo:lsnet-t:num_classes=10,image_size=64",
             "efficientformer-v2-s0": "zoo:efficientformer-v2-s0:num_classes=10,image_size=64"}


@pytest.fixture(scope="module", params=["digits-mlp", "digits-cnn", "tiny-llama", "minilm", *BACKBONES])
def variant(request):
    if request.param == "tiny-llama":
        return request.getfixturevalue("tiny_llama")
    if request.param in BACKBONES:
        v = es.load(BACKBONES[request.param])
        torch.manual_seed(0)
        with torch.no_grad():  # random statistics and affine terms, so no unit is silent or trivially equal
            for m in v.module.modules():
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                    m.running_mean.normal_(0, 0.2)
                    m.running_var.uniform_(0.5, 2.0)
                    m.weight.normal_(1, 0.3)
                    m.bias.normal_(0, 0.2)
        v.name = request.param
        return v
    return es.load("zoo:all-minilm-l6-v2" if request.param == "minilm" else f"zoo:{request.param}")


EXPECTED = {"digits-mlp": ("sequential", 2), "digits-cnn": ("sequential", 1), "tiny-llama": ("gated", 2),
            "all-minilm-l6-v2": ("bert", 6), "lsnet-t": ("conv", 20), "efficientformer-v2-s0": ("conv", 14)}


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

    def mask(width, axis):
        def hook(_module, args):
            h = args[0].movedim(axis, -1).clone()
            h[..., width:] = 0
            return (h.movedim(-1, axis),)
        return hook

    handles = [f.layer(f.down).register_forward_pre_hook(mask(w, f.axis))
               for f, w in zip(find_ffns(full.module), widths)]
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
    assert "found no FFN it recognises in net" in err and "Conv2d x 2" in err and "ReLU x 1" in err
    assert not out.exists()


@pytest.mark.parametrize("target", ["onnx", "coreml", "mlx"])
def test_a_sliced_language_model_exports_and_passes_parity(target, tiny_llama, tmp_path):
    sliced = es.optimize(tiny_llama, ["matformer:ratio=0.5"])
    bundle, parity = es.export(sliced, tmp_path, target=target)
    assert parity.passed, parity.failures


@pytest.fixture(scope="module")
def digits_inputs(tmp_path_factory):
    from edgesmith.data.datasets import digits_split

    variant = es.load("zoo:digits-mlp")
    x_train, x_test, _, _ = digits_split()
    shape = variant.inputs[0].shape[1:]
    path = tmp_path_factory.mktemp("digits") / "train.npz"
    np.savez(path, **{variant.inputs[0].name: x_train.reshape(len(x_train), *shape)})
    return variant, path, x_test.reshape(len(x_test), *shape)


def _agreement(reference, variant, x) -> float:
    name = reference.inputs[0].name
    ref = run_module(reference.module, reference.inputs, None, {name: x})["output"].argmax(1)
    got = run_module(variant.module, variant.inputs, None, {name: x})["output"].argmax(1)
    return float((ref == got).mean())


def test_the_nested_fine_tune_makes_the_small_width_agree_more(digits_inputs):
    variant, train, x_test = digits_inputs
    spec = f"matformer:ratio=0.25,data={train},samples=256"
    untrained = es.optimize(variant, [spec])
    trained = es.optimize(variant, [f"{spec},train={train},steps=150,batch=64,lr=3e-3"])
    report = trained.passes[-1]["report"]["train"]
    assert report["granularities"] == [[16, 8], [64, 32]] and report["steps"] == 150
    assert report["loss_last"][0] < report["loss_first"][0]
    assert _agreement(variant, trained, x_test) > _agreement(variant, untrained, x_test) + 0.02


def test_the_nested_fine_tune_checkpoints_and_resumes(tiny_llama, tmp_path):
    train = tmp_path / "ids.npz"
    np.savez(train, input_ids=np.random.default_rng(1).integers(0, 97, (32, 16)).astype(np.int64))
    spec = f"matformer:ratio=0.5,train={train},steps=4,save_every=2,lr=1e-2,checkpoint={tmp_path / 'ck'}"
    first = es.optimize(tiny_llama, [spec])
    saved = torch.load(tmp_path / "ck" / "last.pt", weights_only=True)
    assert saved["format"] == "edgesmith-matformer-1" and saved["step"] == 4 and len(saved["orders"]) == 2
    with pytest.raises(UsageError, match="already holds a matformer checkpoint"):
        es.optimize(tiny_llama, [spec])
    with pytest.raises(UsageError, match="made with other options: steps"):
        es.optimize(tiny_llama, [spec.replace("steps=4", "steps=6") + ",resume=true"])
    again = es.optimize(tiny_llama, [spec + ",resume=true"])
    assert again.passes[-1]["report"]["train"]["resumed_at"] == 4
    np.testing.assert_array_equal(_outputs(again), _outputs(first))
    # a run killed after step 3 resumes from its step-2 checkpoint and ends where the whole run did
    cut = spec.replace(str(tmp_path / "ck"), str(tmp_path / "cut"))

    def kill(_description, step, _total):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        es.optimize(tiny_llama, [cut], progress=kill)
    assert torch.load(tmp_path / "cut" / "last.pt", weights_only=True)["step"] == 2
    resumed = es.optimize(tiny_llama, [cut + ",resume=true"])
    assert resumed.passes[-1]["report"]["train"]["resumed_at"] == 2
    np.testing.assert_allclose(_outputs(resumed), _outputs(first), rtol=0, atol=1e-6)


def test_a_parameter_budget_gets_the_best_mix_within_it(digits_inputs):
    variant, train, _ = digits_inputs
    chosen = es.optimize(variant, [f"matformer:budget_params=4000,data={train},samples=64,search_samples=64"])
    report = chosen.passes[-1]["report"]
    search = report["search"]
    assert report["params_after"] == search["chosen"]["params"] <= 4000
    fitting = [r for r in search["front"] if r["within_budget"]]
    assert search["chosen"]["loss"] == min(r["loss"] for r in fitting)
    assert any(not r["within_budget"] for r in search["front"])  # the front shows what the budget cut off


def test_a_latency_budget_on_a_predicted_device_is_met(digits_inputs):
    variant, train, _ = digits_inputs
    spec = f"matformer:data={train},samples=64,device=raspberry-pi-5,levels=0.25/0.5/1"
    loose = es.optimize(variant, [f"{spec},budget_ms=1000"]).passes[-1]["report"]["search"]
    full_ms, small_ms = loose["anchors_ms"]
    assert small_ms < full_ms and loose["latency_mode"] == "predicted"
    budget = round((full_ms + small_ms) / 2, 6)
    search = es.optimize(variant, [f"{spec},budget_ms={budget}"]).passes[-1]["report"]["search"]
    assert search["chosen"]["latency_mode"] == "predicted" and search["chosen"]["latency_ms"] <= budget
    assert search["target_ms"] == budget  # the headroom is for measured noise; a prediction has none


def test_a_latency_budget_uses_the_probe_the_context_hands_in(digits_inputs):
    variant, train, _ = digits_inputs
    step = parse_pass_spec(f"matformer:data={train},samples=64,levels=0.25/0.5/1,budget_ms=1000")
    with pytest.raises(UsageError, match="needs a latency probe"):  # a pass reaches for no exporter itself
        step.apply(variant)
    asked = []

    def latency_probe(probed, device, runs):
        asked.append((probed.name, device, runs))
        return lambda module: (sum(p.numel() for p in module.parameters()) / 1000, "predicted")

    search = step.apply(variant, PassContext(latency_probe)).passes[-1]["report"]["search"]
    assert asked == [(variant.name, "host", 30)]
    assert search["latency_mode"] == "predicted" and search["chosen"]["latency_ms"] <= 1000


@pytest.mark.parametrize("spec,error,text", [
    ("matformer:budget_params=100", BadInputError,
     "no width choice meets budget_params=100; the smallest (every FFN at 0.25 of its units) has 1,266 parameters"),
    ("matformer:budget_params=lots", UsageError, "budget_params='lots' is not a positive count"),
    ("matformer:budget_params=4k,budget_ms=1", UsageError, "give budget_ms or budget_params, not both"),
    ("matformer:budget_params=4k,widths=32/16", UsageError, "give widths or a budget, not both"),
    ("matformer:budget_params=4k,levels=0/0.5", UsageError, "levels share '0' is not a number in (0, 1]"),
    ("matformer:budget_ms=1,device=pixel-99", UsageError, "unknown device 'pixel-99'"),
    ("matformer:train=devils-dictionary", BadInputError, "digits-mlp has no tokenizer"),
    ("matformer:tune=some", UsageError, "tune='some' is not ffn or all"),
    ("matformer:budget_ms=1,headroom=0.5", UsageError, "headroom=0.5 is outside [0, 0.5)"),
])
def test_bad_budgets_and_training_options_are_refused(spec, error, text, tmp_path):
    with pytest.raises(error) as info:
        es.optimize(es.load("zoo:digits-mlp"), [spec])
    assert text in str(info.value)


def test_an_unmeetable_latency_budget_says_the_smallest_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "x.pt2"
    assert main(["optimize", "zoo:digits-mlp", "-p", "matformer:budget_ms=0.000001", "-o", str(out)]) == 3
    err = capsys.readouterr().err
    assert "no width choice meets budget_ms=1e-06 on host (at most 9.5e-07 ms measured, headroom=0.05); " \
           "the smallest" in err and "ms (measured)" in err
    assert not out.exists()


def test_training_data_of_the_wrong_shape_is_named(tmp_path):
    variant = es.load("zoo:digits-mlp")
    bad = tmp_path / "bad.npz"
    np.savez(bad, **{variant.inputs[0].name: np.zeros((16, 7), np.float32)})
    with pytest.raises(BadInputError, match=f"data for input '{variant.inputs[0].name}' has shape \\(16, 7\\)"):
        es.optimize(variant, [f"matformer:train={bad},batch=4"])


@pytest.mark.parametrize("target", ["onnx", "coreml", "mlx"])
def test_a_sliced_backbone_exports_and_passes_parity(target, tmp_path):
    sliced = es.optimize(es.load(BACKBONES["lsnet-t"]), ["matformer:ratio=0.5"])
    assert sliced.passes[-1]["report"]["kinds"] == {"conv": 20}
    # untrained LSNet-T misses Core ML's fp16 tolerance before slicing too (SNR ~31-34 dB): compare in fp32
    options = {"precision": "fp32"} if target == "coreml" else None
    bundle, parity = es.export(sliced, tmp_path, target=target, options=options)
    assert parity.passed, parity.failures
