"""Hugging Face checkpoint folders: nothing in a checkpoint runs (issue 22, "trust and first contact").

A folder whose configs map classes to its own ``.py`` (``auto_map``) would make transformers ask
"Do you wish to run the custom code? [y/N]" and run it on ``y``; pickled weights run code when
unpickled. edgesmith refuses both before transformers sees the folder: exit 3, one error line naming
the file, nothing written, and the marker the code would create never appears.
"""

from __future__ import annotations

import json
import pickle
import runpy
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from edgesmith.cli import main
from edgesmith.errors import BadInputError
from edgesmith.models import hf
from testkit import ENV, PickleBomb, assert_one_error, snapshot

BERT = {"model_type": "bert", "architectures": ["BertModel"], "hidden_size": 8, "num_hidden_layers": 1,
        "num_attention_heads": 2, "intermediate_size": 16, "vocab_size": 30}


def _evil_folder(root: Path, marker: Path, config_file: str) -> Path:
    """A checkpoint whose ``config_file`` maps AutoModel (or AutoTokenizer) to ``modeling_evil.py``."""
    folder = root / "ckpt"
    folder.mkdir()
    (folder / "modeling_evil.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('the checkpoint code ran')\n"
        "class AnyModel: pass\nclass AnyConfig: pass\nclass AnyTokenizer: pass\n")
    config = {"model_type": "evilnet", "architectures": ["AnyModel"],
              "auto_map": {"AutoConfig": "modeling_evil.AnyConfig", "AutoModel": "modeling_evil.AnyModel"}}
    if config_file == "tokenizer_config.json":
        config = dict(BERT)
        (folder / config_file).write_text(json.dumps(
            {"tokenizer_class": "AnyTokenizer", "auto_map": {"AutoTokenizer": ["modeling_evil.AnyTokenizer", None]}}))
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "model.safetensors").write_bytes(b"")
    return folder


@pytest.mark.parametrize("config_file", ["config.json", "tokenizer_config.json"])
@pytest.mark.parametrize("command", [["export", "ckpt", "-o", "out"], ["inspect", "ckpt"]], ids=["export", "inspect"])
def test_checkpoint_code_is_refused(capsys, tmp_path, work, config_file, command):
    marker = tmp_path / "MARKER"
    folder = _evil_folder(work, marker, config_file)
    runpy.run_path(str(folder / "modeling_evil.py"))  # the payload is live: importing it makes the marker
    assert marker.exists()
    marker.unlink()

    before = snapshot(work)
    capsys.readouterr()
    code = main(command)
    _, err = capsys.readouterr()
    assert code == 3
    line = assert_one_error(err, "modeling_evil.py", config_file, "ckpt")
    assert "never runs" in line
    assert not marker.exists(), "the checkpoint's code ran"
    assert snapshot(work) == before


def test_checkpoint_code_is_refused_even_with_yes_on_stdin(tmp_path, work):
    """A real process with "y" waiting on stdin: transformers would take it as consent."""
    marker = tmp_path / "MARKER"
    _evil_folder(work, marker, "config.json")
    before = snapshot(work)
    r = subprocess.run([sys.executable, "-m", "edgesmith.cli", "export", "ckpt", "-o", "out"], input="y\ny\n",
                       capture_output=True, text=True, env=ENV, cwd=work, timeout=300)
    assert r.returncode == 3, r.stderr
    assert_one_error(r.stderr, "modeling_evil.py")
    assert "custom code" not in r.stdout + r.stderr  # transformers never got to ask
    assert not marker.exists(), "the checkpoint's code ran"
    assert snapshot(work) == before


@pytest.mark.parametrize("weights", ["pytorch_model.bin", "model.pt"])
def test_pickled_weights_are_refused(capsys, tmp_path, work, weights):
    marker = tmp_path / "MARKER"
    pickle.loads(pickle.dumps(PickleBomb(marker)))  # the payload is live
    assert marker.exists()
    marker.unlink()
    folder = work / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(BERT))
    (folder / weights).write_bytes(pickle.dumps({"embeddings.word_embeddings.weight": PickleBomb(marker)}))
    before = snapshot(work)
    for command in (["export", "ckpt", "-o", "out"], ["inspect", "ckpt"]):
        capsys.readouterr()
        code = main(command)
        _, err = capsys.readouterr()
        assert code == 3, command
        line = assert_one_error(err, weights, "ckpt")
        assert "pickle" in line and "safetensors" in err
    assert not marker.exists(), "the pickle's code ran"
    assert snapshot(work) == before


