"""Core ML generation bundles: a stateful KV cache (iOS 18), parity, generation and its errors (issue 24)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

pytest.importorskip("torch")
if importlib.util.find_spec("coremltools") is None:  # find, not import: its import is slow and noisy
    pytest.skip("coremltools is not installed", allow_module_level=True)

from edgesmith import api as es  # noqa: E402
from edgesmith.errors import BadInputError, UsageError  # noqa: E402
from edgesmith.export.coreml import CoremlOptions  # noqa: E402
from edgesmith.models.lm_generate import greedy_reference  # noqa: E402
from edgesmith.runtimes import open_runtime  # noqa: E402
from edgesmith.runtimes.coreml import native_coreml  # noqa: E402
from edgesmith.runtimes.coreml.mil.states import StateCell, slice_update  # noqa: E402
from edgesmith.runtimes.kv import MASKED, causal_mask, state_feeds  # noqa: E402

TIER = "verified" if native_coreml() is not None else "emulated"


@pytest.fixture(scope="module")
def bundle(tiny_llama, tmp_path_factory):
    out = tmp_path_factory.mktemp("coreml_lm")
    return es.export(tiny_llama, out, target="coreml", options={"context": 32, "precision": "fp32"})


def test_a_decoder_lm_exports_as_a_stateful_generation_bundle(bundle):
    b, parity = bundle
    gen = b.manifest.generation
    assert gen["cache"] == {"state": "{kind}_cache_{layer}", "capacity": 32, "dtype": "float16"}
    assert gen["max_context"] == 32 and (gen["layers"], gen["kv_heads"], gen["head_dim"]) == (2, 2, 8)
    assert [s.name for s in b.manifest.inputs] == ["input_ids", "position_ids", "causal_mask"]
    assert [s.name for s in b.manifest.outputs] == ["logits"]
    assert b.manifest.options["min_target"] == "iOS18"  # raised from the default iOS17: states need 18
    assert any("min_target raised" in n for n in b.manifest.options["notes"])
    # parity: the prefill's logits, a decode step against the kept state, 8 greedy tokens
    assert parity.passed and parity.tier == TIER
    assert {o.name for o in parity.outputs} == {"logits", "logits@decode"}
    assert parity.generation["matched"] == parity.generation["tokens"] == 8


def test_the_bundle_generates_the_source_models_greedy_tokens(bundle, tiny_llama):
    b, _ = bundle
    for prompt in ([5, 17, 3], [60, 2, 2, 9, 41, 7, 1]):
        got = es.generate(b.path, ids=prompt, max_new_tokens=12, ignore_eos=True)
        assert got.tokens == greedy_reference(tiny_llama, prompt, 12)
        # the state lives in the model: without IO binding the same loop runs
        assert es.generate(b.path, ids=prompt, max_new_tokens=12, ignore_eos=True, binding=False).tokens == got.tokens


def test_the_context_is_the_caches_capacity(bundle):
    b, _ = bundle
    with pytest.raises(BadInputError, match=r"the prompt is 40 tokens; .* at most 32"):
        es.generate(b.path, ids=list(range(1, 41)), max_new_tokens=4)
    out = es.generate(b.path, ids=list(range(1, 29)), max_new_tokens=10, ignore_eos=True)
    assert out.stop_reason == "context" and len(out.prompt_tokens) + len(out.tokens) <= 33
    stepper = open_runtime(b).kv_stepper(b.manifest.generation)
    with pytest.raises(BadInputError, match="overflows the Core ML KV cache of 32 positions"):
        stepper.step(np.ones((1, 33), np.int64), 0)


def test_generation_false_exports_the_prefill_graph(tiny_llama, tmp_path):
    b, parity = es.export(tiny_llama, tmp_path, target="coreml", options={"generation": False})
    assert b.manifest.generation is None and parity.passed
    assert [s.name for s in b.manifest.inputs] == ["input_ids"]
    with pytest.raises(BadInputError, match="not a generation bundle"):
        es.generate(b.path, ids=[1, 2], max_new_tokens=2)


def test_context_option_is_checked():
    with pytest.raises(UsageError, match="context=1 must be at least 2"):
        CoremlOptions(context=1)


def test_state_feeds_mask_what_each_query_may_see():
    feeds = state_feeds(np.array([[7, 8]]), 3)
    assert feeds["position_ids"].tolist() == [[3, 4]]
    mask = feeds["causal_mask"]
    assert mask.shape == (1, 1, 2, 5) and mask.dtype == np.float32
    assert (mask[0, 0, 0] == [0, 0, 0, 0, MASKED]).all() and (mask[0, 0, 1] == 0).all()
    assert np.isfinite(causal_mask(0, 4).astype(np.float16)).all()  # no overflow in an fp16 program


def test_the_evaluators_state_ops():
    x = np.zeros((1, 2, 6, 3), np.float32)
    update = np.arange(12, dtype=np.float32).reshape(1, 2, 2, 3)
    out = slice_update(x, update, begin=[0, 0, 2, 0], end=[1, 2, 4, 3])
    assert (out[:, :, 2:4] == update).all() and (out[:, :, :2] == 0).all() and (x == 0).all()
    with pytest.raises(ValueError, match="slice_update of shape"):
        slice_update(x, update, begin=[0, 0, 0, 0], end=[1, 2, 1, 3])
    cell = StateCell(np.zeros((2,), np.float32), np.float16)
    cell.write(np.array([1 / 3, 70000.0], np.float32))
    assert cell.value[0] == np.float32(np.float16(1 / 3)) and np.isinf(cell.value[1])  # rounded as fp16 stores
    with pytest.raises(ValueError, match="write_state of shape"):
        cell.write(np.zeros((3,), np.float32))


def test_an_lm_profile_of_the_evaluator_says_emulated(bundle):
    from edgesmith.profiles.lm import LMSettings, measure_lm, with_errors

    b, _ = bundle
    record = measure_lm(b.path, LMSettings(prompt_lengths=(4,), decode_tokens=2, runs=1, warmup=0))
    assert record["mode"] == TIER.replace("verified", "measured") and record["rows"][0]["prompt_tokens"] == 4
    if record["mode"] == "emulated":  # no error is scored against a stand-in's time
        prediction = {"rows": [{"prompt_tokens": 4, "ttft_ms": 1.0, "decode_ms_per_token": 1.0}]}
        assert "ttft_error" not in with_errors(record, prediction)["prediction"]["rows"][0]


def test_predicted_lm_costs_read_the_onnx_siblings_graph_and_the_fp16_state(bundle, tiny_llama):
    from edgesmith.profiles.lm import step_costs

    b, _ = bundle
    es.export(tiny_llama, b.path.parent, target="onnx")  # the sibling whose graph predictions read
    costs = step_costs(b.path)
    assert costs.kv_bytes_per_position == 2 * 2 * 2 * 8 * 2  # keys and values, 2 layers x 2 heads x 8, fp16
    assert sum(costs.decode_flops) > 0


def test_generate_says_its_times_are_the_evaluators(bundle, capsys):
    from edgesmith.cli import main

    b, _ = bundle
    assert main(["generate", str(b.path), "--ids", "5,17,3", "-n", "3", "--ignore-eos"]) == 0
    err = capsys.readouterr().err
    assert "3 tokens, time to first token" in err
    assert ("emulated: a stand-in for the runtime ran it here" in err) == (TIER == "emulated")
    assert es.generate(b.path, ids=[5, 17, 3], max_new_tokens=2).to_dict()["timing"] == \
        TIER.replace("verified", "measured")
