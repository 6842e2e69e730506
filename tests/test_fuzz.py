"""Property-based fuzzing of what users hand edgesmith: manifests, recipes, device files and ``--inputs``.

The property is the contract of ARCHITECTURE.md: whatever the file holds (truncated, wrong types,
huge dimensions, unicode names, random bytes), edgesmith either accepts it or refuses it with a
typed error (exit 2 or 3, a message) and never with a traceback (exit 1). The examples are
derandomized, so CI runs the same ones every time, and few enough to take seconds.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edgesmith.arrays import load_arrays
from edgesmith.bundle import GOLDEN, MANIFEST, Bundle, Manifest, finalize_manifest, save_golden
from edgesmith.errors import BadInputError, EdgesmithError
from edgesmith.runtimes.base import Runtime
from edgesmith.specs import TensorSpec

# EDGESMITH_FUZZ_EXAMPLES=2000 (and EDGESMITH_FUZZ_RANDOM=1) for a longer hunt than CI's
FUZZ = settings(max_examples=int(os.environ.get("EDGESMITH_FUZZ_EXAMPLES", "60")), deadline=None,
                derandomize=not os.environ.get("EDGESMITH_FUZZ_RANDOM"), database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
DELETE = object()

# ---------------------------------------------------------------- strategies

scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True)
           | st.text(max_size=12) | st.sampled_from(["", "..", "../x", "/etc/passwd", "float32", "int64", "é¢", "\0"])
           | st.sampled_from([10**400, -(10**400), 0, -1, float("nan"), float("inf"), 2**63]))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=10)


def _paths(value, prefix=()) -> list[tuple]:
    """Every key path into a nested dict/list (the places a mutation may hit)."""
    out = [prefix] if prefix else []
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*prefix, i))
    return out


def _mutate(base: dict, edits) -> dict:
    """Apply ``(path, value)`` edits (``DELETE`` removes) to a deep copy of ``base``."""
    data = copy.deepcopy(base)
    for path, value in edits:
        parent = data
        try:
            for k in path[:-1]:
                parent = parent[k]
            if value is DELETE:
                del parent[path[-1]]
            else:
                parent[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            continue  # an earlier edit replaced the container
    return data


def mutations(base: dict):
    """Up to three edits of ``base``: a known key path set to any JSON value, or deleted; or a new key."""
    known = _paths(base)
    edit = st.tuples(st.sampled_from(known), json_values | st.just(DELETE))
    new_key = st.tuples(st.text(min_size=1, max_size=8).map(lambda k: (k,)), json_values)
    return st.lists(edit | new_key, min_size=1, max_size=3).map(lambda edits: _mutate(base, edits))


def damaged(text: str):
    """The text cut short, random bytes, or invalid UTF-8."""
    return (st.integers(0, max(len(text) - 1, 0)).map(lambda n: text[:n].encode())
            | st.binary(max_size=64) | st.just(b"\xff\xfe" + text.encode()[:40]))


def _expect_typed(fn, *args):
    """Call ``fn``; a raised error must be an edgesmith error with exit code 2 or 3."""
    try:
        return fn(*args)
    except EdgesmithError as exc:
        assert exc.exit_code in (2, 3), exc
        assert str(exc).strip()
        return None


# ---------------------------------------------------------------- manifest

class _Echo(Runtime):
    """A runtime that loads nothing and returns its (checked) inputs: Runtime.prepare under test."""

    name = "echo"

    def _load_impl(self) -> None:
        pass

    def _run_impl(self, feeds):
        return feeds


@pytest.fixture(scope="module")
def base_bundle(tmp_path_factory) -> Path:
    """A small valid bundle (no runtime needed to open it)."""
    stage = tmp_path_factory.mktemp("fuzz") / "tiny.onnx"
    stage.mkdir()
    (stage / "model.onnx").write_bytes(b"model bytes")
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    save_golden(stage / GOLDEN, {"x": x}, {"y": x * 2})
    manifest = Manifest(name="tiny", target="onnx", runtime="onnxruntime", model_file="model.onnx",
                        precision="fp32", inputs=[TensorSpec("x", (2, 3), "float32", {0: "batch"})],
                        outputs=[TensorSpec("y", (2, 3), "float32", {0: "batch"})], task="classifier",
                        source={"reference": "test", "sha256": ""}, passes=[{"name": "reparam", "params": {}}])
    finalize_manifest(stage, manifest)
    Bundle.open(stage)  # the base is valid
    return stage


def _open_and_use(path: Path) -> None:
    """Open a bundle and use every part of it a command would (specs, files, golden, inputs)."""
    bundle = _expect_typed(Bundle.open, path)
    if bundle is None:
        return
    m = bundle.manifest
    for spec in [*m.inputs, *m.outputs]:
        assert isinstance(spec.describe(), str)
    for rel in m.files:
        _expect_typed(bundle.file, rel)
    bundle.size_bytes()
    golden = _expect_typed(bundle.golden)
    if golden is not None:
        runtime = _Echo(bundle)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _expect_typed(runtime.run, golden[0])


def _with_manifest(base: Path, content: bytes):
    tmp = tempfile.TemporaryDirectory()
    path = Path(tmp.name) / base.name
    shutil.copytree(base, path)
    (path / MANIFEST).write_bytes(content)
    return tmp, path


@FUZZ
@given(data=st.data())
def test_fuzz_manifest_fields(base_bundle, data):
    base = json.loads((base_bundle / MANIFEST).read_text())
    manifest = data.draw(mutations(base))
    tmp, path = _with_manifest(base_bundle, json.dumps(manifest).encode())
    with tmp:
        _open_and_use(path)


@FUZZ
@given(data=st.data())
def test_fuzz_manifest_damaged(base_bundle, data):
    any_json = json_values.map(lambda v: json.dumps(v).encode())
    content = data.draw(damaged((base_bundle / MANIFEST).read_text()) | any_json)
    tmp, path = _with_manifest(base_bundle, content)
    with tmp:
        _open_and_use(path)


def test_huge_and_unicode_manifest_values_are_handled(base_bundle):
    """The cases the fuzzer found, kept as plain examples."""
    base = json.loads((base_bundle / MANIFEST).read_text())
    for path, value in [(("inputs", 0, "shape"), [2**62, 3]), (("inputs", 0, "name"), "入力 ☃"),
                        (("inputs", 0, "dynamic_axes"), {"²": "batch"}), (("inputs", 0, "dtype"), "float99"),
                        (("inputs", 0, "dtype"), "U8"), (("files",), {"golden.npz": "x"}),
                        (("model_file",), "."), (("runtime",), 7)]:
        tmp, bundle = _with_manifest(base_bundle, json.dumps(_mutate(base, [(path, value)])).encode())
        with tmp:
            _open_and_use(bundle)


# ---------------------------------------------------------------- recipe

_RECIPE = {"model": "zoo:digits-cnn", "name": "digits", "variants": [{"name": "a", "passes": []},
                                                                    {"name": "b", "passes": ["reparam"]}],
           "targets": ["onnx", "torch"], "target_options": {"onnx": {"opset": 18}},
           "devices": ["host", "raspberry-pi-5"],
           "profile": {"runs": 5, "warmup": 1, "threads": 0, "layers": True}, "inputs": ["image:1x1x8x8"],
           "seq_len": 16, "report": False, "out": "out", "device_files": [], "data": "d.npz", "weights": "w.pt",
           "gguf": "m.gguf"}


def _load_recipe_text(content: bytes) -> None:
    from edgesmith.pipeline.recipe import load_recipe

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "recipe.yaml"
        path.write_bytes(content)
        _expect_typed(load_recipe, path)


# ---------------------------------------------------------------- device file

_DEVICE = yaml.safe_load((Path(__file__).parents[1] / "edgesmith/devices/catalog/jetson-orin-nano.yaml").read_text())


def _load_device_text(content: bytes) -> None:
    from edgesmith.devices.catalog import load_device_file

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "device.yaml"
        path.write_bytes(content)
        device = _expect_typed(load_device_file, path)
    if device is not None:
        json.dumps(device.to_dict())
        assert all(math.isfinite(v) and v > 0 for v in device.peak_tflops.values())
        for v in (device.memory_bandwidth_gbs, device.memory_gb, device.power_w):
            assert v is None or (math.isfinite(v) and v > 0)


# a recipe and a device file: YAML documents fuzzed the same two ways
_YAML_FILES = {"recipe": (_RECIPE, _load_recipe_text), "device_file": (_DEVICE, _load_device_text)}


@pytest.mark.parametrize("kind", sorted(_YAML_FILES))
@FUZZ
@given(data=st.data())
def test_fuzz_yaml_file(kind, data):
    original, load = _YAML_FILES[kind]
    load(yaml.safe_dump(data.draw(mutations(original)), allow_unicode=True).encode())


@pytest.mark.parametrize("kind", sorted(_YAML_FILES))
@FUZZ
@given(data=st.data())
def test_fuzz_yaml_file_damaged(kind, data):
    original, load = _YAML_FILES[kind]
    load(data.draw(damaged(yaml.safe_dump(original)) | st.text(max_size=80).map(str.encode)))


# ---------------------------------------------------------------- --inputs

_DTYPES = ["float32", "float64", "float16", "int64", "int32", "int8", "uint8", "uint64", "bool", "complex64",
           "complex128", "<U3", "|S3", "M8[s]", "m8[s]"]
arrays = hnp.arrays(dtype=st.sampled_from(_DTYPES).map(np.dtype),
                    shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=4))
feeds = st.dictionaries(st.sampled_from(["x", "ids"]) | st.text(min_size=1, max_size=6), arrays, max_size=3)


def _bundle_taking(specs: list[TensorSpec]) -> Bundle:
    m = Manifest(name="t", target="onnx", runtime="onnxruntime", model_file="model.onnx", precision="fp32",
                 inputs=specs, outputs=[])
    return Bundle(Path("t.onnx"), m)


_SPECS = [TensorSpec("x", (2, 3), "float32", {0: "batch"}), TensorSpec("ids", (1, 2**40), "int32", {1: "seq"})]


def _feed_file(content: bytes) -> None:
    runtime = _Echo(_bundle_taking(_SPECS))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "inputs.npz"
        path.write_bytes(content)
        given_arrays = _expect_typed(load_arrays, path, "inputs")
    if given_arrays is None:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        checked = _expect_typed(runtime.prepare, given_arrays)
    if checked is not None:  # accepted: every value survived the cast
        for spec in _SPECS:
            got, src = checked[spec.name], given_arrays[spec.name]
            assert got.dtype == np.dtype(spec.dtype)
            with np.errstate(all="ignore"):
                assert np.array_equal(np.isfinite(got), np.isfinite(src)) or src.dtype.kind in "iub"
            if src.dtype.kind in "iub" and np.dtype(spec.dtype).kind in "iu":
                assert np.array_equal(got, src)


def _npz_bytes(arrays_: dict) -> bytes | None:
    import io

    buf = io.BytesIO()
    try:
        np.savez(buf, **arrays_)
    except (ValueError, TypeError):
        return None  # a name numpy itself cannot write
    return buf.getvalue()


@FUZZ
@given(given_feeds=feeds)
def test_fuzz_inputs_npz(given_feeds):
    content = _npz_bytes(given_feeds)
    if content is not None:
        _feed_file(content)


@FUZZ
@given(data=st.data())
def test_fuzz_inputs_damaged(data):
    content = _npz_bytes({"x": np.zeros((2, 3), np.float32), "ids": np.zeros((1, 4), np.int32)})
    cut = data.draw(st.integers(0, len(content)))
    flip = data.draw(st.integers(0, len(content) - 1))
    choice = data.draw(st.sampled_from(["cut", "flip", "random"]))
    if choice == "cut":
        content = content[:cut]
    elif choice == "flip":
        content = content[:flip] + bytes([content[flip] ^ 0xFF]) + content[flip + 1:]
    else:
        content = data.draw(st.binary(max_size=256))
    _feed_file(content)


def test_npz_claiming_a_huge_array_is_refused_before_allocating(tmp_path):
    """A few bytes whose header claims 2**40 floats: refused from the header, nothing allocated."""
    import zipfile

    header = {"descr": "<f8", "fortran_order": False, "shape": (2**40,)}
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    with zipfile.ZipFile(tmp_path / "x.npz", "w") as z:
        z.writestr("x.npy", buf.getvalue() + b"\0" * 16)
    with pytest.raises(BadInputError, match="claims shape"):
        load_arrays(tmp_path / "x.npz", "inputs")


# ---------------------------------------------------------------- through the CLI

@pytest.fixture(scope="module")
def onnx_bundle(tmp_path_factory) -> Path:
    from edgesmith import api as es

    bundle, _ = es.export(es.load("zoo:digits-cnn"), tmp_path_factory.mktemp("fuzz-cli"), target="onnx")
    return bundle.path


@settings(FUZZ, max_examples=max(FUZZ.max_examples // 4, 1))
@given(given_feeds=st.dictionaries(st.just("image") | st.text(min_size=1, max_size=4),
                                   hnp.arrays(dtype=st.sampled_from(_DTYPES[:11]).map(np.dtype),
                                              shape=st.sampled_from([(1, 1, 8, 8), (3, 1, 8, 8), (1, 8, 8),
                                                                     (0, 1, 8, 8), (2, 1, 8, 9)])),
                                   min_size=1, max_size=2))
def test_fuzz_run_command_inputs(onnx_bundle, capsys, given_feeds):
    from edgesmith.cli import main

    content = _npz_bytes(given_feeds)
    if content is None:
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "in.npz"
        path.write_bytes(content)
        capsys.readouterr()
        code = main(["run", str(onnx_bundle), "--inputs", str(path), "--json"])
        err = capsys.readouterr().err
        assert code in (0, 3), err
        assert "Traceback" not in err
        assert list(Path(tmp).iterdir()) == [path]


# ---------------------------------------------------------------- what the fuzzing found, kept as examples

@pytest.mark.parametrize("text,named", [
    ("?", "None"),                                                  # a key that is not a name (YAML null)
    ("peak_tflops: {fp16: .nan}", "peak_tflops.fp16"),              # nan passed as positive
    ("memory_gb: .inf", "memory_gb"),
    (f"power_w: {10**400}", "power_w"),                              # float() overflowed
], ids=["null-key", "nan", "inf", "huge"])
def test_found_device_file_cases(tmp_path, text, named):
    from edgesmith.devices.catalog import load_device_file

    data = yaml.safe_load(text) if text != "?" else None
    body = dict(_DEVICE)
    if isinstance(data, dict):
        for k, v in data.items():
            body[k] = {**body[k], **v} if isinstance(v, dict) else v
        content = yaml.safe_dump(body)
    else:
        content = yaml.safe_dump(body) + "? \n"
    (tmp_path / "d.yaml").write_text(content)
    with pytest.raises(BadInputError, match=named.replace(".", r"\.")):
        load_device_file(tmp_path / "d.yaml")


def test_found_recipe_that_is_not_utf8(tmp_path):
    from edgesmith.pipeline.recipe import load_recipe

    (tmp_path / "r.yaml").write_bytes(b"model: zoo:digits-cnn\n# \x80\xff\n")
    with pytest.raises(BadInputError, match="UTF-8"):
        load_recipe(tmp_path / "r.yaml")


@pytest.mark.parametrize("name", ["../../escaped", "a/b", "", "x\ny"])
def test_found_bundle_name_that_leaves_out(tmp_path, name):
    from edgesmith.pipeline.recipe import load_recipe

    (tmp_path / "r.yaml").write_text(yaml.safe_dump({"model": "zoo:digits-cnn",
                                                     "variants": [{"name": name, "passes": []}]}))
    with pytest.raises(BadInputError, match="plain folder name"):
        load_recipe(tmp_path / "r.yaml")
    assert list(tmp_path.iterdir()) == [tmp_path / "r.yaml"]


def test_found_npz_with_an_odd_zip_version(tmp_path):
    content = bytearray(_npz_bytes({"x": np.zeros(3, np.float32)}))
    central = content.rfind(b"PK\x01\x02")
    content[central + 6] = 210  # "version needed to extract": 21.0
    (tmp_path / "x.npz").write_bytes(bytes(content))
    with pytest.raises(BadInputError, match="x.npz"):
        load_arrays(tmp_path / "x.npz", "inputs")
