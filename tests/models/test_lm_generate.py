"""Generation steps for every transformers decoder torch.export takes, and from every MODEL form (issue 24).

Tiny random models (two layers, 97 tokens) of each family export to ONNX as generation
bundles; parity at export already runs a greedy generation through the bundle's own loop
against transformers' ``generate`` on the source, and the tests check it did, that the cache
layout came from the model's real cache, and that the bundle goes on matching transformers
for a prompt longer than any sliding window. Decoders whose state between steps is not keys
and values are refused by the name of their cache. Then the MODEL forms: a ``py:`` factory
returning a causal LM and a checkpoint folder without tokenizer files export and generate
from token ids.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgesmith import api as es
from edgesmith.cli import main
from edgesmith.errors import BadInputError
from edgesmith.models.hf import model_variant
from edgesmith.models.lm_generate import generation_variant, greedy_reference
from edgesmith.models.variant import run_module

transformers = pytest.importorskip("transformers")

SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=97,
             max_position_embeddings=64)
WINDOW = 4  # shorter than every prompt below, so a window that were not applied would change the tokens

# family -> (config class, its arguments, (kv_heads, head_dim) the cache must have); exported to ONNX
# (Llama's bundle is tests/runtimes/test_generate.py's)
ARCHITECTURES = {
    "qwen2": ("Qwen2Config", dict(SMALL, num_key_value_heads=2), (2, 8)),  # q/k/v biases
    "mistral": ("MistralConfig", dict(SMALL, num_key_value_heads=2, sliding_window=WINDOW), (2, 8)),
    "phi3": ("Phi3Config", dict(SMALL, num_key_value_heads=2, pad_token_id=0), (2, 8)),  # fused qkv, partial RoPE
    "gemma2": ("Gemma2Config", dict(SMALL, num_key_value_heads=2, head_dim=16, sliding_window=WINDOW), (2, 16)),
    "gpt2": ("GPT2Config", dict(n_embd=32, n_layer=2, n_head=4, vocab_size=97, n_positions=64,
                                bos_token_id=1, eos_token_id=2), (4, 8)),  # learned positions, no GQA
    "opt": ("OPTConfig", dict(hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
                              vocab_size=97, max_position_embeddings=64, word_embed_proj_dim=32), (4, 8)),
    "gpt_neox": ("GPTNeoXConfig", dict(SMALL), (4, 8)),  # parallel residual, rotary on part of the head
}
# more families, checked in torch only (the step against transformers): they export the same way
STEP_ONLY = {
    "llama": ("LlamaConfig", dict(SMALL, num_key_value_heads=2), (2, 8)),
    "gemma": ("GemmaConfig", dict(SMALL, num_key_value_heads=1, head_dim=8), (1, 8)),  # multi-query
    "gemma3": ("Gemma3TextConfig", dict(SMALL, num_key_value_heads=2, head_dim=8, sliding_window=WINDOW), (2, 8)),
    "qwen3": ("Qwen3Config", dict(SMALL, num_key_value_heads=2, head_dim=8), (2, 8)),  # q/k norms
    "falcon": ("FalconConfig", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, vocab_size=97,
                                    multi_query=True), (1, 8)),
    "bloom": ("BloomConfig", dict(hidden_size=32, n_layer=2, n_head=4, vocab_size=97), (4, 8)),  # ALiBi, no positions
    "gptj": ("GPTJConfig", dict(n_embd=32, n_layer=2, n_head=4, vocab_size=97, n_positions=64, rotary_dim=4), (4, 8)),
    "opt": ("OPTConfig", dict(hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=97,
                              max_position_embeddings=64, word_embed_proj_dim=32), (4, 8)),
}


def _tiny(family: str):
    name, kwargs, _ = {**ARCHITECTURES, **STEP_ONLY}[family]
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(getattr(transformers, name)(**kwargs)).eval()
    return model_variant(model, f"tiny-{family.replace('_', '-')}", {"reference": f"test:{family}", "format": "test",
                                                                     "sha256": ""}, seq_len=12)


@pytest.mark.parametrize("family", ARCHITECTURES)
def test_every_decoder_family_exports_a_generation_bundle(family, tmp_path):
    variant = _tiny(family)
    bundle, parity = es.export(variant, tmp_path, target="onnx")
    assert parity.passed and parity.tier == "verified", parity.failures
    assert parity.generation["passed"] and parity.generation["matched"] == 8  # 8 greedy tokens, as transformers
    record = bundle.manifest.generation
    assert (record["layers"], record["kv_heads"], record["head_dim"]) == (2, *ARCHITECTURES[family][2])
    assert record["tokenizer"] is None  # a model built in code: it generates from token ids
    assert record["sliding_window"] == ARCHITECTURES[family][1].get("sliding_window")  # said, and kept whole
    prompt = [int(t) for t in np.random.default_rng(7).integers(3, 97, 11)]  # longer than the window
    want = greedy_reference(variant, prompt, 6)
    got = es.generate(bundle.path, ids=prompt, max_new_tokens=6, ignore_eos=True)
    assert got.tokens == want


@pytest.mark.parametrize("family", STEP_ONLY)
def test_the_step_generates_like_transformers(family):
    """A prefill with an empty cache, then one-token steps on the presents: transformers' greedy tokens."""
    from edgesmith.export.generation import extra_feeds
    from edgesmith.models.lm_generate import cache_layout
    from edgesmith.runtimes.kv import empty_cache, step_feeds

    variant = _tiny(family)
    step = generation_variant(variant)
    layers, kv_heads, head_dim = cache_layout(variant.module.model, family)
    assert (layers, kv_heads, head_dim) == (2, *STEP_ONLY[family][2])
    record = {"layers": layers, "kv_heads": kv_heads, "head_dim": head_dim}
    prompt = np.random.default_rng(7).integers(3, 97, (1, 9)).astype(np.int64)
    out = run_module(step.module, step.inputs, step.outputs, {**step_feeds(prompt, 0), **empty_cache(record)})
    got = []
    for position in range(9, 15):
        got.append(int(out["logits"][0, -1].argmax()))
        past = {n: out["present" + n[4:]] for n in empty_cache(record)}
        out = run_module(step.module, step.inputs, step.outputs,
                         {**step_feeds(np.asarray([[got[-1]]]), position), **past})
    assert got == greedy_reference(variant, prompt[0].tolist(), 6)
    assert [name for _, _, name in extra_feeds(step)] == ["prefill", "decode"]  # parity's feeds run too


