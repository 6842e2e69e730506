"""The fixed evaluation text, token windows, perplexity, and text calibration for the matformer pass."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgesmith import api as es
from edgesmith.errors import BadInputError, UsageError
from edgesmith.data.datasets import eval_text
from edgesmith.models.hf import tokenizer_for
from edgesmith.eval.lm import perplexity, token_windows


def test_the_evaluation_text_has_disjoint_train_and_test_splits():
    train, test = eval_text("train"), eval_text("test")
    assert len(train) > 300_000 and len(test) > 30_000
    assert test.startswith("ABRUPT, adj.") and "ABRUPT, adj." not in train
    assert train.startswith("ABASEMENT, n.")
    with pytest.raises(UsageError, match="no split 'dev'"):
        eval_text("dev")


@pytest.fixture(scope="module")
def minilm():
    return es.load("zoo:all-minilm-l6-v2")


def test_token_windows_cut_the_text_and_refuse_too_little(minilm):
    tok = tokenizer_for(minilm)
    windows = token_windows(tok, eval_text("test"), 64, max_windows=5)
    assert windows.shape == (5, 64) and windows.dtype == np.int64
    with pytest.raises(BadInputError, match="fewer than one window of 64"):
        token_windows(tok, "A short text.", 64)


def test_a_variant_without_a_tokenizer_is_refused_by_name():
    with pytest.raises(BadInputError, match="digits-mlp has no tokenizer"):
        es.optimize(es.load("zoo:digits-mlp"), ["matformer:text=devils-dictionary"])


def test_text_calibration_orders_units(minilm):
    v = es.optimize(minilm, ["matformer:ratio=0.5,text=devils-dictionary,samples=4,seq_len=32"])
    report = v.passes[-1]["report"]
    assert report["calibration"] == "devils-dictionary" and report["widths"] == [768] * 6


def test_perplexity_of_a_random_lm_is_near_its_vocabulary(tiny_llama):
    v = tiny_llama
    ids = np.random.default_rng(1).integers(0, 97, (3, 16)).astype(np.int64)
    result = perplexity(v, ids, batch=2)
    assert result["tokens"] == 3 * 15 and math.isclose(result["perplexity"], math.exp(result["nll"]))
    assert 20 < result["perplexity"] < 500  # random weights: about as unsure as the 97-token vocabulary
