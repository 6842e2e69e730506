"""Every MODEL reference form of ARCHITECTURE.md, loaded through :func:`edgesmith.api.load`."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from edgesmith import api as es
from edgesmith.bundle import sha256_file
from edgesmith.errors import BadInputError, UsageError
from edgesmith.models import save_pt2
from edgesmith.specs import TensorSpec


class TinyNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(6, 3)

    def forward(self, x):
        return self.fc(x).relu()


# ---------------------------------------------------------------- zoo

def test_zoo_digits_cnn():
    v = es.load("zoo:digits-cnn")
    assert v.name == "digits-cnn" and v.task == "classifier"
    assert v.inputs == [TensorSpec("image", (4, 1, 8, 8), "float32", {0: "batch"})]
    assert v.outputs[0].name == "logits" and v.outputs[0].shape == (4, 10)
    assert v.run()["logits"].shape == (4, 10)
    assert v.source["reference"] == "zoo:digits-cnn"


def test_unknown_zoo_name_is_a_usage_error():
    with pytest.raises(UsageError, match="nope"):
        es.load("zoo:nope")


# ---------------------------------------------------------------- .pt2

def test_plain_pt2_reads_specs_from_the_program(tmp_path):
    torch.manual_seed(0)
    net = TinyNet().eval()
    program = torch.export.export(net, (torch.randn(4, 6),), dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    path = tmp_path / "tiny_net.pt2"
    torch.export.save(program, str(path))

    v = es.load(str(path))
    assert v.name == "tiny-net" and v.task == "generic" and v.passes == []
    (spec,) = v.inputs
    assert spec.name == "x" and spec.dtype == "float32" and spec.shape[1] == 6
    assert spec.dynamic == {0: "batch"}
    assert v.source == {"reference": str(path), "format": "pt2", "sha256": sha256_file(path)}
    assert [o.name for o in v.outputs] == ["output"]
    x = np.random.default_rng(0).standard_normal((7, 6)).astype(np.float32)  # another batch size
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(v.run({"x": x})["output"], want, rtol=1e-6, atol=1e-6)


def test_save_pt2_round_trips_metadata(tmp_path):
    original = es.optimize(es.load("zoo:digits-cnn"), ["reparam"])
    path = save_pt2(original, tmp_path / "variant.pt2")
    with pytest.raises(BadInputError, match="already exists"):
        save_pt2(original, path)
    assert [p.name for p in tmp_path.iterdir()] == ["variant.pt2"]  # no temp files left behind

    v = es.load(str(path))
    assert v.name == original.name == "digits-cnn"
    assert v.task == "classifier"
    assert v.passes == original.passes and [p["name"] for p in v.passes] == ["reparam"]
    assert v.source == original.source
    assert v.inputs == original.inputs and v.outputs == original.outputs
    assert v.example.keys() == original.example.keys()
    for k in v.example:
        np.testing.assert_array_equal(v.example[k], original.example[k])
    np.testing.assert_allclose(v.run()["logits"], original.run()["logits"], rtol=1e-5, atol=1e-5)


def test_truncated_pt2_is_bad_input(tmp_path):
    path = save_pt2(es.load("zoo:digits-cnn"), tmp_path / "v.pt2")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(BadInputError, match="v.pt2"):
        es.load(str(path))


# ---------------------------------------------------------------- py:module:factory

@pytest.fixture
def factory(py_module) -> str:
    return py_module(
        "import torch\n\n"
        "class Net(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.conv = torch.nn.Conv2d(3, 4, 3)\n"
        "        self.head = torch.nn.Linear(4, 2)\n\n"
        "    def forward(self, x):\n"
        "        return self.head(self.conv(x).mean(dim=(2, 3)))\n\n"
        "def build():\n"
        "    torch.manual_seed(0)\n"
        "    return Net()\n\n"
        "def not_a_module():\n"
        "    return 42\n",
        prefix="es_loader_nets",
    )


def _trained_state(factory: str) -> dict[str, torch.Tensor]:
    """Weights unlike the factory's own initialisation, so loading them shows."""
    import importlib

    torch.manual_seed(123)
    net = importlib.import_module(factory).build()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_()
    return {k: v.clone() for k, v in net.state_dict().items()}


