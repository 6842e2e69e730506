"""The ONNX exporter's fused decoder graph (edgesmith/export/onnx_fuse): parity, contrib ops, refusals."""

from __future__ import annotations

import numpy as np
import pytest

from edgesmith import api as es
from edgesmith.export.onnx_fuse import NotFusable
from edgesmith.export.onnx_fuse.decoder import read_decoder

CONTRIB = {"GroupQueryAttention", "SkipSimplifiedLayerNormalization"}


def _variant(model, name: str):
    """A transformers causal LM behind edgesmith's wrapper, as an ``lm`` variant (like conftest's tiny_llama)."""
    from edgesmith.models.hf import wrap_model
    from edgesmith.models.variant import Variant
    from edgesmith.specs import TensorSpec

    vocab = model.config.vocab_size
    module = wrap_model(model.eval(), ["input_ids"], "logits").eval()
    ids = np.random.default_rng(0).integers(0, vocab, (2, 12)).astype(np.int64)
    return Variant(name=name, module=module, inputs=[TensorSpec("input_ids", (2, 12), "int64")],
                   outputs=[TensorSpec("logits", (2, 12, vocab), "float32")], example={"input_ids": ids},
                   source={"reference": f"test:{name}", "format": "test", "sha256": ""}, task="lm")


def _tiny(kind: str, **extra):
    """A two-layer random decoder of ``kind`` (llama, qwen2, mistral) with 16-wide heads unless told."""
    import torch
    import transformers

    torch.manual_seed(0)
    config_class, model_class = {"llama": ("LlamaConfig", "LlamaForCausalLM"),
                                 "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
                                 "mistral": ("MistralConfig", "MistralForCausalLM")}[kind]
    kwargs = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=101, max_position_embeddings=64)
    config = getattr(transformers, config_class)(**{**kwargs, **extra})
    model = getattr(transformers, model_class)(config).eval()
    with torch.no_grad():  # random norms and biases so a misplaced weight shows in the logits
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith(".bias"):
                p.normal_(1.0 if name.endswith("norm.weight") else 0.0, 0.3)
    return model


def _ops(bundle) -> dict[str, int]:
    import onnx

    model = onnx.load(str(bundle.model_path))
    ops: dict[str, int] = {}
    for node in model.graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    return ops


def _export(variant, out, **options):
    bundle, parity = es.export(variant, out, target="onnx", options=options or None)
    assert parity.passed, parity.failures
    assert parity.generation["passed"], parity.generation
    return bundle, parity


@pytest.fixture(scope="module")
def llama_pair(tiny_llama, tmp_path_factory):
    """conftest's tiny Llama (8-wide heads: RotaryEmbedding before GroupQueryAttention), fused and not."""
    out = tmp_path_factory.mktemp("fuse-llama")
    fused, parity = _export(tiny_llama, out / "fused")
    plain, _ = _export(tiny_llama, out / "plain", fuse="false")
    return fused, plain, parity


def test_llama_fused_parity_and_ops(llama_pair):
    fused, plain, parity = llama_pair
    record = fused.manifest.details["fuse"]
    assert record["applied"] and record["family"] == "llama"
    assert record["nodes"] < record["nodes_before"] / 3, record
    assert set(record["contrib_ops"]) >= CONTRIB | {"RotaryEmbedding"}
    ops = _ops(fused)
    assert ops["GroupQueryAttention"] == 2 and ops["MatMul"] == 2 * 4 + 1  # qkv, o, gate/up, down per layer + head
    assert "Softmax" not in ops and "Pow" not in ops
    import onnx

    onnx.checker.check_model(onnx.load(str(fused.model_path)))  # contrib ops only in com.microsoft
    assert {"prefill", "decode", "decode batch 2", "prefill batch 2"} <= {o.name.split("@")[-1] for o in parity.outputs}
    assert "fuse" not in plain.manifest.details or not plain.manifest.details["fuse"].get("applied")
    assert "GroupQueryAttention" not in _ops(plain)


def test_llama_fused_interface_is_the_dynamo_graphs(llama_pair):
    import onnxruntime as ort

    fused, plain, _ = llama_pair

    def signature(bundle):
        session = ort.InferenceSession(str(bundle.model_path), providers=["CPUExecutionProvider"])
        return [[(v.name, v.type, len(v.shape)) for v in values]
                for values in (session.get_inputs(), session.get_outputs())]

    assert signature(fused) == signature(plain)
    assert fused.manifest.inputs == plain.manifest.inputs and fused.manifest.outputs == plain.manifest.outputs


def test_llama_fused_generates_like_unfused(llama_pair):
    fused, plain, _ = llama_pair
    a = es.generate(str(fused.path), ids=[1, 2, 3], max_new_tokens=12)
    b = es.generate(str(plain.path), ids=[1, 2, 3], max_new_tokens=12)
    assert a.tokens == b.tokens and len(a.tokens) == 12