def test_unreadable_config_is_bad_input(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(BadInputError, match="config.json"):
        hf.check_checkpoint(tmp_path)


def test_clean_folder_passes_the_check(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(BERT))
    (tmp_path / "model.safetensors").write_bytes(b"")
    (tmp_path / "training_args.bin").write_bytes(b"")  # a pickle beside safetensors is never read
    hf.check_checkpoint(tmp_path)


def test_transformers_is_always_told_not_to_trust_remote_code(tmp_path, monkeypatch):
    """Every from_pretrained call gets trust_remote_code=False (belt and braces behind check_checkpoint)."""
    transformers = pytest.importorskip("transformers")
    (tmp_path / "config.json").write_text(json.dumps(BERT))
    (tmp_path / "model.safetensors").write_bytes(b"")
    (tmp_path / "tokenizer_config.json").write_text("{}")  # a folder without tokenizer files never asks for one
    calls = []

    def record(result):
        def from_pretrained(*args, **kwargs):
            calls.append(kwargs)
            if result is None:
                raise OSError("stop here")
            return result
        return staticmethod(from_pretrained)

    tok = SimpleNamespace(pad_token="x", eos_token="x")
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", record(tok))
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", record(SimpleNamespace(architectures=[])))
    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", record(None))
    with pytest.raises(BadInputError, match="stop here"):
        hf.load_hf(tmp_path)
    hf.tokenizer_for(SimpleNamespace(name="v", source={"tokenizer": {"path": str(tmp_path), "gguf": None}}))
    assert len(calls) == 4
    assert all(kw.get("trust_remote_code") is False and kw.get("local_files_only") for kw in calls), calls
    assert calls[2].get("use_safetensors") is True


# ---------------------------------------------------------------- folders without (or with odd) tokenizers

def _save_tiny(folder: Path, model) -> Path:
    model.save_pretrained(str(folder))
    assert not any(folder.glob("tokenizer*"))
    return folder


def test_a_folder_without_tokenizer_files_loads_with_ids_from_its_vocabulary(tmp_path):
    """config.json + model.safetensors only: no more exit 1 in AutoTokenizer; the variant has no tokenizer."""
    transformers = pytest.importorskip("transformers")
    import torch

    torch.manual_seed(0)
    bert = transformers.BertModel(transformers.BertConfig(**{k: v for k, v in BERT.items() if k != "architectures"}))
    v = hf.load_hf(_save_tiny(tmp_path / "encoder", bert.eval()))
    assert v.task == "encoder" and "tokenizer" not in v.source
    assert [s.name for s in v.inputs] == ["input_ids", "attention_mask"] and v.inputs[0].shape == (2, 16)
    assert v.example["input_ids"].max() < 30 and v.outputs[0].shape == (2, 16, 8)
    with pytest.raises(BadInputError, match="encoder has no tokenizer") as info:
        hf.tokenizer_for(v)
    assert str(tmp_path / "encoder") in info.value.message


def test_a_decoder_takes_only_the_tokenizer_outputs_its_forward_accepts(tmp_path):
    """A tokenizer that also returns token_type_ids (as BERT's do) beside a decoder that has none."""
    transformers = pytest.importorskip("transformers")
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers

    from edgesmith.models.lm_generate import generation_record

    torch.manual_seed(0)
    config = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, vocab_size=97, max_position_embeddings=64, eos_token_id=2)
    folder = _save_tiny(tmp_path / "lm", transformers.LlamaForCausalLM(config).eval())
    words = ["<pad>", "<s>", "</s>", "<unk>", *sorted(set(" ".join(hf.EXAMPLE_TEXT).lower().split()))]
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=core, eos_token="</s>", pad_token="<pad>",
                                               model_input_names=["input_ids", "token_type_ids", "attention_mask"])
    tok.save_pretrained(str(folder))
    v = hf.load_hf(folder, seq_len=10)
    assert "token_type_ids" in tok(["a b"])  # the tokenizer does give it
    assert [s.name for s in v.inputs] == ["input_ids", "attention_mask"] and v.task == "lm"
    assert v.source["tokenizer"] == {"path": str(folder), "gguf": None}
    record = generation_record(v, tmp_path / "stage")
    assert record["tokenizer"] == "tokenizer/tokenizer.json" and record["eos_token_ids"] == [2]
    assert (record["layers"], record["kv_heads"], record["head_dim"]) == (2, 2, 8)
