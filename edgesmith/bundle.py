"""Artifact bundles: a directory with a manifest, model files and golden data.

::

    OUT/NAME.TARGET/
      manifest.json   schema, files + sha256, signature, source, passes, versions, parity
      <model files>   model.onnx, model.pt2, ...
      golden.npz      reference inputs (``in.<name>``) and source outputs (``out.<name>``)

Bundles are built in a staging directory next to their destination and renamed
into place, so a failed export leaves nothing behind; reading one verifies the
schema and every file's sha256. numpy only: runtimes read bundles on device.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

import numpy as np

from edgesmith.arrays import first_line, load_arrays
from edgesmith.errors import BadInputError, OutputExistsError
from edgesmith.specs import TensorSpec

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
GOLDEN = "golden.npz"


def sha256_file(path: str | Path) -> str:
    """Return the hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256_tree(path: str | Path) -> str:
    """Return a sha256 over a file, or over a directory's relative paths and contents."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f.relative_to(path).as_posix().encode())
        h.update(sha256_file(f).encode())
    return h.hexdigest()


def check_links(root: str | Path) -> None:
    """Refuse a directory holding a symlink whose target leaves it (checked at export and on load).

    A link that stays inside ``root`` is fine; one that points outside would make the
    sha256 check and the runtime read a file the bundle does not hold.

    Args:
        root: The bundle (or staging) directory.

    Raises:
        BadInputError: Naming the first such link and where it points.
    """
    root = Path(root)
    top = root.resolve()
    for folder, dirs, files in os.walk(root, followlinks=False):
        for name in sorted(dirs + files):
            entry = Path(folder) / name
            if not entry.is_symlink():
                continue
            target = entry.resolve()
            if target != top and top not in target.parents:
                rel = entry.relative_to(root).as_posix()
                raise BadInputError(
                    f"bundle {root}: {rel} is a symlink to {os.readlink(entry)}, which is outside the bundle",
                    hint="a bundle holds its own files: copy the file in instead of linking to it",
                )


@dataclass
class Manifest:
    """What a bundle holds and how it was made (``manifest.json``).

    Attributes:
        name: Variant name.
        target: Export target (``onnx``, ``torch``...).
        runtime: Runtime registry key that runs it (``onnxruntime``...).
        model_file: Main model file, relative to the bundle.
        precision: Parity tolerance row (``fp32``, ``fp16``, ``fixed``).
        inputs: Input signature.
        outputs: Output signature.
        task: ``classifier``, ``lm``, ``encoder`` or ``generic``; classifiers and LMs get top-1 parity.
        source: ``{"reference": ..., "sha256": ...}`` of the source model.
        passes: Passes applied, each ``{"name": ..., "params": {...}, ...}``.
        options: The exporter's options.
        versions: Tool and library versions used to build it.
        parity: Parity record (:meth:`ParityResult.to_dict`), or None before it is checked.
        details: Target-specific records (``hls``: the chosen precisions, resource estimates,
            the C simulation library).
        generation: For a generation bundle (a decoder LM with its KV cache): the cache layout,
            tokenizer file, chat template, end-of-sequence ids and generation defaults; else None.
        files: Relative path -> ``{"sha256": ..., "size": ...}``, filled on write.
        created_at: ISO time of writing.
        schema_version: Manifest schema version.
    """

    name: str
    target: str
    runtime: str
    model_file: str
    precision: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    task: str = "generic"
    source: dict[str, Any] = field(default_factory=dict)
    passes: list[dict[str, Any]] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    parity: dict[str, Any] | None = None
    details: dict[str, Any] = field(default_factory=dict)
    generation: dict[str, Any] | None = None
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    created_at: str = ""
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form."""
        d = dict(self.__dict__)
        d["inputs"] = [s.to_dict() for s in self.inputs]
        d["outputs"] = [s.to_dict() for s in self.outputs]
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Manifest":
        """Rebuild a manifest from JSON; raises KeyError/TypeError/ValueError on a malformed one."""
        _check_manifest(data)
        data = dict(data)
        data["inputs"] = [TensorSpec.from_dict(s) for s in data["inputs"]]
        data["outputs"] = [TensorSpec.from_dict(s) for s in data["outputs"]]
        return cls(**data)


_STRINGS = ("name", "target", "runtime", "model_file", "precision")
_OPTIONAL = {"task": str, "source": dict, "passes": list, "options": dict, "versions": dict, "details": dict,
             "files": dict, "created_at": str, "schema_version": int}