def _slice_ffn(model, layer: int, keep: int) -> None:
    """Keep the first ``keep`` hidden units of one layer's FFN (what a MatFormer slice leaves)."""
    import torch

    mlp = model.model.layers[layer].mlp
    with torch.no_grad():
        for name in ("gate_proj", "up_proj"):
            old = getattr(mlp, name)
            new = torch.nn.Linear(old.in_features, keep, bias=False)
            new.weight.copy_(old.weight[:keep])
            setattr(mlp, name, new)
        down = torch.nn.Linear(keep, mlp.down_proj.out_features, bias=False)
        down.weight.copy_(mlp.down_proj.weight[:, :keep])
        mlp.down_proj = down


def test_qwen2_bias_tied_embeddings_sliced_ffn(tmp_path):
    """Qwen2 (q/k/v biases) with a tied head (stored once) and one FFN sliced narrower than the other."""
    import onnx

    model = _tiny("qwen2", tie_word_embeddings=True)
    assert model.model.layers[0].self_attn.q_proj.bias is not None
    _slice_ffn(model, 0, 40)
    assert [layer.gate.shape[0] for layer in read_decoder(model).layers] == [40, 96]
    bundle, parity = _export(_variant(model, "tiny-qwen2"), tmp_path)
    record = bundle.manifest.details["fuse"]
    assert record["family"] == "qwen2" and record["tied_embeddings"]
    assert "RotaryEmbedding" not in record["contrib_ops"]  # 16-wide heads: GroupQueryAttention rotates
    ops = _ops(bundle)
    assert ops["Add"] == 2 and ops["Gemm"] == 1  # one bias per layer on the fused qkv; the tied head
    fused = onnx.load(str(bundle.model_path))
    vocab = [tuple(t.dims) for t in fused.graph.initializer if 101 in t.dims]
    assert vocab == [(101, 64)], vocab
    assert parity.generation["matched"] == parity.generation["tokens"]


def test_refused_architecture_keeps_dynamo_graph_with_a_note(tmp_path):
    variant = _variant(_tiny("mistral", sliding_window=4), "tiny-mistral-swa")
    bundle, _ = _export(variant, tmp_path)
    record = bundle.manifest.details["fuse"]
    assert not record["applied"] and "sliding-window" in record["note"]
    assert any("decoder not fused" in n and "sliding-window" in n for n in bundle.manifest.options["notes"])
    assert "GroupQueryAttention" not in _ops(bundle)


def test_refusals_name_the_part():
    import torch

    class Replaced(torch.nn.Linear):
        pass

    model = _tiny("llama")
    old = model.model.layers[1].mlp.down_proj
    model.model.layers[1].mlp.down_proj = Replaced(old.in_features, old.out_features, bias=False)
    with pytest.raises(NotFusable, match=r"layer 1's mlp\.down_proj is Replaced"):
        read_decoder(model)
    with pytest.raises(NotFusable, match="rope type 'dynamic'"):
        read_decoder(_tiny("llama", rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e4}))
    with pytest.raises(NotFusable, match="float16"):
        read_decoder(_tiny("llama").half())
    with pytest.raises(NotFusable, match="model_type 'gpt2'"):
        from transformers import GPT2Config, GPT2LMHeadModel

        read_decoder(GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50)))


def test_qwen3_qk_norm_graph_parity():
    """Qwen3's per-head q/k RMSNorm (before the rotation), at the graph level: no export, the fused
    graph against the generation step on its example, prefill and decode feeds."""
    import onnxruntime as ort
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from edgesmith.export.generation import extra_feeds
    from edgesmith.export.onnx_fuse.decoder_graph import build_step
    from edgesmith.models.lm_generate import generation_variant

    torch.manual_seed(0)
    model = Qwen3ForCausalLM(Qwen3Config(hidden_size=64, intermediate_size=96, num_hidden_layers=2, head_dim=16,
                                         num_attention_heads=4, num_key_value_heads=2, vocab_size=101,
                                         max_position_embeddings=64)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(1.0, 0.3)
    step = generation_variant(_variant(model, "tiny-qwen3"))
    fused, ops = build_step(read_decoder(model), step.inputs, step.outputs, 20)
    assert ops["com.microsoft.GroupQueryAttention"] == 2 and ops["com.microsoft.SkipSimplifiedLayerNormalization"] == 1 + 4 + 4
    session = ort.InferenceSession(fused.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    for feeds, reference, *_ in [(step.example, step.run()), *extra_feeds(step)]:
        got = dict(zip(names, session.run(None, feeds)))
        for name, ref in reference.items():
            np.testing.assert_allclose(got[name], ref, atol=1e-4 * max(1.0, float(np.abs(ref).max())), rtol=0)
