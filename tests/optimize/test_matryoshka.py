"""The matryoshka pass: pooled, truncated, re-normalised embeddings; exports; refusals; the agreement metric."""

from __future__ import annotations

import numpy as np
import pytest

from edgesmith import api as es
from edgesmith.errors import BadInputError, UsageError
from edgesmith.data.datasets import eval_sentences
from edgesmith.eval.embeddings import embed, neighbours, recall_agreement


@pytest.fixture(scope="module")
def minilm():
    return es.load("zoo:all-minilm-l6-v2")


def test_the_embedding_is_the_pooled_prefix_renormalised(minilm):
    full = es.optimize(minilm, ["matryoshka:dim=384"])
    cut = es.optimize(minilm, ["matryoshka:dim=64"])
    assert cut.outputs[0].name == "sentence_embedding" and cut.outputs[0].shape == (2, 64)
    assert cut.outputs[0].dynamic == {0: "batch"} and minilm.outputs[0].name == "last_hidden_state"
    a, b = full.run()["sentence_embedding"], cut.run()["sentence_embedding"]
    np.testing.assert_allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-6)
    prefix = a[:, :64] / np.linalg.norm(a[:, :64], axis=1, keepdims=True)
    np.testing.assert_allclose(b, prefix, atol=1e-6)
    # mean pooling under the mask: the same as sentence-transformers' by hand
    hidden = minilm.run()["last_hidden_state"]
    mask = minilm.example["attention_mask"][..., None]
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    np.testing.assert_allclose(a, pooled / np.linalg.norm(pooled, axis=1, keepdims=True), atol=1e-5)
    assert any("was not trained nested" in n for n in cut.notes) and not full.notes
    assert not any("matryoshka" in n for n in minilm.notes)  # the caller's variant is untouched


@pytest.mark.parametrize("target", ["onnx", "coreml", "mlx"])
def test_a_truncated_encoder_exports_and_passes_parity(minilm, target, tmp_path):
    bundle, parity = es.export(es.optimize(minilm, ["matryoshka:dim=64"]), tmp_path, target=target)
    assert parity.passed, parity.failures
    assert bundle.manifest.outputs[0].name == "sentence_embedding"


@pytest.mark.parametrize("spec,error,text", [
    ("matryoshka:dim=0", UsageError, "dim=0 must be at least 1"),
    ("matryoshka:dim=512", BadInputError, "dim=512 exceeds all-minilm-l6-v2's embedding width 384"),
    ("matryoshka:pooling=max", UsageError, "pooling='max'"),
    ("matryoshka:pooling=none", BadInputError, "needs one output of rank 2"),
])
def test_bad_options_are_refused(minilm, spec, error, text):
    with pytest.raises(error) as info:
        es.optimize(minilm, [spec])
    assert text in str(info.value)


def test_the_agreement_metric():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, 16)).astype(np.float32)
    assert recall_agreement(x, x * 3.0, k=5) == 1.0  # scale does not change cosine neighbours
    assert neighbours(x, 5).shape == (50, 5) and not (neighbours(x, 5) == np.arange(50)[:, None]).any()
    assert recall_agreement(x, rng.standard_normal((50, 16)), k=5) < 0.4


def test_the_eval_sentences_and_an_embedding_run(minilm):
    sentences = eval_sentences("eval")
    assert len(sentences) == 1445 and not set(sentences) & set(eval_sentences("train"))
    emb = embed(es.optimize(minilm, ["matryoshka:dim=32"]), sentences[:20])
    assert emb.shape == (20, 32)


def test_the_nested_fine_tune_trains_a_copy(minilm, tmp_path):
    import torch

    sentences = tmp_path / "sentences.txt"
    sentences.write_text("\n".join(eval_sentences("train")[:40]) + "\n")
    before = {k: v.clone() for k, v in minilm.module.state_dict().items()}
    v = es.optimize(minilm, [f"matryoshka:dim=32,train={sentences},epochs=1,batch=8,dims=32/384"])
    report = v.passes[-1]["report"]
    assert report["nested"] and report["train"]["steps"] == 5 and report["train"]["dims"] == [32, 384]
    assert np.isfinite(report["train"]["loss_first"]) and np.isfinite(report["train"]["loss_last"])
    assert not any("not trained nested" in n for n in v.notes)
    after = v.module.encoder.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the copy learned
    assert all(torch.equal(before[k], t) for k, t in minilm.module.state_dict().items())  # the original did not
    assert v.run()["sentence_embedding"].shape == (2, 32)


@pytest.mark.parametrize("spec,text", [
    ("matryoshka:dim=32,train=devils-dictionary,dims=32/512", "dims [32, 512] exceed the embedding width 384"),
    ("matryoshka:dim=32,train=devils-dictionary,batch=5000", "fewer than one batch of 5000"),
    ("matryoshka:dim=32,train=no-such-file.txt", "cannot read training sentences no-such-file.txt"),
])
def test_bad_training_input_is_refused(minilm, spec, text):
    with pytest.raises(BadInputError) as info:
        es.optimize(minilm, [spec])
    assert text in str(info.value)


def test_bad_dims_text_is_a_usage_error():
    with pytest.raises(UsageError, match="dims entry 'x'"):
        es.optimize(es.load("zoo:digits-mlp"), ["matryoshka:dims=64/x"])
