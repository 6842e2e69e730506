"""Generation bundles: the same tokens as transformers, sampling, stop strings, chat templates, clear refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from edgesmith import api as es
from edgesmith.bundle import Bundle
from edgesmith.cli import main
from edgesmith.errors import BadInputError, UsageError
from edgesmith.runtimes.generate import Generator, Sampling, choose

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village,"]


@pytest.fixture(scope="module")
def tiny_bundle(tiny_llama, tmp_path_factory):
    bundle, parity = es.export(tiny_llama, tmp_path_factory.mktemp("tiny-gen"), target="onnx")
    assert parity.passed and parity.tier == "verified"
    return bundle


def _greedy(model, ids: list[int], tokens: int, eos: set[int] | None = None) -> list[int]:
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=tokens, do_sample=False,
                             attention_mask=torch.ones(1, len(ids), dtype=torch.long), pad_token_id=0)
    new = out[0, len(ids):].tolist()
    return [t for t in new if t not in (eos or set())]


def test_a_language_model_exports_as_a_generation_bundle(tiny_bundle):
    m = tiny_bundle.manifest
    assert m.task == "lm" and m.generation["layers"] == 2 and m.generation["kv_heads"] == 2
    assert [s.name for s in m.inputs[:3]] == ["input_ids", "attention_mask", "position_ids"]
    assert m.inputs[3].name == "past_key_0" and m.inputs[3].dynamic == {0: "batch", 2: "past"}
    assert m.outputs[1].name == "present_key_0" and m.outputs[1].dynamic == {0: "batch", 2: "total"}
    names = {o["name"] for o in m.parity["outputs"]}
    assert {"logits@prefill", "logits@decode", "present_key_1@decode"} <= names  # both phases checked
    greedy = m.parity["generation"]
    assert greedy["passed"] and greedy["matched"] == greedy["tokens"] == 8


def test_greedy_tokens_match_transformers_with_and_without_io_binding(tiny_llama, tiny_bundle):
    """IO binding on the fused graph writes the cache in place into one buffer; numpy feeds grow it each step."""
    assert "GroupQueryAttention" in tiny_bundle.manifest.details["fuse"]["contrib_ops"]
    assert Generator(tiny_bundle)._stepper(32).capacity == 32  # the shared buffer, bound once
    prompt = [5, 17, 42, 8, 3]
    want = _greedy(tiny_llama.module.model, prompt, 12)
    for binding in (True, False):
        got = Generator(tiny_bundle, binding=binding).generate(prompt, Sampling(max_new_tokens=12, ignore_eos=True))
        assert got.tokens == want, binding
        assert got.stop_reason == "length" and got.ttft_s > 0 and got.decode_steps == 11


def test_sampling_is_seeded_and_top_k_1_is_greedy(tiny_bundle):
    gen = Generator(tiny_bundle)
    hot = Sampling(max_new_tokens=10, temperature=1.5, seed=7, ignore_eos=True)
    first, again = gen.generate([1, 2, 3], hot).tokens, gen.generate([1, 2, 3], hot).tokens
    assert first == again
    assert gen.generate([1, 2, 3], Sampling(max_new_tokens=10, temperature=1.5, seed=8, ignore_eos=True)).tokens != first
    greedy = gen.generate([1, 2, 3], Sampling(max_new_tokens=10, ignore_eos=True)).tokens
    assert gen.generate([1, 2, 3], Sampling(max_new_tokens=10, temperature=0.9, top_k=1, ignore_eos=True)).tokens == greedy


def test_top_p_keeps_the_smallest_set_reaching_p():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    rng = np.random.default_rng(0)
    drawn = {choose(logits, Sampling(temperature=1.0, top_p=0.7), rng) for _ in range(300)}
    assert drawn == {0, 1}  # 0.5 alone is short of 0.7; 0.5 + 0.3 reaches it
    assert {choose(logits, Sampling(temperature=1.0, top_p=0.5), rng) for _ in range(50)} == {0}


def test_stop_strings_and_streaming(tiny_bundle):
    gen = Generator(tiny_bundle)
    full = gen.generate([5, 17, 42], Sampling(max_new_tokens=12, ignore_eos=True))
    words = full.text.split()
    pieces: list[str] = []
    stopped = gen.generate([5, 17, 42], Sampling(max_new_tokens=12, ignore_eos=True, stop=(words[3],)), pieces.append)
    assert stopped.stop_reason == "stop" and stopped.text == full.text[:full.text.index(words[3])]
    assert "".join(pieces) == stopped.text  # streamed pieces add up to the text


def test_bad_input_is_refused_clearly(tiny_bundle, tmp_path):
    gen = Generator(tiny_bundle)
    with pytest.raises(UsageError, match="temperature must be 0 .* got -0.5"):
        gen.generate([1], Sampling(temperature=-0.5))
    with pytest.raises(BadInputError, match="the prompt is 80 tokens; tiny-llama.onnx takes at most 64"):
        gen.generate(list(range(1, 81)))
    with pytest.raises(BadInputError, match="has no tokenizer"):
        gen.encode("hello")
    digits, _ = es.export(es.load("zoo:digits-mlp"), tmp_path, target="onnx")
    with pytest.raises(BadInputError, match="digits-mlp.onnx is not a generation bundle: it holds a classifier"):
        Generator(digits.path)


def test_the_cli_streams_tokens_and_prints_json(tiny_bundle, capsys):
    assert main(["generate", str(tiny_bundle.path), "--ids", "5,17,42", "-n", "6", "--ignore-eos"]) == 0
    out, err = capsys.readouterr()
    assert len(out.split()) == 6 and "6 tokens, time to first token" in err and "stopped: length" in err
    assert main(["generate", str(tiny_bundle.path), "--ids", "5,17,42", "-n", "6", "--ignore-eos", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["new_tokens"] == 6 and doc["prompt_tokens"] == 3 and doc["text"] == out.strip()
    assert main(["generate", str(tiny_bundle.path), "--ids", "1", "--temperature", "-1"]) == 2
    assert "temperature must be 0" in capsys.readouterr().err
    assert main(["generate", str(tiny_bundle.path)]) == 2
    assert "give exactly one of --prompt" in capsys.readouterr().err


# -- SmolLM2 (the real model, offline): acceptance item 1 of issue 24 on ONNX ------------------------------------


@pytest.mark.slow
def test_smollm2_onnx_generates_the_tokens_transformers_does(smollm2, smollm2_onnx):
    gen = Generator(smollm2_onnx)
    assert gen.tokenizer is not None and gen.eos == {2}
    m = Bundle.open(smollm2_onnx).manifest
    assert "tokenizer/tokenizer.json" in m.files or "tokenizer" in m.files  # hashed with the rest
    model = smollm2.module.model
    for prompt in PROMPTS:
        ids = gen.encode(prompt)
        want = _greedy(model, ids, 20, gen.eos)
        got = es.generate(smollm2_onnx, prompt, max_new_tokens=20)
        assert got.prompt_tokens == ids and got.tokens == want, prompt


@pytest.mark.slow
def test_smollm2_chat_template_renders_as_transformers_does(smollm2, smollm2_onnx, capsys):
    from edgesmith.models.hf import tokenizer_for

    tok = tokenizer_for(smollm2)
    messages = [{"role": "user", "content": "Name a river."}]
    want = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    gen = Generator(smollm2_onnx)
    assert gen.render_chat(messages) == want
    assert gen.encode("Name a river.", chat=True) == tok(want, add_special_tokens=False)["input_ids"]
    prompt = "The capital of France is"
    assert main(["generate", str(smollm2_onnx), "--prompt", prompt, "--max-new-tokens", "20"]) == 0
    out = capsys.readouterr().out
    assert out.strip() == gen.decode(_greedy(smollm2.module.model, gen.encode(prompt), 20, gen.eos)).strip()
    assert main(["generate", str(smollm2_onnx), "--prompt", "hi", "--chat-template", "/nonexistent.jinja"]) == 3
    assert "cannot read the chat template" in capsys.readouterr().err
