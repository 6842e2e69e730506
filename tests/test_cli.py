"""The command line end to end: happy paths, the demo, and every bad input with its exit code.

Commands run in-process through :func:`edgesmith.cli.main` (which returns the exit
code); a few run as real processes where the process exit status matters.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgesmith import api as es
from edgesmith.bundle import Bundle
from edgesmith.cli import main
from testkit import ENV, PickleBomb, assert_one_error, cli, snapshot

# ---------------------------------------------------------------- helpers

@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, Path]:
    """zoo:digits-cnn with reparam, exported once to onnx and torch."""
    out = tmp_path_factory.mktemp("cli-export") / "out"
    code = main(["export", "zoo:digits-cnn", "-p", "reparam", "--target", "onnx", "--target", "torch",
                 "-o", str(out)])
    assert code == 0
    return {"out": out, "onnx": out / "digits-cnn.onnx", "torch": out / "digits-cnn.torch"}


@pytest.fixture(scope="module")
def optimized_pt2(tmp_path_factory) -> Path:
    """A .pt2 written by ``edgesmith optimize`` (carries the edgesmith metadata)."""
    path = tmp_path_factory.mktemp("cli-optimize") / "v.pt2"
    assert main(["optimize", "zoo:digits-cnn", "-p", "reparam", "-o", str(path)]) == 0
    return path


@pytest.fixture
def factory(py_module) -> str:
    """A py: factory module (unique name) on sys.path; returns the module name."""
    return py_module(
        "import torch\n\n"
        "def conv3():\n"
        "    torch.manual_seed(0)\n"
        "    return torch.nn.Conv2d(3, 4, 3)\n",
        prefix="es_nets",
    )


# ---------------------------------------------------------------- happy path

def test_export_writes_both_bundles(exported):
    for target in ("onnx", "torch"):
        b = Bundle.open(exported[target])
        assert b.manifest.target == target
        assert b.manifest.parity["passed"] is True
        assert [p["name"] for p in b.manifest.passes] == ["reparam"]
        assert (exported[target] / "golden.npz").is_file()
    assert sorted(p.name for p in exported["out"].iterdir()) == ["digits-cnn.onnx", "digits-cnn.torch"]


@pytest.mark.parametrize("engine", [None, {"tensorrt": "10.1", "gpu": "NVIDIA H100", "precision": "fp16",
                                           "build_s": 12.34}], ids=["structural", "engine built"])
def test_export_prints_what_the_exporter_describes(capsys, engine):
    """An exporter's describe() blocks (lines, markup, tables) are what export prints above the parity table."""
    from types import SimpleNamespace

    from edgesmith.cli.common import Column, DataTable
    from edgesmith.cli.export import _print_blocks
    from edgesmith.export import EXPORTERS

    info = {"support": {"tensorrt": "10.1", "nodes": 3, "op_counts": {"Relu": 1, "Conv": 2}},
            "trtexec": "trtexec --onnx=model.onnx", "engine": engine}
    manifest = SimpleNamespace(details={"tensorrt": info}, generation=None)
    bundle = SimpleNamespace(path=Path("out") / "m.tensorrt", manifest=manifest)
    _print_blocks(EXPORTERS.get("tensorrt").describe(bundle, SimpleNamespace(checks=["3 nodes", "static shapes"])))
    first = "TensorRT 10.1 support check: 3 nodes, all supported (Conv 2, Relu 1)\n"
    if engine:
        assert capsys.readouterr().out == first + "engine built: TensorRT 10.1 on NVIDIA H100, fp16, 12.3 s\n"
    else:
        assert capsys.readouterr().out == (
            first + "structural: 3 nodes; static shapes. To finish on the target machine:\n"
            f"  edgesmith build-engine {Path('out') / 'm.tensorrt'}\n  (or, with TensorRT alone: trtexec --onnx=model.onnx)\n")
    assert EXPORTERS.get("onnx").describe(bundle, None) == []  # a target with nothing to add prints nothing
    _print_blocks([{"title": "t", "columns": [{"name": "layer", "key": True}, "kind"], "rows": [["a", "b"]]}])
    table = DataTable(Column("layer", key=True), "kind", title="t")
    table.add_row("a", "b")
    assert capsys.readouterr().out == table.render("table", 80)