@pytest.mark.parametrize("form", ["safetensors", "state_dict", "nested_state_dict"])
def test_factory_with_weights(tmp_path, factory, form):
    import importlib

    from safetensors.torch import save_file

    state = _trained_state(factory)
    if form == "safetensors":
        path = tmp_path / "net.safetensors"
        save_file(state, str(path))
    elif form == "state_dict":
        path = tmp_path / "net.pt"
        torch.save(state, path)
    else:
        path = tmp_path / "ckpt.pth"
        torch.save({"state_dict": state, "epoch": 3, "lr": 0.1}, path)

    v = es.load(f"py:{factory}:build", weights=str(path), inputs=["x:2x3x8x8"])
    assert v.name == "build"
    assert v.inputs == [TensorSpec("x", (2, 3, 8, 8), "float32", {0: "batch"})]
    assert [o.name for o in v.outputs] == ["output"] and v.outputs[0].shape == (2, 2)
    assert v.source["sha256"] == sha256_file(path) and v.source["weights"] == str(path)

    reference = importlib.import_module(factory).Net()
    reference.load_state_dict(state)
    reference.eval()
    x = v.example["x"]
    with torch.no_grad():
        want = reference(torch.from_numpy(x)).numpy()
        unloaded = importlib.import_module(factory).build().eval()(torch.from_numpy(x)).numpy()
    got = v.run()["output"]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert not np.allclose(got, unloaded)  # the weights were really applied


def test_factory_with_wrong_shaped_weights(tmp_path, factory):
    state = _trained_state(factory)
    state["conv.weight"] = torch.zeros(4, 5, 3, 3)
    path = tmp_path / "wrong.pt"
    torch.save(state, path)
    with pytest.raises(BadInputError) as info:
        es.load(f"py:{factory}:build", weights=str(path), inputs=["x:1x3x8x8"])
    assert str(path) in info.value.message


def test_factory_with_missing_weights_file(tmp_path, factory):
    with pytest.raises(BadInputError, match="absent.pt"):
        es.load(f"py:{factory}:build", weights=str(tmp_path / "absent.pt"), inputs=["x:1x3x8x8"])


def test_factory_without_inputs_is_a_usage_error(factory):
    with pytest.raises(UsageError, match="--input"):
        es.load(f"py:{factory}:build")


def test_factory_rejected_input_shape(factory):
    with pytest.raises(BadInputError, match="x:1x5x8x8"):
        es.load(f"py:{factory}:build", inputs=["x:1x5x8x8"])


@pytest.mark.parametrize("ref,match", [
    ("py:es_no_such_module_here:build", "es_no_such_module_here"),
    ("py:{factory}:missing_factory", "missing_factory"),
    ("py:{factory}:not_a_module", "int"),
])
def test_factory_reference_errors(factory, ref, match):
    with pytest.raises(BadInputError, match=match):
        es.load(ref.format(factory=factory), inputs=["x:1x3x8x8"])


LM_FACTORY = """
import torch
from transformers import GPT2Config, GPT2LMHeadModel


def build():
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=97, n_positions=64))
"""


def test_factory_returning_a_causal_lm_loads_as_a_language_model(tmp_path, py_module):
    """No more "model returned DynamicCache": the transformers model is wrapped, its example is token ids."""
    import importlib

    from safetensors.torch import save_file

    pytest.importorskip("transformers")
    module = py_module(LM_FACTORY, prefix="es_loader_lm")
    v = es.load(f"py:{module}:build")
    assert v.task == "lm" and v.name == "build" and v.source["format"] == "py"
    assert [(s.name, s.shape, s.dynamic) for s in v.inputs] == [
        ("input_ids", (1, 16), {0: "batch", 1: "sequence"}), ("attention_mask", (1, 16), {0: "batch", 1: "sequence"})]
    assert v.outputs[0].name == "logits" and v.outputs[0].shape == (1, 16, 97)
    assert 0 <= v.example["input_ids"].min() and v.example["input_ids"].max() < 97 and "tokenizer" not in v.source

    sized = es.load(f"py:{module}:build", inputs=["input_ids:2x5:int64"])
    assert sized.inputs[0].shape == (2, 5) and sized.outputs[0].shape == (2, 5, 97)
    assert es.load(f"py:{module}:build", seq_len=7).inputs[0].shape == (1, 7)
    with pytest.raises(UsageError, match="pixel_values") as info:
        es.load(f"py:{module}:build", inputs=["pixel_values:1x3x8x8"])
    assert "input_ids" in info.value.hint

    torch.manual_seed(5)
    trained = importlib.import_module(module).build()
    with torch.no_grad():
        for p in trained.parameters():
            p.normal_()
    state = {k: t.clone().contiguous() for k, t in trained.state_dict().items()}  # tied head: its own copy
    save_file(state, str(tmp_path / "lm.safetensors"))
    loaded = es.load(f"py:{module}:build", weights=str(tmp_path / "lm.safetensors"))
    ids = torch.from_numpy(loaded.example["input_ids"])
    with torch.no_grad():
        want = trained.eval()(input_ids=ids).logits.numpy()
    np.testing.assert_allclose(loaded.run()["logits"], want, atol=1e-5, rtol=0)


def test_weights_only_apply_to_factories(tmp_path):
    with pytest.raises(UsageError, match="--weights"):
        es.load("zoo:digits-cnn", weights=str(tmp_path / "w.pt"))


# ---------------------------------------------------------------- ONNX

