"""Encoder fusion of the onnx target (export/onnx_fuse/encoder.py) on a tiny random BertModel."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from edgesmith import api  # noqa: E402
from edgesmith.models.hf import wrap_model  # noqa: E402
from edgesmith.models.variant import Variant  # noqa: E402
from edgesmith.specs import TensorSpec  # noqa: E402

NAMES = ["input_ids", "attention_mask", "token_type_ids"]


def _bert(**config) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=64, **config)
    model = transformers.BertModel(cfg).eval()
    with torch.no_grad():  # distinct biases and norms per layer, as in a trained model
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def _variant(model, name="tinybert") -> Variant:
    rng = np.random.default_rng(0)
    example = {"input_ids": rng.integers(0, 120, (2, 12)).astype(np.int64),
               "attention_mask": np.ones((2, 12), np.int64), "token_type_ids": np.zeros((2, 12), np.int64)}
    example["attention_mask"][1, 8:] = 0  # right padding in the example
    module = wrap_model(model, NAMES, "last_hidden_state").eval()
    with torch.no_grad():
        out = module(*[torch.from_numpy(example[n]) for n in NAMES])
    dyn = {0: "batch", 1: "sequence"}
    return Variant(name=name, module=module, example=example, source={}, task="encoder",
                   inputs=[TensorSpec(n, example[n].shape, "int64", dict(dyn)) for n in NAMES],
                   outputs=[TensorSpec("last_hidden_state", tuple(out.shape), "float32", dict(dyn))])


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """The same tiny BERT exported fused (default) and unfused."""
    out = tmp_path_factory.mktemp("enc")
    model = _bert()
    fused, fused_parity = api.export(_variant(model), out / "fused", target="onnx")
    plain, plain_parity = api.export(_variant(model), out / "plain", target="onnx", options={"fuse": "false"})
    return model, (fused, fused_parity), (plain, plain_parity)


def _ops(bundle) -> Counter:
    return Counter(n.op_type for n in onnx.load(str(bundle.path / "model.onnx")).graph.node)


def _details(bundle) -> dict:
    return json.loads((bundle.path / "manifest.json").read_text())["details"]


def test_fused_graph_has_contrib_ops_and_passes_parity(bundles):
    _, (fused, parity), _ = bundles
    assert parity.passed and parity.tier == "verified"
    ops = _ops(fused)
    assert ops["Attention"] == 2 and ops["BiasGelu"] == 2
    # the optimizer's SkipLayerNormalization written as Sum + LayerNormalization (2 per layer, + embeddings)
    assert ops["SkipLayerNormalization"] == 0 and ops["Sum"] == 4 and ops["LayerNormalization"] == 5
    assert ops["Softmax"] == 0 and ops["Where"] == 0 and ops["IsNaN"] == 0
    record = _details(fused)["fuse"]
    assert record["applied"] and record["fusions"]["Attention"] == 2
    assert record["skip_norms"].startswith("4 SkipLayerNormalization written as Sum + LayerNormalization")
    assert record["nodes"]["after"] == sum(ops.values()) < record["nodes"]["before"]


def test_session_optimizer_keeps_split_norms(bundles, tmp_path):
    """ONNX Runtime's session optimizer fuses Add -> Add -> LayerNormalization back into the slower
    SkipLayerNormalization; it must leave the Sum + LayerNormalization pairs as they are."""
    _, (fused, _), _ = bundles
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "loaded.onnx")
    ort.InferenceSession(str(fused.path / "model.onnx"), opts, providers=["CPUExecutionProvider"])
    loaded = Counter(n.op_type for n in onnx.load(str(tmp_path / "loaded.onnx")).graph.node)
    assert loaded["SkipLayerNormalization"] == 0 and loaded["Sum"] == 4 and loaded["Attention"] == 2


def _skip_norm_graph(opset: int, mean_output: bool, sum_output: bool):
    """Two chained SkipLayerNormalization nodes (bias, no beta on the second) on random weights."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), n) for n in ("g", "b", "bias")]
    outs = ["y1", "mean" if mean_output else "", "", "s1" if sum_output else ""]
    nodes = [helper.make_node("SkipLayerNormalization", ["x", "skip", "g", "b", "bias"], outs, domain="com.microsoft",
                              name="sln1", epsilon=1e-5),
             helper.make_node("SkipLayerNormalization", ["y1", "s1" if sum_output else "skip", "g", "", "bias"], ["y2"],
                              domain="com.microsoft", name="sln2", epsilon=1e-5)]
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 3, 8]) for n in ("x", "skip", "y2")]
    graph = helper.make_graph(nodes, "g", io[:2], [io[2]] + ([helper.make_tensor_value_info(
        "mean", TensorProto.FLOAT, [2, 3, 1])] if mean_output else []), inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(
        "com.microsoft", 1)], ir_version=8)