def test_verify_both_bundles(capsys, exported):
    code, out, err = cli(capsys, "verify", exported["onnx"], exported["torch"])
    assert code == 0, err
    assert "PASS" in out and "verified" in out
    code, out, _ = cli(capsys, "verify", exported["onnx"], exported["torch"], "--json")
    assert code == 0
    doc = json.loads(out)
    assert len(doc) == 2
    assert all(r["passed"] and r["tier"] == "verified" for r in doc.values())


def test_run_saves_outputs_equal_to_api(capsys, exported, tmp_path):
    images = np.random.default_rng(1).random((3, 1, 8, 8), dtype=np.float32)  # batch 3: dynamic axis
    np.savez(tmp_path / "x.npz", image=images)
    for target in ("onnx", "torch"):
        y = tmp_path / f"y-{target}.npz"
        code, out, err = cli(capsys, "run", exported[target], "--inputs", tmp_path / "x.npz", "-o", y)
        assert code == 0, err
        assert y.is_file()
        with np.load(y) as z:
            got = {k: z[k] for k in z.files}
        want = es.run(exported[target], {"image": images})
        assert got.keys() == want.keys() == {"logits"}
        assert got["logits"].shape == (3, 10)
        np.testing.assert_array_equal(got["logits"], want["logits"])
    code, out, _ = cli(capsys, "run", exported["onnx"], "--inputs", tmp_path / "x.npz", "--json")
    assert code == 0
    assert json.loads(out)["logits"]["shape"] == [3, 10]


def test_profile_and_report(capsys, exported, tmp_path):
    from edgesmith.profiles.profile import read_profile_document

    prof = tmp_path / "prof.json"
    code, out, err = cli(capsys, "profile", exported["onnx"], exported["torch"], "--runs", "20", "-o", prof)
    assert code == 0, err
    doc = read_profile_document(prof)
    assert doc["kind"] == "edgesmith.profile"
    assert [(e["name"], e["target"]) for e in doc["entries"]] == [("digits-cnn", "onnx"), ("digits-cnn", "torch")]
    for e in doc["entries"]:
        assert e["mode"] == "measured" and e["runs"] == 20 and len(e["samples_ms"]) == 20
        assert e["latency_ms"]["p50"] > 0

    html = tmp_path / "rep.html"
    code, out, err = cli(capsys, "report", prof, "-o", html)
    assert code == 0, err
    md = tmp_path / "rep.md"
    assert html.is_file() and md.is_file()
    text = html.read_text()
    assert text.lstrip().lower().startswith("<!doctype html") and "digits-cnn" in text
    assert "digits-cnn" in md.read_text()


