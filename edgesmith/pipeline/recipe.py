"""Recipes: a whole pipeline (model, passes, targets, devices, report) in one YAML file.

``edgesmith run recipe.yaml`` loads the model once, makes each variant by applying
its passes, exports every variant to every target (parity checked), profiles the
bundles on every device (``host`` measured, catalog devices predicted) and writes
one profile document and one report. A recipe::

    model: zoo:digits-cnn            # any MODEL reference (ARCHITECTURE.md)
    variants:                        # default: one variant, no passes
      - passes: []                   # the model as loaded
      - name: digits-cnn-reparam     # default: model name + pass names
        passes: [reparam]            # "NAME[:k=v,...]" or {NAME: {k: v}}
    targets: [onnx, torch]           # default: [onnx]
    devices: [host, jetson-orin-nano]  # default: [host]
    profile: {runs: 100, warmup: 10}
    out: recipe-out                  # default: the recipe's stem + "-out"

Other keys: ``name`` (base bundle name), ``inputs`` (``--input`` specs), ``weights``,
``gguf``, ``seq_len``, ``data`` (for ``distill``), ``target_options``
(``{target: {key: value}}``), ``device_files``, ``passes`` (shorthand for one variant),
``report`` (``false`` for none). Paths in a recipe (model files, ``weights``,
``data``, ``device_files``) are relative to the recipe's folder; ``out`` is
relative to the current folder. Everything is checked before any work starts:
an unknown key (with the closest known one), pass, pass option, target or device
is named with where it is in the file.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from edgesmith.errors import BadInputError, EdgesmithError, OutputExistsError

_TOP = {"model", "name", "inputs", "weights", "gguf", "seq_len", "data", "variants", "passes", "targets",
        "target_options", "devices", "device_files", "profile", "report", "out"}
_VARIANT = {"name", "passes"}
_PROFILE = {"runs", "warmup", "threads", "layers"}


@dataclass
class Variant:
    """One variant of a recipe: a bundle name and its pass specs."""

    name: str | None
    passes: list[str]


@dataclass
class Recipe:
    """A validated recipe (see the module docstring for the file format)."""

    path: Path
    model: str
    name: str | None = None
    inputs: list[str] = field(default_factory=list)
    weights: str | None = None
    gguf: str | None = None
    seq_len: int | None = None
    data: str | None = None
    variants: list[Variant] = field(default_factory=lambda: [Variant(None, [])])
    targets: list[str] = field(default_factory=lambda: ["onnx"])
    target_options: dict[str, dict[str, str]] = field(default_factory=dict)
    devices: list[str] = field(default_factory=lambda: ["host"])
    device_files: list[str] = field(default_factory=list)
    runs: int = 100
    warmup: int = 10
    threads: int = 0
    layers: bool = True
    report: bool = True
    out: str = ""


def _fail(path: Path, where: str, message: str, hint: str | None = None):
    raise BadInputError(f"recipe {path}: {where}: {message}" if where else f"recipe {path}: {message}", hint=hint)


def _check_keys(path: Path, where: str, data: Any, known: set[str]) -> dict:
    if not isinstance(data, dict):
        _fail(path, where, f"expected a mapping of keys, got {type(data).__name__}")
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            _fail(path, where, f"unknown key {key!r}",
                  f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(sorted(known))}")
    return data


def _list_of_str(path: Path, where: str, value: Any) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        _fail(path, where, f"expected a list of strings, got {value!r}")
    return value


def _pass_spec(path: Path, where: str, item: Any) -> str:
    """``"NAME[:k=v,...]"`` from a string or a ``{NAME: {k: v}}`` mapping."""
    if isinstance(item, str):
        return item
    if isinstance(item, dict) and len(item) == 1:
        (name, options), = item.items()
        if options is None:
            return str(name)
        if isinstance(options, dict):
            return f"{name}:" + ",".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}"
                                         for k, v in options.items())
    _fail(path, where, f"a pass is 'NAME[:key=value,...]' or {{NAME: {{key: value}}}}, got {item!r}")
    raise AssertionError  # unreachable: _fail raises


def _int(path: Path, where: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        _fail(path, where, f"expected a whole number >= {minimum}, got {value!r}")
    return value


def _plain_name(path: Path, where: str, name: str | None) -> None:
    """A bundle name from the recipe must be a plain folder name (never a path out of ``out``)."""
    from edgesmith.bundle import check_bundle_name

    if name is not None:
        try:
            check_bundle_name(name)
        except EdgesmithError as exc:
            _fail(path, where, exc.message, exc.hint)


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe; nothing runs.

    Raises:
        BadInputError: An unreadable file, bad YAML, or an invalid recipe: an unknown key, pass,
            pass option, target or device, or a value of the wrong type, named with its place.
    """
    from edgesmith.devices.catalog import get_device
    from edgesmith.export import EXPORTERS
    from edgesmith.optimize import parse_pass_spec
    from edgesmith.options import read_yaml_file

    path = Path(path)
    data = read_yaml_file(path, "recipe")
    _check_keys(path, "", data, _TOP)
    if "model" not in data or not isinstance(data["model"], str):
        _fail(path, "", "needs a 'model' (a MODEL reference such as zoo:digits-cnn or model.pt2)")
    base = path.parent

    def local(value: str) -> str:  # paths in a recipe are relative to its folder
        return str(base / value) if not Path(value).is_absolute() else value

    model = data["model"]
    if not model.startswith(("zoo:", "py:")) and (base / model).exists():
        model = local(model)
    recipe = Recipe(path=path, model=model, out=data.get("out") or f"{path.stem}-out")
    for key in ("name", "weights", "gguf", "data"):
        if data.get(key) is not None:
            if not isinstance(data[key], str):
                _fail(path, key, f"expected a string, got {data[key]!r}")
            setattr(recipe, key, local(data[key]) if key in ("weights", "data") else data[key])
    _plain_name(path, "name", recipe.name)
    if data.get("seq_len") is not None:
        recipe.seq_len = _int(path, "seq_len", data["seq_len"], 1)
    recipe.inputs = _list_of_str(path, "inputs", data.get("inputs") or [])
    if "variants" in data and "passes" in data:
        _fail(path, "", "give either 'variants' or 'passes' (one variant), not both")
    raw_variants = data.get("variants") or [{"passes": data.get("passes") or []}]
    if not isinstance(raw_variants, list):
        _fail(path, "variants", "expected a list of {name, passes}")
    defaults = {"data": recipe.data} if recipe.data else None
    recipe.variants = []
    for i, raw in enumerate(raw_variants):
        where = f"variants[{i}]" if "variants" in data else "passes"
        raw = _check_keys(path, where, raw, _VARIANT) if "variants" in data else raw
        passes = raw.get("passes") or []
        if not isinstance(passes, list):
            _fail(path, f"{where}.passes", f"expected a list of passes, got {passes!r}")
        specs = []
        for j, item in enumerate(passes):
            spec = _pass_spec(path, f"{where}.passes[{j}]", item)
            try:
                parse_pass_spec(spec, defaults)  # unknown pass, option or value: named now, not mid-run
            except EdgesmithError as exc:
                _fail(path, f"{where}.passes[{j}]", exc.message, exc.hint)
            specs.append(spec)
        if raw.get("name") is not None and not isinstance(raw["name"], str):
            _fail(path, f"{where}.name", f"expected a string, got {raw['name']!r}")
        _plain_name(path, f"{where}.name", raw.get("name"))
        recipe.variants.append(Variant(raw.get("name"), specs))
    names = [v.name for v in recipe.variants if v.name]
    if len(names) != len(set(names)):
        _fail(path, "variants", "two variants have the same name")
    recipe.targets = _list_of_str(path, "targets", data.get("targets") or ["onnx"])
    for i, target in enumerate(recipe.targets):
        if target not in EXPORTERS.names():
            close = difflib.get_close_matches(target, EXPORTERS.names(), n=1)
            _fail(path, f"targets[{i}]", f"unknown target {target!r}",
                  f"did you mean {close[0]!r}?" if close else f"targets: {', '.join(EXPORTERS.names())}")
    options = data.get("target_options") or {}
    if not isinstance(options, dict) or not all(isinstance(v, dict) for v in options.values()):
        _fail(path, "target_options", "expected {target: {key: value}}")
    for target in options:
        if target not in recipe.targets:
            _fail(path, f"target_options.{target}", f"{target!r} is not one of the recipe's targets")
    recipe.target_options = {t: {str(k): str(v) for k, v in o.items()} for t, o in options.items()}
    recipe.device_files = [local(f) for f in _list_of_str(path, "device_files", data.get("device_files") or [])]
    recipe.devices = _list_of_str(path, "devices", data.get("devices") or ["host"])
    for i, name in enumerate(recipe.devices):
        try:
            get_device(name, recipe.device_files)
        except EdgesmithError as exc:
            _fail(path, f"devices[{i}]", exc.message, exc.hint)
    prof = _check_keys(path, "profile", data.get("profile") or {}, _PROFILE)
    recipe.runs = _int(path, "profile.runs", prof.get("runs", recipe.runs), 1)
    recipe.warmup = _int(path, "profile.warmup", prof.get("warmup", recipe.warmup), 0)
    recipe.threads = _int(path, "profile.threads", prof.get("threads", recipe.threads), 0)
    recipe.layers = bool(prof.get("layers", True))
    recipe.report = data.get("report", True) is not False
    return recipe