@pytest.mark.parametrize("opset, mean_output, sum_output, split", [(17, False, False, 2), (17, False, True, 2),
                                                                   (17, True, False, 1), (16, False, False, 0)])
def test_split_skip_norms_same_function(opset, mean_output, sum_output, split):
    """Sum + LayerNormalization computes what SkipLayerNormalization did (its sum output kept); a node whose
    mean output is read, or a graph before opset 17, keeps it."""
    from edgesmith.export.onnx_fuse.encoder import _split_skip_norms

    model = _skip_norm_graph(opset, mean_output, sum_output)
    rng = np.random.default_rng(1)
    feed = {n: rng.standard_normal((2, 3, 8)).astype(np.float32) for n in ("x", "skip")}
    before = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)
    assert _split_skip_norms(model) == split
    onnx.checker.check_model(model)
    assert Counter(n.op_type for n in model.graph.node)["SkipLayerNormalization"] == 2 - split
    after = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)
    for a, b in zip(before, after):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


def test_unfused_option_keeps_dynamo_graph(bundles):
    _, _, (plain, parity) = bundles
    assert parity.passed
    assert _ops(plain)["Attention"] == 0 and "fuse" not in _details(plain)
    assert json.loads((plain.path / "manifest.json").read_text())["options"]["fuse"] is False


@pytest.mark.parametrize("mask", ["left", "holes", "ones"])
def test_fused_graph_matches_torch_on_other_masks(bundles, mask):
    """The raw 2-D mask is kept: left padding and holes mean what they mean in transformers."""
    model, (fused, _), _ = bundles
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 120, (3, 20)).astype(np.int64)
    am = np.ones((3, 20), np.int64)
    if mask == "left":
        am[0, :5] = 0
        am[2, :11] = 0
    elif mask == "holes":
        am[1, [2, 7, 8, 15]] = 0
    feeds = {"input_ids": ids, "attention_mask": am, "token_type_ids": np.zeros_like(ids)}
    sess = ort.InferenceSession(str(fused.path / "model.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, feeds)[0]
    with torch.no_grad():
        ref = model(**{k: torch.from_numpy(v) for k, v in feeds.items()}).last_hidden_state.numpy()
    keep = am.astype(bool)  # padded positions' outputs are unspecified in both
    assert np.max(np.abs(got[keep] - ref[keep])) <= 1e-4 * max(1.0, float(np.abs(ref).max()))


def test_export_restores_sdpa(bundles):
    model, _, _ = bundles
    assert model.config._attn_implementation == "sdpa"


def test_not_fusable_keeps_graph_with_note(tmp_path):
    """A causal-masked BERT (is_decoder) has a mask the 2-D Attention does not compute: kept, noted."""
    variant = _variant(_bert(is_decoder=True), name="causalbert")
    bundle, parity = api.export(variant, tmp_path, target="onnx")
    assert parity.passed
    record = _details(bundle)["fuse"]
    assert record["applied"] is False and record["note"].startswith("not fused: ")
    assert _ops(bundle)["Attention"] == 0
    notes = json.loads((bundle.path / "manifest.json").read_text())["options"]["notes"]
    assert any("encoder not fused" in n for n in notes)
