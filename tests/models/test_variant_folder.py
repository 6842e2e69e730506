"""A language model's variant saved as a folder keeps its modules, so passes compose across a save."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import edgesmith.optimize  # noqa: F401  (the passes register the module classes they put in a model)
from edgesmith import api as es
from edgesmith.errors import BadInputError, OutputExistsError
from edgesmith.models.modules import MODULE_KINDS
from edgesmith.models.variant_folder import folder_for, keeps_structure, save_variant_folder
from testkit import assert_one_error, cli, snapshot

WIDTHS = "matformer:widths=48/40"  # the tiny Llama's FFNs have 64 hidden units: two other shapes


@pytest.fixture(scope="module")
def calibration(tmp_path_factory):
    path = tmp_path_factory.mktemp("variant-folder") / "ids.npz"
    np.savez(path, input_ids=np.random.default_rng(1).integers(0, 97, (8, 32)).astype(np.int64))
    return path


def logits(variant):
    with torch.no_grad():
        return variant.module(torch.from_numpy(variant.example["input_ids"]))


def saved(tmp_path, variant, name: str):
    """``variant`` saved as the folder ``name``, its record, and the variant loaded back from it."""
    folder = save_variant_folder(variant, tmp_path / name)
    return folder, json.loads((folder / "edgesmith.json").read_text()), es.load(str(folder))


def test_matformer_then_rsparse_and_deltallm_round_trip_exactly(tiny_llama, calibration, tmp_path):
    sliced = es.optimize(tiny_llama, [WIDTHS])
    folder, record, back = saved(tmp_path, sliced, "sliced")
    assert {"config.json", "model.safetensors", "edgesmith.json"} <= {p.name for p in folder.iterdir()}
    assert json.loads((folder / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    assert {m["class"] for m in record["modules"]} == {"torch.Linear"} and len(record["modules"]) == 6
    assert torch.equal(logits(back), logits(sliced))
    assert back.passes == sliced.passes and [p["name"] for p in back.passes] == ["matformer"]
    assert (back.name, back.task, back.inputs, back.outputs) == (sliced.name, "lm", sliced.inputs, sliced.outputs)
    assert [b.mlp.down_proj.in_features for b in back.module.model.model.layers] == [48, 40]

    for spec, kind in [(f"rsparse:sparsity=0.5,text={calibration},seq_len=32,samples=8", "rsparse.Linear"),
                       (f"deltallm:theta=0.5,window=4,text={calibration},seq_len=32,samples=4", "deltallm.State")]:
        further = es.optimize(back, [spec])  # a pass on the loaded variant finds the modules it needs
        _, record, again = saved(tmp_path, further, kind)
        assert kind in {m["class"] for m in record["modules"]}
        assert torch.equal(logits(again), logits(further)), kind
        assert [p["name"] for p in again.passes] == ["matformer", spec.split(":")[0]]
    assert again.module.model.config._attn_implementation == further.module.model.config._attn_implementation


def test_a_save_is_atomic_and_overwrites_only_with_force(tiny_llama, tmp_path):
    save_variant_folder(tiny_llama, tmp_path / "v")
    with pytest.raises(OutputExistsError, match="already exists"):
        save_variant_folder(tiny_llama, tmp_path / "v")
    save_variant_folder(tiny_llama, tmp_path / "v", force=True)
    assert [p.name for p in tmp_path.iterdir()] == ["v"]  # no staging folder left behind
    assert torch.equal(logits(es.load(str(tmp_path / "v"))), logits(tiny_llama))


@pytest.mark.parametrize("edit, named", [
    (lambda d: d["config"].update(auto_map={"AutoModelForCausalLM": "modeling_evil.Evil"}), "modeling_evil.py"),
    (lambda d: d["meta"]["modules"][0].update({"class": "evil.Module"}), "'evil.Module'"),
    (lambda d: d["meta"]["model"].update({"class": "AutoModel"}), "'AutoModel'"),
    (lambda d: d["meta"].update(format="other/9"), "'other/9'"),
    (lambda d: d["meta"]["modules"][0].update(path="model.config"), "'model.config'"),  # an attribute, not a module
])
def test_a_folder_that_names_code_or_an_unknown_class_is_refused(tiny_llama, tmp_path, edit, named):
    folder = save_variant_folder(es.optimize(tiny_llama, [WIDTHS]), tmp_path / "v")
    files = {"config": folder / "config.json", "meta": folder / "edgesmith.json"}
    data = {k: json.loads(p.read_text()) for k, p in files.items()}
    edit(data)
    for k, p in files.items():
        p.write_text(json.dumps(data[k]))
    with pytest.raises(BadInputError, match=named.replace(".", r"\.")):
        es.load(str(folder))


@pytest.mark.parametrize("name", MODULE_KINDS.names())
def test_every_registered_module_class_imports(name):
    kind = MODULE_KINDS.get(name)()
    assert isinstance(kind.cls, type) and callable(kind.describe) and callable(kind.build)
    assert {"torch.Linear", "rsparse.Linear", "deltallm.State"} <= set(MODULE_KINDS.names())


def test_only_a_language_model_is_saved_as_a_folder(tiny_llama):
    assert keeps_structure(tiny_llama) and not keeps_structure(es.load("zoo:digits-mlp"))
    assert folder_for("out/a.pt2").as_posix() == "out/a" and folder_for("out/a").as_posix() == "out/a"


def test_the_cli_composes_passes_across_saved_variants(tiny_llama, calibration, tmp_path, capsys):
    base = save_variant_folder(tiny_llama, tmp_path / "base")
    code, out, err = cli(capsys, "optimize", base, "-p", WIDTHS, "-o", tmp_path / "a.pt2")
    assert code == 0, err
    assert f"wrote {tmp_path / 'a'} (a variant folder" in out
    assert (tmp_path / "a" / "edgesmith.json").is_file() and not (tmp_path / "a.pt2").exists()
    code, _, err = cli(capsys, "optimize", tmp_path / "a", "-p",
                       f"rsparse:sparsity=0.5,text={calibration},seq_len=32,samples=8", "-o", tmp_path / "b")
    assert code == 0, err
    assert [p["name"] for p in es.load(str(tmp_path / "b")).passes] == ["matformer", "rsparse"]
    before = snapshot(tmp_path)
    code, _, err = cli(capsys, "optimize", tmp_path / "a", "-p", "deltallm", "-o", tmp_path / "b")
    assert code == 3 and snapshot(tmp_path) == before
    assert_one_error(err, str(tmp_path / "b"), "already exists")
    code, _, err = cli(capsys, "optimize", tmp_path / "a.pt2", "-p", "deltallm", "-o", tmp_path / "c")
    assert code == 3 and f"saved as the folder {tmp_path / 'a'}" in err


@pytest.mark.slow
def test_smollm2_sliced_then_sparse_delta_and_dolphin_from_the_saved_variant(tmp_path, capsys):
    """Issue 23's chain: matformer -o a.pt2, then rsparse, deltallm and dolphin train from what it wrote."""
    a = tmp_path / "a"
    code, _, err = cli(capsys, "optimize", "zoo:smollm2-135m", "-p", "matformer:ratio=0.75", "-o", tmp_path / "a.pt2")
    assert code == 0, err
    sliced = es.load(str(a))
    assert [b.mlp.down_proj.in_features for b in sliced.module.model.model.layers] == [1152] * 30
    steps = ["--memory", "4", "--encoder-layers", "1", "--context", "32", "--continuation", "8", "--reconstruct",
             "16", "--reconstruct-steps", "1", "--steps", "1", "--batch", "1", "--save-every", "1"]
    few = "skip=lm_head/q_proj/k_proj/v_proj/o_proj/gate_proj/up_proj"  # the 30 (sliced) down_proj: minutes less
    for args in (["optimize", a, "-p", f"rsparse:sparsity=0.5,samples=2,seq_len=64,refine=0,lowrank=svd,{few}",
                  "-o", tmp_path / "sparse"],
                 ["optimize", a, "-p", "deltallm:samples=1,seq_len=64", "-o", tmp_path / "delta"],
                 ["dolphin", "train", a, "-o", tmp_path / "dolphin", *steps]):
        code, _, err = cli(capsys, *args)
        assert code == 0, (args, err)
    for name, last in (("sparse", "rsparse"), ("delta", "deltallm")):
        assert [p["name"] for p in es.load(str(tmp_path / name)).passes] == ["matformer", last]
    assert (tmp_path / "dolphin" / "dolphin.pt").is_file()


@pytest.mark.slow
def test_smollm2_sliced_reads_back_exactly_with_its_tokenizer(tmp_path):
    sliced = es.optimize(es.load("zoo:smollm2-135m"), ["matformer:ratio=0.75"])
    folder, record, back = saved(tmp_path, sliced, "a")
    assert record["tied"] == {"lm_head.weight": "model.embed_tokens.weight"}  # stored once
    assert (folder / "tokenizer.json").is_file() and back.source["tokenizer"]["path"] == str(folder)
    assert torch.equal(logits(back), logits(sliced))
