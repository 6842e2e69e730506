"""Start-up time of the command line: ``edgesmith --help`` in fresh processes.

Each run is a new Python process running the ``edgesmith`` console script (what a user
types), timed from start to exit; the median of the runs is reported. With ``--ref`` the
code at that git ref is checked out into a temporary ``git worktree`` and timed the same
way, with the same virtual environment (``PYTHONPATH`` puts the worktree's ``edgesmith``
first), in interleaved rounds (here, ref, here, ...) so that load from other processes
hits both alike. One untimed run of each first writes the bytecode caches, and one more
says which heavy libraries (torch, numpy, ...) printing the help imported.

Usage (from the repo root, after `make install`):
    .venv/bin/python benchmarks/cli_startup.py [--ref GIT_REF] [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _command() -> list[str]:
    """The ``edgesmith`` console script of this interpreter's environment (else the same through ``-c``)."""
    script = Path(sys.executable).parent / "edgesmith"
    if script.is_file():
        return [sys.executable, str(script), "--help"]
    return [sys.executable, "-c", "from edgesmith.cli import entry; entry()", "--help"]


def time_help(tree: Path) -> float:
    """Seconds one fresh process takes to print ``edgesmith --help`` with ``tree``'s edgesmith.

    Raises:
        RuntimeError: The command failed, or imported edgesmith from elsewhere than ``tree``.
    """
    env = {**os.environ, "PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    r = subprocess.run(_command(), capture_output=True, text=True, env=env, cwd=tree)
    seconds = time.perf_counter() - start
    if r.returncode != 0 or "Usage:" not in r.stdout:
        raise RuntimeError(f"edgesmith --help failed in {tree} (exit {r.returncode}): {r.stderr[-2000:]}")
    return seconds


def _check_source(tree: Path) -> None:
    """Make sure a process given ``tree`` on PYTHONPATH imports edgesmith from it (not the editable install)."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    r = subprocess.run([sys.executable, "-c", "import edgesmith; print(edgesmith.__file__)"],
                       capture_output=True, text=True, env=env, cwd=tree, check=True)
    if not Path(r.stdout.strip()).resolve().is_relative_to(tree.resolve()):
        raise RuntimeError(f"edgesmith imports from {r.stdout.strip()}, not from {tree}")


HEAVY = ("torch", "transformers", "coremltools", "mlx", "hls4ml", "onnx", "onnxscript", "onnxruntime", "numpy")


def heavy_imports(tree: Path) -> list[str]:
    """The heavy libraries a process printing ``edgesmith --help`` with ``tree``'s edgesmith has imported."""
    code = ("import contextlib, io, sys\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    from edgesmith.cli import main\n"
            "    main(['--help'])\n"
            f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))\n")
    env = {**os.environ, "PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tree, check=True)
    return [m for m in r.stdout.strip().splitlines()[-1].split(",") if m] if r.stdout.strip() else []


def _machine() -> str:
    import platform

    from edgesmith.devices.host import fingerprint

    env = fingerprint()
    return (f"{env['cpu']}, {env['cores_usable']} cores usable of {env['cores_logical']}, {env['os']}, "
            f"Python {platform.python_version()}")


def _ms(seconds: list[float]) -> str:
    return ", ".join(f"{s * 1e3:.0f}" for s in seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", help="Also time the code at this git ref (a temporary git worktree).")
    parser.add_argument("--runs", type=int, default=5, help="Timed runs per tree [5].")
    args = parser.parse_args()

    trees = {"working tree": REPO}
    scratch = None
    if args.ref:
        scratch = Path(tempfile.mkdtemp(prefix="edgesmith-cli-startup-"))
        worktree = scratch / "ref"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "--quiet", str(worktree), args.ref],
                       check=True)
        trees[args.ref] = worktree
    try:
        for tree in trees.values():
            _check_source(tree)
            time_help(tree)  # untimed: writes the bytecode caches
        heavy = {label: heavy_imports(tree) for label, tree in trees.items()}
        runs: dict[str, list[float]] = {label: [] for label in trees}
        for _ in range(args.runs):
            for label, tree in trees.items():
                runs[label].append(time_help(tree))
    finally:
        if scratch is not None:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(scratch / "ref")],
                           check=False)
            shutil.rmtree(scratch, ignore_errors=True)

    print(f"machine: {_machine()}")
    print(f"edgesmith --help, {args.runs} fresh processes per tree (interleaved), wall time from start to exit; "
          f"heavy imports: which of {', '.join(HEAVY)} the process loaded")
    width = max(len(label) for label in runs)
    for label, seconds in runs.items():
        print(f"  {label:<{width}}  median {statistics.median(seconds) * 1e3:6.0f} ms  (runs, ms: {_ms(seconds)}); "
              f"heavy imports: {', '.join(heavy[label]) or 'none'}")
    if args.ref:
        here, there = (statistics.median(runs[k]) for k in ("working tree", args.ref))
        print(f"ratio {args.ref} / working tree: {there / here:.2f}x")


if __name__ == "__main__":
    sys.exit(main())
