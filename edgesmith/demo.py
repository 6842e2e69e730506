"""``edgesmith demo``: zoo:digits-cnn through reparam, ONNX and torch export, verify, profile, report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from edgesmith.errors import OutputExistsError

MARKER = ".edgesmith-demo"


def run_demo(out: str | Path = "edgesmith-demo", runs: int = 200,
             step: Callable[[str], None] = lambda s: None) -> dict:
    """Run the whole pipeline on the built-in digits CNN.

    The output directory is the demo's own: it is reused across runs when it
    carries the demo's marker file, and refused otherwise.

    Args:
        out: Output directory.
        runs: Timed runs per bundle.
        step: Called with a description before each step (for progress display).

    Returns:
        ``{"bundles", "parity", "profile", "report"}`` paths and results.

    Raises:
        OutputExistsError: ``out`` exists and was not made by the demo.
    """
    from edgesmith import api as es

    out = Path(out)
    if out.exists() and not (out / MARKER).exists():
        raise OutputExistsError(f"{out} exists and was not made by the demo", hint="choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("made by `edgesmith demo`; safe to delete\n")

    step("load zoo:digits-cnn")
    variant = es.load("zoo:digits-cnn")
    step("reparam: fold BatchNorm into Conv/Linear")
    variant = es.optimize(variant, ["reparam"])
    bundles, parity = [], {}
    for target in ("onnx", "torch"):
        step(f"export to {target} and check parity")
        bundle, result = es.export(variant, out, target=target, force=True)
        bundles.append(bundle.path)
    for path in bundles:
        step(f"verify {path.name}")
        parity[path.name] = es.verify(path)
    step(f"profile on host ({runs} runs each)")
    doc = es.profile(bundles, runs=runs)
    profile_path = out / "profile.json"
    profile_path.write_text(json.dumps(doc, indent=2))
    step("write report")
    written = es.report([doc], out / "report.html", force=True)
    return {"bundles": bundles, "parity": parity, "profile": profile_path, "report": written, "doc": doc}