def test_inspect_json(capsys):
    from edgesmith.models.zoo import digits_cnn

    code, out, err = cli(capsys, "inspect", "zoo:digits-cnn", "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["params"] == sum(p.numel() for p in digits_cnn.build(pretrained=True).parameters())
    assert 20_000 < info["params"] < 40_000
    assert info["flops"] > 0
    assert info["ops"].get("conv2d", 0) > 0
    assert info["task"] == "classifier"
    assert [s["name"] for s in info["inputs"]] == ["image"]


def test_optimize_then_export_keeps_passes(capsys, optimized_pt2, tmp_path):
    out = tmp_path / "out"
    code, _, err = cli(capsys, "export", optimized_pt2, "--target", "onnx", "-o", out, "--json")
    assert code == 0, err
    (bundle,) = [p for p in out.iterdir()]
    m = Bundle.open(bundle).manifest
    assert [p["name"] for p in m.passes] == ["reparam"]
    assert m.passes[0]["report"]["folded"] > 0
    assert m.source["reference"] == "zoo:digits-cnn"
    assert m.parity["passed"] and m.parity["tier"] == "verified"


def test_optimize_refuses_existing_output(capsys, optimized_pt2, tmp_path):
    dest = tmp_path / "v.pt2"
    shutil.copy(optimized_pt2, dest)
    before = dest.read_bytes()
    code, _, err = cli(capsys, "optimize", "zoo:digits-cnn", "-p", "reparam", "-o", dest)
    assert code == 3
    assert_one_error(err, str(dest))
    assert dest.read_bytes() == before


@pytest.mark.parametrize("spec,code,named", [
    ("rsparse:sparsity=1", 2, "sparsity=1.0 is outside [0, 1)"),
    ("deltallm:window=0", 2, "window=0"),
    ("deltallm", 3, "digits-mlp is not a language model"),
])
def test_optimize_with_bad_sparsity_input_writes_nothing(capsys, tmp_path, spec, code, named):
    got, _, err = cli(capsys, "optimize", "zoo:digits-mlp", "-p", spec, "-o", tmp_path / "out" / "v.pt2")
    assert got == code
    assert_one_error(err, named)
    assert snapshot(tmp_path) == {}


@pytest.mark.parametrize("group,expected", [
    ("models", {"zoo:digits-cnn"}),
    ("passes", {"reparam"}),
    ("targets", {"onnx", "torch"}),
])
def test_list_commands_json(capsys, group, expected):
    code, out, err = cli(capsys, group, "list", "--json")
    assert code == 0, err
    rows = json.loads(out)
    assert expected <= {r["name"] for r in rows}
    code, out, _ = cli(capsys, group, "list")
    assert code == 0
    for name in expected:
        assert name in out


COMMANDS = [
    [], ["demo"], ["models"], ["models", "list"], ["passes"], ["passes", "list"], ["targets"],
    ["targets", "list"], ["inspect"], ["optimize"], ["export"], ["verify"], ["run"], ["profile"], ["report"],
    ["devices"], ["devices", "list"], ["devices", "show"], ["devices", "calibrate"], ["sweep"], ["view"],
    ["dolphin"], ["dolphin", "train"], ["dolphin", "ask"], ["dolphin", "eval"], ["dolphin", "export"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "edgesmith")
def test_help(capsys, command):
    code, out, _ = cli(capsys, *command, "--help")
    assert code == 0
    assert "Usage:" in out
    assert ("Quick start" in out) if not command else ("Example" in out)


def test_help_and_version_in_a_real_process():
    r = subprocess.run([sys.executable, "-m", "edgesmith.cli", "--help"], capture_output=True, text=True, env=ENV)
    assert r.returncode == 0 and "edgesmith export" in r.stdout
    r = subprocess.run([sys.executable, "-m", "edgesmith.cli", "--version"], capture_output=True, text=True, env=ENV)
    assert r.returncode == 0 and "version" in r.stdout


HEAVY = ("torch", "transformers", "coremltools", "mlx", "hls4ml", "onnx", "onnxscript")


@pytest.mark.parametrize("argv", [None, ["--help"], ["export", "--help"]],
                         ids=["import", "edgesmith --help", "edgesmith export --help"])
def test_the_command_line_imports_no_heavy_library(argv):
    """Importing the CLI, and its help (export's flags come from the exporters' options), stays light."""
    run = "" if argv is None else f"rc = main({argv!r}); assert rc == 0, rc\n"
    code = ("import contextlib, io, sys\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    from edgesmith.cli import main\n"
            + "".join(f"    {line}\n" for line in run.splitlines())
            + f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]", r.stdout[-2000:]


# ---------------------------------------------------------------- demo

def test_demo_runs_and_reruns(capsys, tmp_path):
    out = tmp_path / "demo"
    code, _, err = cli(capsys, "demo", "-o", out, "--runs", "20")
    assert code == 0, err
    assert (out / "report.html").is_file() and (out / "report.md").is_file()
    assert (out / "digits-cnn.onnx" / "manifest.json").is_file()
    assert (out / "digits-cnn-reparam.onnx" / "manifest.json").is_file()
    code, stdout, err = cli(capsys, "demo", "-o", out, "--runs", "20", "--json")
    assert code == 0, err
    doc = json.loads(stdout)
    assert len(doc["bundles"]) == 4
    profile = json.loads((out / "profile.json").read_text())
    devices = {e["device"]: e["mode"] for e in profile["entries"]}
    assert devices.pop("host") == "measured" and len(devices) >= 3 and set(devices.values()) == {"predicted"}
    assert all(p["passed"] and p["tier"] == "verified" for p in doc["parity"].values())
    assert any(str(p).endswith("report.html") for p in doc["report"])


def test_demo_refuses_foreign_directory(capsys, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    before = snapshot(tmp_path)
    code, _, err = cli(capsys, "demo", "-o", out, "--runs", "5")
    assert code == 3
    assert_one_error(err, str(out))
    assert snapshot(tmp_path) == before


# ---------------------------------------------------------------- bad inputs (exit 3)

def test_nonexistent_model(capsys, work):
    code, _, err = cli(capsys, "export", "missing/model.pt2", "-o", "out")
    assert code == 3
    assert_one_error(err, "missing/model.pt2")
    assert snapshot(work) == {}


def test_nonexistent_model_in_a_real_process(tmp_path):
    r = subprocess.run([sys.executable, "-m", "edgesmith.cli", "inspect", "nowhere.pt2"],
                       capture_output=True, text=True, env=ENV, cwd=tmp_path)
    assert r.returncode == 3
    assert r.stdout == ""
    assert_one_error(r.stderr, "nowhere.pt2")
    assert list(tmp_path.iterdir()) == []


def test_truncated_pt2(capsys, work, optimized_pt2):
    data = optimized_pt2.read_bytes()
    (work / "half.pt2").write_bytes(data[: len(data) // 2])
    before = snapshot(work)
    for command in (["export", "half.pt2", "-o", "out"], ["inspect", "half.pt2"]):
        code, _, err = cli(capsys, *command)
        assert code == 3
        assert_one_error(err, "half.pt2")
    # a real process: torch's own logging must not dump a traceback before the error
    r = subprocess.run([sys.executable, "-m", "edgesmith.cli", "inspect", "half.pt2"],
                       capture_output=True, text=True, env=ENV, cwd=work)
    assert r.returncode == 3
    assert_one_error(r.stderr, "half.pt2")
    assert snapshot(work) == before


@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
def test_weights_that_would_run_code_are_refused(capsys, tmp_path, work, factory, writer):
    import torch

    # the payload is live: plain unpickling runs it
    control = tmp_path / "CONTROL"
    pickle.loads(pickle.dumps(PickleBomb(control)))
    assert control.exists()

    sentinel = tmp_path / "SENTINEL"
    evil = work / "evil.pt"
    if writer == "torch.save":
        torch.save({"weight": PickleBomb(sentinel), "bias": torch.zeros(4)}, evil)
    else:
        evil.write_bytes(pickle.dumps({"weight": PickleBomb(sentinel)}))
    before = snapshot(work)
    code, _, err = cli(capsys, "export", f"py:{factory}:conv3", "--weights", "evil.pt",
                       "--input", "x:1x3x8x8", "-o", "out")
    assert code == 3
    line = assert_one_error(err, "evil.pt")
    assert "refused" in line
    assert not sentinel.exists(), "the pickle's code ran"
    assert snapshot(work) == before


def test_garbage_onnx(capsys, work):
    (work / "model.onnx").write_bytes(os.urandom(64) + b"not an onnx model\n")
    before = snapshot(work)
    for command in (["inspect", "model.onnx"], ["export", "model.onnx", "-o", "out"],
                    ["profile", "model.onnx", "-o", "prof.json"]):
        code, _, err = cli(capsys, *command)
        assert code == 3, command
        assert_one_error(err, "model.onnx")
    assert snapshot(work) == before


def test_text_file_named_onnx(capsys, work):
    (work / "model.onnx").write_text("hello, I am a text file\n")
    code, _, err = cli(capsys, "inspect", "model.onnx")
    assert code == 3
    assert_one_error(err, "model.onnx")


def test_input_shape_the_model_rejects(capsys, work, factory):
    code, _, err = cli(capsys, "export", f"py:{factory}:conv3", "--input", "x:1x5x8x8", "-o", "out")
    assert code == 3
    assert_one_error(err, "x:1x5x8x8")
    assert snapshot(work) == {}


def test_input_shape_accepted_by_factory(capsys, tmp_path, factory):
    code, out, err = cli(capsys, "inspect", f"py:{factory}:conv3", "--input", "x:1x3x8x8", "--json")
    assert code == 0, err
    assert json.loads(out)["params"] == 4 * 3 * 3 * 3 + 4


def test_existing_bundle_needs_force(capsys, exported, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(exported["onnx"], out / "digits-cnn.onnx")
    before = snapshot(tmp_path)
    code, _, err = cli(capsys, "export", "zoo:digits-cnn", "-p", "reparam", "--target", "onnx", "-o", out)
    assert code == 3
    assert_one_error(err, "digits-cnn.onnx")
    assert "--force" in err  # the hint says what to do
    assert snapshot(tmp_path) == before

    code, _, err = cli(capsys, "export", "zoo:digits-cnn", "--target", "onnx", "-o", out, "--force")
    assert code == 0, err
    assert Bundle.open(out / "digits-cnn.onnx").manifest.passes == []  # rewritten: no reparam now
    assert sorted(p.name for p in out.iterdir()) == ["digits-cnn.onnx"]  # no staging leftovers


def test_modified_bundle_is_refused(capsys, exported, tmp_path):
    bundle = tmp_path / "b"
    shutil.copytree(exported["onnx"], bundle)
    with open(bundle / "model.onnx", "ab") as f:
        f.write(b"\0tampered")
    before = snapshot(tmp_path)
    code, _, err = cli(capsys, "verify", bundle)
    assert code == 3
    line = assert_one_error(err, "model.onnx")
    assert "modified" in line
    for command in (["run", bundle, "-o", tmp_path / "y.npz"], ["profile", bundle, "-o", tmp_path / "p.json"]):
        code, _, err = cli(capsys, *command)
        assert code == 3, command
        assert "modified" in assert_one_error(err, "model.onnx")
    assert snapshot(tmp_path) == before


def test_run_unreadable_inputs_file(capsys, exported, tmp_path):
    (tmp_path / "x.npz").write_text("not an npz")
    code, _, err = cli(capsys, "run", exported["onnx"], "--inputs", tmp_path / "x.npz", "-o", tmp_path / "y.npz")
    assert code == 3
    assert_one_error(err, "x.npz")
    assert not (tmp_path / "y.npz").exists()


def test_run_wrong_input_name(capsys, exported, tmp_path):
    np.savez(tmp_path / "x.npz", pixels=np.zeros((1, 1, 8, 8), np.float32))
    code, _, err = cli(capsys, "run", exported["onnx"], "--inputs", tmp_path / "x.npz")
    assert code == 3
    assert_one_error(err, "pixels", "image")


def _not_an_npz(path: Path, kind: str) -> None:
    if kind == "npy":  # one bare array: np.load returns it, not an archive
        np.save(path.with_suffix(".npy"), np.zeros((1, 1, 8, 8), np.float32))
        path.with_suffix(".npy").rename(path)
    elif kind == "truncated":
        np.savez(path, image=np.zeros((1, 1, 8, 8), np.float32))
        path.write_bytes(path.read_bytes()[:60])
    elif kind == "zip":  # a zip archive of something else
        import zipfile

        with zipfile.ZipFile(path, "w") as z:
            z.writestr("readme.txt", "hello")
    elif kind == "empty":
        path.write_bytes(b"")
    else:
        path.write_bytes(os.urandom(256))


@pytest.mark.parametrize("kind", ["npy", "truncated", "zip", "empty", "random"])
def test_run_inputs_that_are_not_an_npz(capsys, exported, tmp_path, kind):
    _not_an_npz(tmp_path / "x.npz", kind)
    before = snapshot(tmp_path)
    code, _, err = cli(capsys, "run", exported["onnx"], "--inputs", tmp_path / "x.npz", "-o", tmp_path / "y.npz")
    assert code == 3
    assert_one_error(err, "x.npz")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("array,dtype", [(np.array([["a", "b"]]), "<U1"), (np.array([b"ab"]), "|S2")],
                         ids=["unicode", "bytes"])
def test_run_inputs_with_a_string_array(capsys, exported, tmp_path, array, dtype):
    np.savez(tmp_path / "x.npz", image=array)
    before = snapshot(tmp_path)
    code, _, err = cli(capsys, "run", exported["onnx"], "--inputs", tmp_path / "x.npz", "-o", tmp_path / "y.npz")
    assert code == 3
    assert_one_error(err, "'image'", "x.npz", dtype)
    assert snapshot(tmp_path) == before


def test_run_inputs_with_an_object_array_is_never_unpickled(capsys, exported, tmp_path):
    marker = tmp_path / "MARKER"
    np.savez(tmp_path / "x.npz", image=np.array([PickleBomb(marker)], dtype=object))
    before = snapshot(tmp_path)
    code, _, err = cli(capsys, "run", exported["onnx"], "--inputs", tmp_path / "x.npz", "-o", tmp_path / "y.npz")
    assert code == 3
    assert_one_error(err, "'image'", "x.npz")
    assert not marker.exists()
    assert snapshot(tmp_path) == before


def test_run_refuses_a_cast_that_loses_values(capsys, exported, tmp_path):
    # complex -> float32 used to drop the imaginary part and exit 0
    np.savez(tmp_path / "x.npz", image=np.full((2, 1, 8, 8), 1 + 2j, np.complex64))
    before = snapshot(tmp_path)
    code, _, err = cli(capsys, "run", exported["onnx"], "--inputs", tmp_path / "x.npz", "-o", tmp_path / "y.npz")
    assert code == 3
    line = assert_one_error(err, "input image", "complex64", "float32", "same kind")
    assert "astype" in err  # the hint
    assert line
    assert snapshot(tmp_path) == before


def test_run_says_when_it_casts(capsys, exported, tmp_path):
    x = np.random.default_rng(0).uniform(0, 1, (2, 1, 8, 8))
    np.savez(tmp_path / "x64.npz", image=x)
    np.savez(tmp_path / "x32.npz", image=x.astype(np.float32))
    code, out64, err = cli(capsys, "run", exported["onnx"], "--inputs", tmp_path / "x64.npz", "--json")
    assert code == 0, err
    notes = [ln for ln in err.splitlines() if ln.startswith("note:")]
    assert len(notes) == 1 and "float64" in notes[0] and "float32" in notes[0], err
    code, out32, err = cli(capsys, "run", exported["onnx"], "--inputs", tmp_path / "x32.npz", "--json")
    assert code == 0 and "note:" not in err
    assert json.loads(out64)["logits"]["shape"] == json.loads(out32)["logits"]["shape"] == [2, 10]


# ---------------------------------------------------------------- usage errors (exit 2) and parity (4)

@pytest.mark.parametrize("args,names", [
    (["--target", "nope"], ["nope"]),
    (["-p", "nope"], ["nope"]),
    (["-p", "reparam:bogus=1"], ["bogus"]),
    (["-p", "reparam:check=maybe"], ["maybe"]),
    (["-O", "bogus=1"], ["bogus"]),
    (["--input", "image:1xAx8"], ["image:1xAx8"]),
    (["--input", "image:1x1x8x8:float99"], ["float99"]),
], ids=["target", "pass", "pass-option", "pass-value", "target-option", "input-text", "input-dtype"])
def test_usage_errors(capsys, work, args, names):
    code, _, err = cli(capsys, "export", "zoo:digits-cnn", *args, "-o", "out")
    assert code == 2
    assert_one_error(err, *names)
    assert snapshot(work) == {}


def test_click_usage_error_exits_2(capsys):
    code, _, err = cli(capsys, "export")
    assert code == 2
    assert "MODEL" in err
    code, _, err = cli(capsys, "frobnicate")
    assert code == 2


def test_verify_wrong_golden_fails_parity(capsys, exported, tmp_path):
    bundle = tmp_path / "b"
    shutil.copytree(exported["onnx"], bundle)
    with np.load(bundle / "golden.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays = {k: (v + 3.0 if k.startswith("out.") else v) for k, v in arrays.items()}
    np.savez(bundle / "golden.npz", **arrays)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"]["golden.npz"]["sha256"] = hashlib.sha256((bundle / "golden.npz").read_bytes()).hexdigest()
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    Bundle.open(bundle)  # file verification passes

    code, out, err = cli(capsys, "verify", bundle)
    assert code == 4
    assert "FAIL" in out
    assert_one_error(err, "logits", str(bundle))


def test_target_options_go_to_the_targets_that_have_them(capsys, tmp_path):
    out = tmp_path / "out"
    code, _, err = cli(capsys, "export", "zoo:digits-cnn", "-t", "onnx", "-t", "torch", "-O", "dynamic=false",
                       "-o", out)
    assert code == 0, err
    assert Bundle.open(out / "digits-cnn.onnx").manifest.inputs[0].dynamic == {}
    assert Bundle.open(out / "digits-cnn.torch").manifest.options == {"notes": []}
    code, _, err = cli(capsys, "export", "zoo:digits-cnn", "-t", "onnx", "-t", "torch", "-O", "bogus=1",
                       "-o", tmp_path / "other")
    assert code == 2
    assert_one_error(err, "bogus")
    assert not (tmp_path / "other").exists()


GRID_SAMPLE_NET = '''
import torch


class Warp(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.grid = torch.nn.Parameter(torch.rand(1, 4, 4, 2) * 2 - 1)

    def forward(self, x):
        return torch.nn.functional.grid_sample(x, self.grid.expand(x.shape[0], -1, -1, -1), align_corners=False)


def net():
    torch.manual_seed(0)
    return Warp()
'''


def test_target_all_reports_the_op_a_target_cannot_take(capsys, tmp_path, py_module):
    """grid_sample: ONNX and torch take it; MLX has no translation and the Core ML evaluator no `resample`.

    Targets that refuse the model cleanly do not fail the command: the others' bundles are written (exit 0).
    """
    module = py_module(GRID_SAMPLE_NET, prefix="es_gsnet")
    out = tmp_path / "out"
    code, stdout, err = cli(capsys, "export", f"py:{module}:net", "--input", "x:2x1x4x4", "--target", "all",
                            "-o", out, "--json")
    assert code == 0, err
    rows = {r["target"]: r for r in json.loads(stdout)}
    assert set(rows) == {"coreml", "hls", "mlx", "onnx", "tensorrt", "torch"}
    for ok in ("onnx", "torch"):
        assert rows[ok]["error"] is None and rows[ok]["parity"]["passed"] and rows[ok]["parity"]["tier"] == "verified"
        assert (out / f"net.{ok}" / "manifest.json").is_file()
    # TensorRT imports GridSample on 4-D inputs: a clean support check (structural where no GPU builds the engine)
    trt = rows["tensorrt"]
    assert trt["error"] is None and trt["parity"]["passed"], trt
    assert trt["details"]["tensorrt"]["support"]["op_counts"].get("GridSample") == 1
    assert trt["parity"]["tier"] == ("structural" if trt["details"]["tensorrt"]["engine"] is None else "verified")
    assert "aten.grid_sampler_2d" in rows["mlx"]["error"]
    assert "resample" in rows["coreml"]["error"]
    assert "aten.expand" in rows["hls"]["error"] and "(Warp)" in rows["hls"]["error"]  # its first op with no layer
    assert not (out / "net.mlx").exists() and not (out / "net.coreml").exists()
    assert "error:" not in err and "Traceback" not in err
    for target, named in (("coreml", "resample"), ("mlx", "aten.grid_sampler_2d"), ("hls", "aten.expand")):
        assert any(line.startswith(f"{target} refused:") and named in line for line in err.splitlines()), err
    hints = [line.strip() for line in err.splitlines() if line.strip().startswith("hint:")]
    assert hints and len(hints) == len(set(hints))
    assert "wrote 3 of 6 bundles" in err and "net.onnx" in err


def test_target_all_fails_when_a_target_fails_for_another_reason(capsys, tmp_path, py_module):
    """An existing bundle is not a refusal of the model: the export still exits 3 and names it."""
    module = py_module(GRID_SAMPLE_NET, prefix="es_gsnet")
    out = tmp_path / "out"
    assert cli(capsys, "export", f"py:{module}:net", "--input", "x:2x1x4x4", "-t", "onnx", "-o", out)[0] == 0
    code, _, err = cli(capsys, "export", f"py:{module}:net", "--input", "x:2x1x4x4", "-t", "onnx", "-t", "torch",
                       "-o", out)
    assert code == 3, err
    assert_one_error(err, "onnx")
    assert "onnx failed:" in err and (out / "net.torch" / "manifest.json").is_file()


# ---------------------------------------------------------------- dolphin


def test_dolphin_train_ask_eval_on_smollm2_end_to_end(capsys, tmp_path):
    folder = tmp_path / "dolphin"
    code, out, err = cli(capsys, "dolphin", "train", "zoo:smollm2-135m", "-o", folder, "--memory", "4",
                         "--context", "24", "--continuation", "8", "--reconstruct", "8", "--reconstruct-steps", "1",
                         "--steps", "1", "--batch", "1", "--json")
    assert code == 0, err
    record = json.loads(out)
    assert record["training"]["steps"] == 2 and record["pair"]["encoder"]["layers"] == 4
    assert {"dolphin.pt", "dolphin.json", "checkpoint"} <= {p.name for p in folder.iterdir()}
    before = snapshot(folder)
    code, _, err = cli(capsys, "dolphin", "train", "zoo:smollm2-135m", "-o", folder)
    assert code == 3 and snapshot(folder) == before
    assert_one_error(err, "already holds a trained Dolphin pair")
    context = tmp_path / "context.txt"
    context.write_text("ADAGE, n.  Boned wisdom for weak teeth.\n")
    code, out, err = cli(capsys, "dolphin", "ask", "-m", folder, "--context", context, "--question", "ADAGE means",
                         "--max-new-tokens", "4", "--json")
    assert code == 0, err
    answer = json.loads(out)
    assert 4 < answer["prompt_tokens"] <= 4 + len("ADAGE means") and answer["new_tokens"] <= 4
    assert answer["context_tokens"] > 5 and answer["mode"] == "compressed"
    code, out, err = cli(capsys, "dolphin", "eval", "-m", folder, "--windows", "2", "--json")
    assert code == 0, err
    figures = json.loads(out)
    assert figures["windows"] == 2 and figures["tokens"] == 16 and figures["full"] > 0
    long_context = tmp_path / "long.txt"
    long_context.write_text("word " * 9000)
    code, _, err = cli(capsys, "dolphin", "ask", "-m", folder, "--context", long_context, "--question", "?")
    assert code == 3
    assert_one_error(err, "longer than the encoder's window of 8188", "position limit 8192")


@pytest.mark.parametrize("args,code,named", [
    (["train", "zoo:smollm2-135m", "--memory", "0"], 2, "K must be at least 1"),
    (["train", "zoo:smollm2-135m", "--projector", "conv"], 2, "unknown projector"),
    (["train", "zoo:digits-cnn", "--steps", "1"], 3, "not a language model"),
    (["ask", "-m", "{tmp}/none", "--context", "{tmp}/c.txt", "--question", "?"], 3, "holds no trained Dolphin pair"),
    (["export", "-m", "{tmp}/none", "-o", "{tmp}/out"], 3, "holds no trained Dolphin pair"),
])
def test_dolphin_bad_input_is_one_error_and_writes_nothing(capsys, tmp_path, args, code, named):
    (tmp_path / "c.txt").write_text("some context")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if args[0] == "train":
        args += ["-o", str(tmp_path / "out")]
    before = snapshot(tmp_path)
    got, _, err = cli(capsys, "dolphin", *args)
    assert got == code
    assert_one_error(err, named)
    assert snapshot(tmp_path) == before