def test_sliding_window_layers_keep_every_position_and_mask_the_window():
    """Gemma 2 alternates sliding and full layers: after a prefill longer than the window, a step's
    logits are the whole sequence's, and every layer's cache holds every position."""
    from edgesmith.runtimes.kv import empty_cache, step_feeds

    variant = _tiny("gemma2")
    step = generation_variant(variant)
    ids = np.random.default_rng(3).integers(0, 97, (1, 12)).astype(np.int64)
    record = {"layers": 2, "kv_heads": 2, "head_dim": 16}
    prefill = run_module(step.module, step.inputs, step.outputs, {**step_feeds(ids[:, :9], 0), **empty_cache(record)})
    past = {n: prefill["present" + n[4:]] for n in empty_cache(record)}
    out = run_module(step.module, step.inputs, step.outputs, {**step_feeds(ids[:, 9:], 9), **past})
    assert past["past_key_0"].shape[2] == 9 and out["present_key_0"].shape[2] == out["present_key_1"].shape[2] == 12
    with torch.no_grad():
        ref = variant.module.model(input_ids=torch.from_numpy(ids)).logits.numpy()
    np.testing.assert_allclose(prefill["logits"], ref[:, :9], atol=1e-5, rtol=0)
    np.testing.assert_allclose(out["logits"], ref[:, 9:], atol=1e-5, rtol=0)


def _config_model(name: str, **kwargs):
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(getattr(transformers, name)(**kwargs)).eval()


