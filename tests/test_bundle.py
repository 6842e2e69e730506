"""Artifact bundles: manifest contents, verification on open, atomic and non-overwriting writes."""

from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path, PurePosixPath

import pytest

from edgesmith import api as es
from edgesmith.bundle import GOLDEN, MANIFEST, SCHEMA_VERSION, Bundle, sha256_file, sha256_tree
from edgesmith.errors import BadInputError, OutputExistsError
from edgesmith.export.onnx import OnnxExporter


@pytest.fixture(scope="module")
def variant():
    return es.load("zoo:digits-cnn")


@pytest.fixture(scope="module")
def exported(variant, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundle")
    bundle, parity = es.export(variant, out, target="onnx")
    return bundle, parity


@pytest.fixture
def copy(exported, tmp_path) -> Path:
    """A private copy of the exported bundle, free to tamper with."""
    dest = tmp_path / exported[0].path.name
    shutil.copytree(exported[0].path, dest)
    return dest


def _manifest(path: Path) -> dict:
    return json.loads((path / MANIFEST).read_text())


def _write_manifest(path: Path, data: dict) -> None:
    (path / MANIFEST).write_text(json.dumps(data))


def test_bundle_layout_and_manifest_fields(exported):
    bundle, parity = exported
    assert bundle.path.name == "digits-cnn.onnx"
    data = _manifest(bundle.path)
    assert data["schema_version"] == SCHEMA_VERSION
    assert data["target"] == "onnx" and data["runtime"] == "onnxruntime"
    assert data["model_file"] == "model.onnx"
    assert set(data["files"]) == {"model.onnx", GOLDEN}
    for rel, info in data["files"].items():
        assert info["sha256"] == sha256_tree(bundle.path / rel)
        assert info["size"] == (bundle.path / rel).stat().st_size
    (inp,) = data["inputs"]
    assert inp["name"] == "image" and inp["shape"][1:] == [1, 8, 8] and inp["dtype"] == "float32"
    assert inp["dynamic_axes"] == {"0": "batch"}
    (outp,) = data["outputs"]
    assert outp["name"] == "logits" and outp["shape"][1:] == [10]
    assert outp["dynamic_axes"] == {"0": "batch"}
    assert data["source"]["reference"] == "zoo:digits-cnn"
    assert len(data["source"]["sha256"]) == 64
    assert data["passes"] == []
    assert {"python", "edgesmith", "torch", "onnx", "onnxruntime", "numpy"} <= set(data["versions"])
    assert data["parity"]["tier"] == "verified" and data["parity"]["passed"] is True
    assert data["parity"]["metrics"]["max_abs"] < 1e-4
    assert data["created_at"].startswith("20") and "T" in data["created_at"]
    assert parity.passed and parity.tier == "verified"
    # the manifest is strict JSON (no Infinity/NaN)
    json.dumps(data, allow_nan=False)


def test_manifest_records_passes(variant, tmp_path):
    folded = es.optimize(variant, ["reparam:check=false"])
    bundle, _ = es.export(folded, tmp_path, target="onnx")
    (record,) = _manifest(bundle.path)["passes"]
    assert record["name"] == "reparam" and record["params"] == {"check": False}
    assert record["report"]["folded"] == 4


def test_manifest_paths_are_relative_and_inside(exported):
    bundle, _ = exported
    data = _manifest(bundle.path)
    root = bundle.path.resolve()
    for rel in [data["model_file"], *data["files"]]:
        p = PurePosixPath(rel)
        assert not p.is_absolute() and ".." not in p.parts
        assert (bundle.path / rel).resolve().is_relative_to(root)
        assert (bundle.path / rel).exists()


def test_open_verifies(exported):
    bundle = Bundle.open(exported[0].path)
    assert bundle.manifest.target == "onnx"
    assert bundle.model_path.name == "model.onnx"
    assert bundle.size_bytes() == (bundle.path / "model.onnx").stat().st_size
    assert Bundle.open(exported[0].path / MANIFEST).path == exported[0].path
    inputs, outputs = bundle.golden()
    assert set(inputs) == {"image"} and set(outputs) == {"logits"}
    assert outputs["logits"].shape == (inputs["image"].shape[0], 10)


def test_modified_model_is_refused(copy):
    with open(copy / "model.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(BadInputError, match="modified") as info:
        Bundle.open(copy)
    assert "model.onnx" in str(info.value)
    Bundle.open(copy, verify=False)  # still readable when asked not to verify


def test_modified_golden_is_refused(copy):
    with open(copy / GOLDEN, "ab") as f:
        f.write(b"\0")
    with pytest.raises(BadInputError, match="modified"):
        Bundle.open(copy)


def test_deleted_file_is_refused(copy):
    (copy / GOLDEN).unlink()
    with pytest.raises(BadInputError, match="missing") as info:
        Bundle.open(copy)
    assert GOLDEN in str(info.value)


def test_missing_manifest_is_refused(copy):
    (copy / MANIFEST).unlink()
    with pytest.raises(BadInputError, match="not a bundle"):
        Bundle.open(copy)


def test_not_json_manifest_is_refused(copy):
    (copy / MANIFEST).write_text("{not json")
    with pytest.raises(BadInputError, match="JSON"):
        Bundle.open(copy)


def test_other_schema_version_is_refused(copy):
    data = _manifest(copy)
    data["schema_version"] = SCHEMA_VERSION + 1
    _write_manifest(copy, data)
    with pytest.raises(BadInputError, match="schema_version"):
        Bundle.open(copy)


def test_malformed_manifest_is_refused(copy):
    data = _manifest(copy)
    del data["inputs"]
    _write_manifest(copy, data)
    with pytest.raises(BadInputError, match="malformed"):
        Bundle.open(copy)


@pytest.mark.parametrize("rel", ["../x", "sub/../../x", "/etc/passwd"])
def test_path_leaving_the_bundle_is_refused(copy, rel):
    outside = copy.parent / "x"
    outside.write_bytes(b"secret")
    data = _manifest(copy)
    data["files"][rel] = {"sha256": sha256_file(outside), "size": 6}
    _write_manifest(copy, data)
    with pytest.raises(BadInputError, match="leaves the bundle"):
        Bundle.open(copy)


def test_model_file_leaving_the_bundle_is_refused(copy):
    data = _manifest(copy)
    data["files"]["../model.onnx"] = data["files"].pop("model.onnx")
    data["model_file"] = "../model.onnx"
    shutil.copy(copy / "model.onnx", copy.parent / "model.onnx")
    _write_manifest(copy, data)
    with pytest.raises(BadInputError, match="leaves the bundle"):
        Bundle.open(copy)


def test_existing_bundle_is_not_overwritten_without_force(variant, copy):
    out = copy.parent
    before = {p.name: sha256_file(p) for p in copy.iterdir()}
    with pytest.raises(OutputExistsError, match="already exists") as info:
        es.export(variant, out, target="onnx")
    assert info.value.exit_code == 3
    assert {p.name: sha256_file(p) for p in copy.iterdir()} == before
    assert sorted(p.name for p in out.iterdir()) == [copy.name]  # no staging left behind


def test_force_replaces_the_bundle(variant, copy):
    out = copy.parent
    old = _manifest(copy)
    (copy / "stale.txt").write_text("from an older export")
    bundle, parity = es.export(variant, out, target="onnx", force=True)
    assert parity.passed and bundle.path == copy
    assert not (copy / "stale.txt").exists()
    new = _manifest(copy)
    assert new["files"].keys() == old["files"].keys()
    Bundle.open(copy)
    assert sorted(p.name for p in out.iterdir()) == [copy.name]  # no .old or .partial left


class _FailingExporter(OnnxExporter):
    def _export_impl(self, variant, stage):
        (stage / self.model_file).write_bytes(b"half-written model")
        raise RuntimeError("conversion crashed halfway")


def test_failed_export_leaves_nothing(variant, tmp_path):
    with pytest.raises(RuntimeError, match="halfway"):
        _FailingExporter().export(variant, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_failed_forced_export_keeps_the_old_bundle(variant, copy):
    out = copy.parent
    before = {p.name: sha256_file(p) for p in copy.iterdir()}
    with pytest.raises(RuntimeError, match="halfway"):
        _FailingExporter().export(variant, out, force=True)
    assert {p.name: sha256_file(p) for p in copy.iterdir()} == before
    assert sorted(p.name for p in out.iterdir()) == [copy.name]
    assert not any(p.name.endswith(".partial") for p in out.iterdir())


def test_bundle_directory_is_not_private(exported, tmp_path):
    # staging uses mkdtemp (mode 0700); the bundle must end up an ordinary directory
    mode = stat.S_IMODE(exported[0].path.stat().st_mode)
    plain = tmp_path / "plain"
    plain.mkdir()
    assert mode == stat.S_IMODE(plain.stat().st_mode)
    if stat.S_IMODE(plain.stat().st_mode) != 0o700:
        assert mode != 0o700


# ---------------------------------------------------------------- trust (issue 22): symlinks, golden data

def _cli(capsys, *args) -> tuple[int, str]:
    """Run the CLI in-process; return (exit code, the one ``error:`` line)."""
    from edgesmith.cli import main

    capsys.readouterr()
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) <= 1, err
    return code, lines[0] if lines else ""


def _tree(root: Path) -> dict[str, bytes | None]:
    return {p.relative_to(root).as_posix(): (p.read_bytes() if p.is_file() and not p.is_symlink() else None)
            for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("linked", ["model.onnx", GOLDEN])
def test_symlink_out_of_the_bundle_is_refused_on_load(capsys, copy, linked):
    # the link's target has the very bytes the manifest hashes: only the link itself is wrong
    outside = copy.parent / f"outside-{linked}"
    shutil.move(copy / linked, outside)
    (copy / linked).symlink_to(outside)
    with pytest.raises(BadInputError, match="outside the bundle") as info:
        Bundle.open(copy)
    assert linked in str(info.value)
    before = _tree(copy.parent)
    for command in (["verify", copy], ["run", copy, "-o", copy.parent / "y.npz"],
                    ["profile", copy, "-o", copy.parent / "p.json"]):
        code, line = _cli(capsys, *command)
        assert code == 3, command
        assert linked in line and "symlink" in line and "outside the bundle" in line
    assert _tree(copy.parent) == before


def test_symlinked_folder_out_of_the_bundle_is_refused(copy):
    elsewhere = copy.parent / "elsewhere"
    elsewhere.mkdir()
    (copy / "extra").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(BadInputError, match="extra is a symlink"):
        Bundle.open(copy, verify=False)


def test_symlink_inside_the_bundle_is_fine(copy):
    (copy / "alias.onnx").symlink_to("model.onnx")
    Bundle.open(copy)


class _LinkingExporter(OnnxExporter):
    """An exporter that links a file from outside into its bundle (it must not be accepted)."""

    outside: Path

    def _export_impl(self, variant, stage):
        super()._export_impl(variant, stage)
        (stage / "weights.bin").symlink_to(self.outside)


def test_symlink_out_of_the_bundle_is_refused_at_export(variant, tmp_path):
    exporter = _LinkingExporter()
    exporter.outside = tmp_path / "secret.bin"
    exporter.outside.write_bytes(b"not the bundle's")
    out = tmp_path / "out"
    with pytest.raises(BadInputError, match="weights.bin is a symlink") as info:
        exporter.export(variant, out)
    assert "outside the bundle" in str(info.value)
    assert list(out.iterdir()) == []  # the staging folder is gone, no bundle


def test_golden_with_object_arrays_is_refused(capsys, copy):
    import numpy as np

    marker = copy.parent / "MARKER"
    with np.load(copy / GOLDEN) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["in.image"] = np.array([_Marker(marker)], dtype=object)
    np.savez(copy / GOLDEN, **arrays)
    data = _manifest(copy)
    data["files"][GOLDEN]["sha256"] = sha256_file(copy / GOLDEN)  # re-hashed: only the content is wrong
    _write_manifest(copy, data)
    with pytest.raises(BadInputError, match="in.image") as info:
        Bundle.open(copy).golden()
    assert GOLDEN in str(info.value) and "object" in str(info.value)
    before = _tree(copy.parent)
    for command in (["verify", copy], ["run", copy, "-o", copy.parent / "y.npz"]):
        code, line = _cli(capsys, *command)
        assert code == 3, command
        assert "in.image" in line and GOLDEN in line
    assert _tree(copy.parent) == before
    assert not marker.exists(), "the golden data was unpickled"


class _Marker:
    """Unpickling this creates a marker file."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


@pytest.mark.parametrize("bad", ["not an npz at all\n", "npy", "truncated", "strings"])
def test_golden_that_is_not_numeric_npz_is_refused(copy, bad):
    import numpy as np

    golden = copy / GOLDEN
    if bad == "npy":
        np.save(golden.with_suffix(".npy"), np.zeros(3))
        golden.with_suffix(".npy").rename(golden)
    elif bad == "truncated":
        golden.write_bytes(golden.read_bytes()[:100])
    elif bad == "strings":
        np.savez(golden, **{"in.image": np.array(["a", "b"]), "out.logits": np.zeros(2)})
    else:
        golden.write_text(bad)
    data = _manifest(copy)
    data["files"][GOLDEN]["sha256"] = sha256_file(golden)
    _write_manifest(copy, data)
    with pytest.raises(BadInputError, match=GOLDEN):
        Bundle.open(copy).golden()


def test_manifest_naming_an_unknown_runtime_is_bad_input(capsys, copy):
    data = _manifest(copy)
    data["runtime"] = "nope"
    _write_manifest(copy, data)
    code, line = _cli(capsys, "verify", copy)
    assert code == 3
    assert "'nope'" in line