def variant_name(base: str, variant: Variant) -> str:
    """A variant's bundle name: its own, else the base name and its passes' names (``digits-cnn-reparam``)."""
    if variant.name:
        return variant.name
    return "-".join([base, *(spec.partition(":")[0] for spec in variant.passes)])


def build_bundles(recipe: Recipe, out: Path, force: bool = False, step: Callable[[str], None] = lambda s: None,
                  progress: Callable[[str, int, int], None] | None = None) -> tuple[list[Path], dict[str, Any]]:
    """Load the recipe's model, make each variant, export it to each target (parity checked).

    Returns:
        The bundle paths, and the parity result of each bundle by its folder name.

    Raises:
        EdgesmithError: A step failed (load, pass, export, parity).
    """
    from edgesmith import api as es

    step(f"load {recipe.model}")
    source = es.load(recipe.model, weights=recipe.weights, inputs=recipe.inputs, gguf=recipe.gguf,
                     seq_len=recipe.seq_len, name=recipe.name)
    base = recipe.name or source.name
    bundles, parity = [], {}
    defaults = {"data": recipe.data} if recipe.data else None
    for variant in recipe.variants:
        name = variant_name(base, variant)
        current = source
        if variant.passes:
            step(f"{name}: {' -> '.join(variant.passes)}")
            current = es.optimize(source, variant.passes, defaults=defaults, progress=progress)
        for done in es.export_targets(current, out, recipe.targets, name=name, options=recipe.target_options,
                                      force=force, stage=lambda t: step(f"{name}: export to {t} and check parity")):
            bundles.append(done.bundle.path)
            parity[done.bundle.path.name] = done.parity
    return bundles, parity