def test_onnx_file(tmp_path):
    import warnings

    torch.manual_seed(0)
    net = TinyNet().eval()
    path = tmp_path / "tiny.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.randn(2, 6),), str(path), input_names=["features"], output_names=["scores"],
                          dynamic_shapes={"x": {0: torch.export.Dim("batch")}}, verbose=False)

    v = es.load(str(path))
    assert v.module is None and v.onnx_path == path
    assert v.source["format"] == "onnx" and v.source["sha256"] == sha256_file(path)
    (spec,) = v.inputs
    assert spec.name == "features" and spec.dtype == "float32" and spec.shape[1] == 6 and 0 in spec.dynamic
    assert [o.name for o in v.outputs] == ["scores"]
    x = np.random.default_rng(0).standard_normal((5, 6)).astype(np.float32)
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(v.run({"features": x})["scores"], want, rtol=1e-5, atol=1e-5)


def test_garbage_onnx_is_bad_input(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_text("this is not a protobuf\n")
    with pytest.raises(BadInputError, match="model.onnx"):
        es.load(str(path))


# ---------------------------------------------------------------- paths that are not models

def test_missing_path(tmp_path):
    with pytest.raises(BadInputError, match="nothing-here"):
        es.load(str(tmp_path / "nothing-here.pt2"))


def test_directory_without_config(tmp_path):
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "model.safetensors").write_bytes(b"")
    with pytest.raises(BadInputError, match="config.json"):
        es.load(str(tmp_path / "ckpt"))


def test_unknown_suffix(tmp_path):
    path = tmp_path / "model.h5"
    path.write_bytes(b"\x89HDF")
    with pytest.raises(BadInputError, match=r"\.h5"):
        es.load(str(path))


# ---------------------------------------------------------------- Hugging Face checkpoints

def test_minilm_checkpoint_directory():
    transformers = pytest.importorskip("transformers")
    from edgesmith.models.hf import EXAMPLE_TEXT
    from edgesmith.models.offline import minilm_dir

    path = minilm_dir()
    v = es.load(str(path))
    assert v.task == "encoder"
    assert v.module is not None
    names = [s.name for s in v.inputs]
    assert set(names) == {"input_ids", "token_type_ids", "attention_mask"}
    for s in v.inputs:
        assert s.dtype == "int64" and v.example[s.name].dtype == np.int64
        assert s.dynamic == {0: "batch", 1: "sequence"}
        assert s.shape == v.example[s.name].shape and s.shape[0] == len(EXAMPLE_TEXT)

    tok = transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
    enc = tok(EXAMPLE_TEXT, return_tensors="np", padding=True)
    for n in names:
        np.testing.assert_array_equal(v.example[n], enc[n])

    (out,) = v.outputs
    config = transformers.AutoConfig.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
    assert out.name == "last_hidden_state"
    assert out.shape == (*v.inputs[0].shape, config.hidden_size)
    assert out.dynamic == {0: "batch", 1: "sequence"}
    assert v.source["format"] == "hf" and v.source["sha256"]

    # another batch size and sequence length runs too
    enc = tok(["short"], return_tensors="np")
    got = v.run({n: enc[n].astype(np.int64) for n in names})["last_hidden_state"]
    assert got.shape == (1, enc["input_ids"].shape[1], config.hidden_size)


def test_smollm2_gguf(tmp_path):
    """``--gguf FILE`` in a directory (the folder holds no tokenizer files: the GGUF's own are used)."""
    pytest.importorskip("transformers")
    pytest.importorskip("gguf")
    from edgesmith.models.lm_generate import generation_record
    from edgesmith.models.offline import smollm2_gguf

    path = smollm2_gguf()
    v = es.load(str(path.parent), gguf=path.name, seq_len=16)
    assert v.task == "lm"
    assert v.name.startswith("smollm2-135m")
    assert v.source["format"] == "gguf"
    assert [s.name for s in v.inputs] == ["input_ids", "attention_mask"]
    for s in v.inputs:
        assert s.shape == (1, 16) and s.dtype == "int64" and s.dynamic == {0: "batch", 1: "sequence"}
    vocab = v.module.model.config.vocab_size
    (out,) = v.outputs
    assert out.name == "logits" and out.shape == (1, 16, vocab)
    logits = v.run()["logits"]
    assert logits.shape[-1] == vocab and np.isfinite(logits).all()
    assert v.source["tokenizer"] == {"path": str(path.parent), "gguf": path.name}
    # the generation bundle's tokenizer, chat template and end of sequence come from the GGUF
    record = generation_record(v, tmp_path)
    assert record["tokenizer"] == "tokenizer/tokenizer.json" and (tmp_path / record["tokenizer"]).is_file()
    assert "<|im_start|>" in record["chat_template"] and record["special_tokens"]["eos"] == "<|im_end|>"
    assert record["eos_token_ids"] == [2] and (record["layers"], record["kv_heads"], record["head_dim"]) == (30, 3, 64)
