"""``edgesmith demo``: zoo:digits-cnn and its reparam variant to ONNX and torch, verified, profiled, reported."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from edgesmith.errors import OutputExistsError

MARKER = ".edgesmith-demo"
# measured here, then predicted on a Jetson GPU, a phone's Neural Engine and a Raspberry Pi CPU
DEVICES = ("host", "jetson-orin-nano", "apple-a17-pro-ane", "raspberry-pi-5")


def demo_recipe(out: str | Path = "edgesmith-demo", runs: int = 200):
    """The demo's pipeline as a recipe (``examples/demo.yaml`` holds the same one; a test keeps them equal)."""
    from edgesmith.pipeline.recipe import Recipe, Variant

    return Recipe(path=Path("<edgesmith demo>"), model="zoo:digits-cnn",
                  variants=[Variant("digits-cnn", []), Variant("digits-cnn-reparam", ["reparam"])],
                  targets=["onnx", "torch"], devices=list(DEVICES), runs=runs, warmup=10, out=str(out))


def run_demo(out: str | Path = "edgesmith-demo", runs: int = 200,
             step: Callable[[str], None] = lambda s: None) -> dict:
    """Run the whole pipeline on the built-in digits CNN.

    The digits CNN as loaded and with BatchNorm folded (``reparam``), each exported
    to ONNX and torch with parity checked, verified again from disk, measured on the
    host and predicted on three catalog devices, then one report. The output
    directory is the demo's own: it is reused across runs when it carries the demo's
    marker file, and refused otherwise.

    Args:
        out: Output directory.
        runs: Timed runs per bundle.
        step: Called with a description before each step (for progress display).

    Returns:
        ``{"bundles", "parity", "profile", "report", "doc"}`` paths and results.

    Raises:
        OutputExistsError: ``out`` exists and was not made by the demo.
    """
    from edgesmith import api as es
    from edgesmith.pipeline.recipe import run_recipe

    out = Path(out)
    if out.exists() and not (out / MARKER).exists():
        raise OutputExistsError(f"{out} exists and was not made by the demo", hint="choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("made by `edgesmith demo`; safe to delete\n")
    results = run_recipe(demo_recipe(out, runs), out=out, force=True, step=step)
    parity = {}
    for path in results["bundles"]:
        step(f"verify {path.name} from disk")
        parity[path.name] = es.verify(path)
    results["parity"] = parity
    return results