def _check_manifest(data: Any) -> None:
    """Check the types of a manifest's fields (a manifest is input: it may be edited or corrupt).

    Raises:
        ValueError: Naming the first field that is missing, unknown or of the wrong type.
    """
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, got {type(data).__name__}")
    known = set(_STRINGS) | set(_OPTIONAL) | {"inputs", "outputs", "parity", "generation"}
    unknown = sorted(str(k) for k in data if k not in known)
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r}")
    for key in _STRINGS:
        if not isinstance(data.get(key), str) or not data[key]:
            raise ValueError(f"{key} must be a non-empty string, got {data.get(key)!r}")
    for key, kind in _OPTIONAL.items():
        if key in data and (not isinstance(data[key], kind) or isinstance(data[key], bool)):
            raise ValueError(f"{key} must be a {kind.__name__}, got {data[key]!r}")
    for key in ("parity", "generation"):
        if data.get(key) is not None and not isinstance(data[key], dict):
            raise ValueError(f"{key} must be an object or null, got {data[key]!r}")
    for rel, info in data.get("files", {}).items():
        if not isinstance(info, dict) or not isinstance(info.get("sha256"), str):
            raise ValueError(f"files[{rel!r}] must be {{'sha256': ..., 'size': ...}}, got {info!r}")
        size = info.get("size", 0)
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ValueError(f"files[{rel!r}].size must be a whole number >= 0, got {size!r}")
    for key in ("inputs", "outputs"):
        specs = data.get(key)
        if not isinstance(specs, list):
            raise ValueError(f"{key} must be a list of tensors, got {specs!r}")
        for i, spec in enumerate(specs):
            _check_spec(spec, f"{key}[{i}]")
        names = [s["name"] for s in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"{key} names a tensor twice: {names}")


def _check_spec(spec: Any, where: str) -> None:
    if not isinstance(spec, dict) or not {"name", "shape", "dtype"} <= set(spec):
        raise ValueError(f"{where} must be {{'name', 'shape', 'dtype'}}, got {spec!r}")
    if not isinstance(spec["name"], str) or not spec["name"]:
        raise ValueError(f"{where}.name must be a non-empty string, got {spec['name']!r}")
    shape = spec["shape"]
    if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**63 for d in shape):
        raise ValueError(f"{where}.shape must be a list of whole numbers >= 0, got {shape!r}")
    try:
        kind = np.dtype(spec["dtype"]).kind if isinstance(spec["dtype"], str) else ""
    except (TypeError, ValueError):
        kind = ""
    if kind not in tuple("biufc"):
        raise ValueError(f"{where}.dtype must name a numeric numpy dtype, got {spec['dtype']!r}")
    axes = spec.get("dynamic_axes", {})
    if not isinstance(axes, dict) or not all(
            isinstance(k, str) and k.isascii() and k.isdigit() and int(k) < len(shape) and isinstance(v, str)
            for k, v in axes.items()):
        raise ValueError(f"{where}.dynamic_axes must map axis numbers below its rank to names, got {axes!r}")


