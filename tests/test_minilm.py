"""Acceptance: the real all-MiniLM-L6-v2 checkpoint through export, profile and run on ONNX Runtime."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgesmith import api as es
from edgesmith.bundle import Bundle
from edgesmith.cli import main

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def checkpoint():
    from edgesmith.models.offline import minilm_dir

    return minilm_dir()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, checkpoint):
    out = tmp_path_factory.mktemp("minilm") / "out"
    assert main(["export", str(checkpoint), "--target", "onnx", "-o", str(out)]) == 0
    (path,) = list(out.iterdir())
    assert path.name.endswith(".onnx") and path.is_dir()
    return path


def test_export_parity_verified_fp32(bundle):
    m = Bundle.open(bundle).manifest
    assert m.target == "onnx" and m.runtime == "onnxruntime" and m.task == "encoder"
    p = m.parity
    assert p["passed"] is True and p["tier"] == "verified" and p["precision"] == "fp32"
    assert p["outputs"], "no outputs compared"
    for o in p["outputs"]:
        assert o["max_abs"] <= 1e-4 * max(1.0, o["ref_max_abs"]), o
    assert {s.name for s in m.inputs} == {"input_ids", "token_type_ids", "attention_mask"}
    for s in m.inputs:
        assert s.dtype == "int64" and s.dynamic == {0: "batch", 1: "sequence"}
    assert m.outputs[0].name == "last_hidden_state" and m.outputs[0].dynamic == {0: "batch", 1: "sequence"}


def test_profile_json(capsys, bundle):
    capsys.readouterr()
    assert main(["profile", str(bundle), "--runs", "10", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    (entry,) = doc["entries"]
    assert entry["target"] == "onnx" and entry["mode"] == "measured" and entry["runs"] == 10
    assert entry["latency_ms"]["p50"] > 0
    assert entry["parity"]["tier"] == "verified"


def test_run_batch1_new_sequence_length_matches_torch(bundle, checkpoint):
    import torch

    tok = transformers.AutoTokenizer.from_pretrained(str(checkpoint), local_files_only=True, trust_remote_code=False)
    model = transformers.AutoModel.from_pretrained(str(checkpoint), local_files_only=True,
                                                   trust_remote_code=False).eval()
    enc = tok(["A rather different sentence, long enough that its token count differs from the golden data's."],
              return_tensors="np")
    feeds = {k: enc[k].astype(np.int64) for k in ("input_ids", "token_type_ids", "attention_mask")}
    golden_len = Bundle.open(bundle).golden()[0]["input_ids"].shape[1]
    assert feeds["input_ids"].shape[0] == 1 and feeds["input_ids"].shape[1] != golden_len

    got = es.run(bundle, feeds)["last_hidden_state"]
    with torch.no_grad():
        want = model(**{k: torch.from_numpy(v) for k, v in feeds.items()}).last_hidden_state.numpy()
    assert got.shape == want.shape == (1, feeds["input_ids"].shape[1], model.config.hidden_size)
    assert np.abs(got - want).max() <= 1e-4 * max(1.0, float(np.abs(want).max()))