REFUSED = {
    # hybrid: convolution states beside attention layers
    "lfm2": (lambda: _config_model("Lfm2Config", **SMALL, num_key_value_heads=2,
                                   layer_types=["conv", "full_attention"]), "LinearAttentionLayer"),
    # a state-space model: no past_key_values at all
    "mamba": (lambda: _config_model("MambaConfig", hidden_size=32, num_hidden_layers=2, vocab_size=97,
                                    state_size=4), "MambaForCausalLM takes no past_key_values"),
    # multi-head latent attention: keys and values of different widths
    "deepseek_v3": (lambda: _config_model("DeepseekV3Config", **SMALL, num_key_value_heads=4, kv_lora_rank=8,
                                          q_lora_rank=8, qk_rope_head_dim=4, qk_nope_head_dim=4, v_head_dim=6,
                                          n_routed_experts=2, num_experts_per_tok=1, moe_intermediate_size=16,
                                          first_k_dense_replace=2), "of different shapes"),
}


@pytest.mark.parametrize("family", REFUSED)
def test_a_cache_that_is_not_keys_and_values_is_refused_by_name(family):
    from edgesmith.export.generation import generation_step
    from edgesmith.export.onnx import OnnxExporter

    build, names = REFUSED[family]
    variant = model_variant(build(), family, {"reference": f"test:{family}", "format": "test", "sha256": ""},
                            seq_len=8)
    with pytest.raises(BadInputError, match=names) as info:
        generation_variant(variant)
    assert "prefill graph" in info.value.hint and "transformers" in info.value.hint
    # the exporter keeps the prefill graph and says why the bundle cannot generate
    assert generation_step(OnnxExporter(), variant) is None
    assert any(names in n and "prefill-only bundle" in n for n in variant.notes)


# ---------------------------------------------------------------- MODEL forms

FACTORY = """
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM


def build():
    torch.manual_seed(0)
    config = Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=97, max_position_embeddings=64, eos_token_id=2)
    return Qwen2ForCausalLM(config)
"""


def test_a_py_factory_causal_lm_exports_and_generates_from_ids(py_module, tmp_path, capsys):
    module = py_module(FACTORY, prefix="es_lm_factory")
    variant = es.load(f"py:{module}:build")
    assert variant.task == "lm" and [s.name for s in variant.inputs] == ["input_ids", "attention_mask"]
    assert "tokenizer" not in variant.source
    assert main(["export", f"py:{module}:build", "--target", "onnx", "-o", str(tmp_path / "out")]) == 0
    bundle = tmp_path / "out" / "build.onnx"
    capsys.readouterr()
    assert main(["generate", str(bundle), "--ids", "5,17,42,8", "-n", "5", "--json"]) == 0
    import json

    got = json.loads(capsys.readouterr().out)
    want = greedy_reference(variant, [5, 17, 42, 8], 5)
    assert got["tokens"] == want[:len(got["tokens"])] and got["tokens"]  # stops early only at EOS (id 2)
    assert main(["generate", str(bundle), "--prompt", "hello"]) == 3
    assert "has no tokenizer" in capsys.readouterr().err


def test_a_checkpoint_folder_without_tokenizer_files_generates_from_ids(tmp_path):
    variant = _tiny("llama")
    folder = tmp_path / "ckpt"
    variant.module.model.save_pretrained(str(folder))
    assert not any((folder / f).exists() for f in ("tokenizer.json", "tokenizer_config.json"))
    loaded = es.load(str(folder))
    assert loaded.task == "lm" and "tokenizer" not in loaded.source and loaded.source["format"] == "hf"
    assert loaded.example["input_ids"].max() < 97
    bundle, parity = es.export(loaded, tmp_path / "out", target="onnx")
    assert parity.passed and parity.generation["passed"]
    assert bundle.manifest.generation["tokenizer"] is None
    with pytest.raises(BadInputError, match="has no tokenizer") as info:
        es.generate(bundle.path, "The capital of France is")
    assert "--ids" in info.value.hint
    got = es.generate(bundle.path, ids=[4, 9, 33], max_new_tokens=4, ignore_eos=True)
    assert got.tokens == greedy_reference(loaded, [4, 9, 33], 4)


def test_a_damaged_tokenizer_file_is_named(tmp_path):
    folder = tmp_path / "ckpt"
    _tiny("llama").module.model.save_pretrained(str(folder))
    (folder / "tokenizer.json").write_text("{not json")
    with pytest.raises(BadInputError, match="tokenizer.json") as info:
        es.load(str(folder))
    assert "tokenizer" in info.value.hint
