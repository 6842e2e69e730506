"""The decode step of a causal LM: the same logits as the whole sequence, exportable with parity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgesmith import api as es
from edgesmith.errors import BadInputError
from edgesmith.models.lm_decode import decode_step_variant
from edgesmith.models.variant import run_module


def test_the_decode_step_continues_the_prompt_exactly(tiny_llama):
    prompt = np.random.default_rng(3).integers(0, 97, (2, 10)).astype(np.int64)
    step = decode_step_variant(tiny_llama, prompt)
    assert step.name == "tiny-llama-decode" and len(step.inputs) == 2 + 2 * 2
    out = run_module(step.module, step.inputs, step.outputs, step.example)
    # the whole sequence (prompt + the step's token) through the plain model: same last logits
    whole = np.concatenate([prompt, step.example["input_ids"]], axis=1)
    with torch.no_grad():
        ref = tiny_llama.module.model(input_ids=torch.from_numpy(whole)).logits[:, -1:].numpy()
    np.testing.assert_allclose(out["logits"], ref, atol=1e-5, rtol=0)
    assert out["present_key_0"].shape == (2, 2, 11, 8)  # the cache grew by the new token


def test_the_decode_step_exports_to_onnx_with_parity(tiny_llama, tmp_path):
    prompt = np.random.default_rng(4).integers(0, 97, (1, 6)).astype(np.int64)
    bundle, parity = es.export(decode_step_variant(tiny_llama, prompt), tmp_path, target="onnx")
    assert parity.passed and parity.tier == "verified"
    assert bundle.manifest.inputs[2].dynamic == {2: "past"}
    # a longer past than the example's runs too (the past axis is dynamic)
    longer = decode_step_variant(tiny_llama, np.random.default_rng(5).integers(0, 97, (1, 9)).astype(np.int64))
    got = es.run(bundle.path, longer.example)
    ref = run_module(longer.module, longer.inputs, longer.outputs, longer.example)
    np.testing.assert_allclose(got["logits"], ref["logits"], atol=1e-4, rtol=0)


def test_a_model_without_a_kv_cache_is_refused():
    with pytest.raises(BadInputError, match="digits-mlp is not a Hugging Face decoder LM"):
        decode_step_variant(es.load("zoo:digits-mlp"), np.zeros((1, 4), np.int64))
