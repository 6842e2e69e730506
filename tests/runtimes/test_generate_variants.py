"""Every compact LM variant generates, or says why not: MatFormer slices, R-Sparse, DeltaLLM (issue 24)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgesmith import api as es
from edgesmith.errors import BadInputError
from edgesmith.models.lm_generate import greedy_reference
from edgesmith.models.variant_folder import save_variant_folder


@pytest.fixture(scope="module")
def calibration(tmp_path_factory):
    path = tmp_path_factory.mktemp("variants") / "ids.npz"
    np.savez(path, input_ids=np.random.default_rng(1).integers(0, 97, (8, 32)).astype(np.int64))
    return path


def _saved(variant, folder):
    """The variant as ``optimize -o`` leaves it for a language model: a folder, loaded back."""
    return es.load(str(save_variant_folder(variant, folder)))


def test_a_matformer_slice_from_its_folder_generates_what_its_torch_model_does(tiny_llama, tmp_path):
    sliced = _saved(es.optimize(tiny_llama, ["matformer:ratio=0.75"]), tmp_path / "slice")
    assert sliced.module.model.model.layers[0].mlp.up_proj.out_features == 48  # 0.75 of 64 hidden units
    bundle, parity = es.export(sliced, tmp_path, target="onnx")
    assert parity.passed and parity.generation["passed"], parity.generation
    assert bundle.manifest.generation["layers"] == 2
    got = es.generate(bundle.path, ids=[5, 6, 7], max_new_tokens=6, ignore_eos=True).tokens
    assert got == greedy_reference(sliced, [5, 6, 7], 6)
    with pytest.raises(BadInputError, match="takes no context .it is not a Dolphin decoder bundle"):
        es.generate(bundle.path, ids=[5, 6, 7], context="a document")


def test_rsparse_generates_and_says_its_sparsity_is_counted_not_speed(tiny_llama, calibration, tmp_path, capsys):
    from edgesmith.cli import main

    sparse = es.optimize(tiny_llama, [f"rsparse:sparsity=0.5,text={calibration},seq_len=32,samples=8"])
    loaded = _saved(sparse, tmp_path / "sparse")  # the note survives the folder
    assert loaded.notes == sparse.notes and any("gives no speed" in n for n in loaded.notes)
    bundle, parity = es.export(loaded, tmp_path, target="onnx")
    assert parity.generation["passed"], parity.generation
    note = next(n for n in bundle.manifest.options["notes"] if n.startswith("rsparse:"))
    assert "counted" in note and "not measured" in note and "no speed" in note and "ONNX Runtime" in note
    got = es.generate(bundle.path, ids=[5, 6, 7], max_new_tokens=6, ignore_eos=True).tokens
    assert got == greedy_reference(loaded, [5, 6, 7], 6)
    capsys.readouterr()
    assert main(["generate", str(bundle.path), "--ids", "5,6,7", "-n", "3"]) == 0
    assert "note: rsparse:" in capsys.readouterr().err
    assert main(["generate", str(bundle.path), "--ids", "5,6,7", "-n", "3", "--json"]) == 0
    assert note in json.loads(capsys.readouterr().out)["notes"]


def test_deltallm_exports_its_prefill_and_generate_names_the_pass(tiny_llama, calibration, tmp_path):
    delta = es.optimize(tiny_llama, [f"deltallm:theta=0.7,window=4,text={calibration},seq_len=16,samples=4"])
    bundle, parity = es.export(delta, tmp_path, target="onnx")
    assert parity.passed and bundle.manifest.generation is None
    assert any("pass 'deltallm'" in n and "generation=false" in n for n in bundle.manifest.options["notes"])
    with pytest.raises(BadInputError, match="not a generation bundle: prefill-only .*pass 'deltallm' keeps a decode"):
        es.generate(bundle.path, ids=[5, 6, 7], max_new_tokens=3)