def run_recipe(recipe: Recipe, out: str | Path | None = None, force: bool = False,
               step: Callable[[str], None] = lambda s: None,
               progress: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
    """Run a validated recipe: bundles, one profile document (``profile.json``), one report.

    Args:
        recipe: From :func:`load_recipe`.
        out: Output folder (default: the recipe's ``out``).
        force: Overwrite existing bundles, profile and report.
        step: Called with a description before each step.
        progress: Long passes' ``(description, completed, total)`` callback.

    Returns:
        ``{"out", "bundles", "parity", "profile", "report", "doc"}``.

    Raises:
        OutputExistsError: ``profile.json`` exists without ``force`` (bundles are checked by export).
        EdgesmithError: A step failed (load, pass, export, parity, profile).
    """
    from edgesmith import api as es

    out = Path(out or recipe.out)
    profile_path = out / "profile.json"
    if profile_path.exists() and not force:
        raise OutputExistsError(f"{profile_path} exists", hint="pass --force to run the recipe over it")
    bundles, parity = build_bundles(recipe, out, force, step, progress)
    step(f"profile on {', '.join(recipe.devices)}")
    doc = es.profile(bundles, device=recipe.devices, runs=recipe.runs, warmup=recipe.warmup,
                     threads=recipe.threads, layers=recipe.layers, device_files=recipe.device_files)
    doc["recipe"] = str(recipe.path)
    profile_path.write_text(json.dumps(doc, indent=2))
    written = []
    if recipe.report:
        step("write report")
        written = es.report([doc], out / "report.html", force=True)
    return {"out": out, "bundles": bundles, "parity": parity, "profile": profile_path, "report": written,
            "doc": doc}