@dataclass
class Bundle:
    """A bundle directory and its manifest.

    Attributes:
        path: The bundle directory.
        manifest: Its manifest.
    """

    path: Path
    manifest: Manifest

    @classmethod
    def open(cls, path: str | Path, verify: bool = True) -> "Bundle":
        """Read a bundle and (by default) verify its schema and every file's sha256.

        Args:
            path: The bundle directory (or its manifest.json).
            verify: Check the hashes; only skip for a bundle being built.

        Raises:
            BadInputError: If the directory, manifest or a file is missing, unreadable,
                of another schema version, or does not match its sha256.
        """
        path = Path(path)
        if path.name == MANIFEST:
            path = path.parent
        mpath = path / MANIFEST
        if not path.is_dir():
            raise BadInputError(f"bundle {path} does not exist or is not a directory")
        if not mpath.is_file():
            raise BadInputError(
                f"{path} is not a bundle: no {MANIFEST}", hint="make one with `edgesmith export`"
            )
        check_links(path)
        try:
            data = json.loads(mpath.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise BadInputError(f"bundle {path}: {MANIFEST} is not valid JSON ({first_line(exc)})") from None
        except OSError as exc:
            raise BadInputError(f"bundle {path}: cannot read {MANIFEST} ({exc.strerror or exc})") from None
        version = data.get("schema_version") if isinstance(data, dict) else None
        if version != SCHEMA_VERSION:
            raise BadInputError(
                f"bundle {path}: schema_version {version!r} is not {SCHEMA_VERSION}",
                hint="re-export it with this edgesmith",
            )
        try:
            manifest = Manifest.from_dict(data)
        except (KeyError, TypeError, ValueError) as exc:
            raise BadInputError(f"bundle {path}: malformed {MANIFEST} ({exc})") from None
        bundle = cls(path, manifest)
        if verify:
            bundle.verify_files()
        return bundle

    def file(self, rel: str) -> Path:
        """Resolve a manifest-relative path, refusing one that leaves the bundle.

        Raises:
            BadInputError: If the path is absolute or escapes the bundle directory.
        """
        p = PurePosixPath(rel)
        if p.is_absolute() or ".." in p.parts or not p.parts or "\\" in rel or "\0" in rel:
            raise BadInputError(f"bundle {self.path}: path {rel!r} leaves the bundle")
        path = self.path / Path(*p.parts)
        top = self.path.resolve()
        real = path.resolve()
        if real != top and top not in real.parents:  # a symlink (the file or a folder above it) leads out
            raise BadInputError(f"bundle {self.path}: {rel} is a symlink to {real}, which is outside the bundle",
                                hint="a bundle holds its own files: copy the file in instead of linking to it")
        return path

    def verify_files(self) -> None:
        """Check that every listed file exists and matches its sha256.

        Raises:
            BadInputError: Naming the first missing or modified file.
        """
        m = self.manifest
        if m.model_file not in m.files:
            raise BadInputError(f"bundle {self.path}: model file {m.model_file!r} is not listed")
        for rel, info in m.files.items():
            f = self.file(rel)
            if not f.exists():
                raise BadInputError(f"bundle {self.path}: {rel} is missing")
            if sha256_tree(f) != info.get("sha256"):
                raise BadInputError(
                    f"bundle {self.path}: {rel} was modified after export (sha256 mismatch)",
                    hint="re-export the bundle; do not edit its files",
                )

    @property
    def model_path(self) -> Path:
        """Path of the main model file."""
        return self.file(self.manifest.model_file)

    def size_bytes(self) -> int:
        """Total size of the model files (everything listed except golden data)."""
        return sum(int(i.get("size", 0)) for rel, i in self.manifest.files.items() if rel != GOLDEN)

    def golden(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Return the golden (inputs, outputs) stored at export time.

        Raises:
            BadInputError: The golden file is missing, not an ``.npz``, or holds non-numeric
                (e.g. object) arrays, which are never unpickled.
        """
        arrays = load_arrays(self.file(GOLDEN), "golden data")
        ins = {k[3:]: v for k, v in arrays.items() if k.startswith("in.")}
        outs = {k[4:]: v for k, v in arrays.items() if k.startswith("out.")}
        return ins, outs


def save_golden(path: Path, inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> None:
    """Write golden inputs and outputs to an ``.npz`` file."""
    arrays = {f"in.{k}": np.asarray(v) for k, v in inputs.items()}
    arrays.update({f"out.{k}": np.asarray(v) for k, v in outputs.items()})
    np.savez(path, **arrays)


def bundle_dir(out: str | Path, name: str, target: str) -> Path:
    """Return ``OUT/NAME.TARGET``.

    Raises:
        BadInputError: If the name is not a plain folder name (see :func:`check_bundle_name`).
    """
    check_bundle_name(name)
    return Path(out) / f"{name}.{target}"


def check_bundle_name(name: str) -> None:
    """Refuse a bundle name that is not a plain folder name, so no bundle is written outside ``OUT``.

    Raises:
        BadInputError: An empty name, a path such as ``../x``, or one with a control character.
    """
    if (not isinstance(name, str) or not name.strip() or any(c in name for c in "/\\")
            or any(ord(c) < 32 for c in name)):
        raise BadInputError(f"bundle name {name!r} is not a plain folder name",
                            hint="use letters, digits, '-', '_' and '.' (no '/')")


def check_writable(dest: Path, force: bool) -> None:
    """Refuse to overwrite an existing output unless forced.

    Raises:
        OutputExistsError: If ``dest`` exists and ``force`` is false.
    """
    if dest.exists() and not force:
        raise OutputExistsError(f"{dest} already exists", hint="pass --force to overwrite it")


@contextmanager
def staged_bundle(dest: Path, force: bool = False) -> Iterator[Path]:
    """Build a bundle in a staging directory and move it to ``dest`` on success.

    Everything written inside the ``with`` block goes to the yielded directory; if
    the block raises, the staging directory is removed and ``dest`` is untouched.

    Raises:
        OutputExistsError: If ``dest`` exists and ``force`` is false.
    """
    check_writable(dest, force)
    dest.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(stage, 0o777 & ~umask)  # mkdtemp makes it private; a bundle is an ordinary directory
    try:
        yield stage
        check_writable(dest, force)
        if dest.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".old", dir=dest.parent))
            os.replace(dest, trash / "old")
            os.replace(stage, dest)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(stage, dest)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def finalize_manifest(stage: Path, manifest: Manifest) -> Bundle:
    """Hash every file in a staging directory into the manifest and write it.

    Args:
        stage: The directory holding the model files and golden data.
        manifest: The manifest to complete (``files`` and ``created_at`` are set).

    Returns:
        The bundle at ``stage``.
    """
    check_links(stage)
    files: dict[str, dict[str, Any]] = {}
    for entry in sorted(stage.iterdir()):
        if entry.name == MANIFEST:
            continue
        size = entry.stat().st_size if entry.is_file() else sum(
            f.stat().st_size for f in entry.rglob("*") if f.is_file()
        )
        files[entry.name] = {"sha256": sha256_tree(entry), "size": size}
    manifest.files = files
    manifest.created_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    write_manifest(stage, manifest)
    return Bundle(stage, manifest)


def write_manifest(path: Path, manifest: Manifest) -> None:
    """Write ``manifest.json`` into a bundle directory (atomically)."""
    tmp = path / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest.to_dict(), indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path / MANIFEST)
