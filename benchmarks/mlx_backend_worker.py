"""Timing worker for ``benchmarks/mlx_backend.py``: runs MLX functions in its own process.

It needs only ``mlx`` and ``numpy`` (plus ``edgesmith`` for bundles, ``mlx_lm`` for mlx-lm), so
the same file runs in the edgesmith venv and in the mlx-lm peer venv, each started with or
without a BLAS in ``LD_PRELOAD``. One JSON request per stdin line, one JSON answer per stdout line:

    {"op": "load", "name": "shapeless", "kind": "bundle", "path": "...", "feeds": "feeds.npz"}
    {"op": "load", "name": "mlx-lm", "kind": "mlx-lm", "path": "model_dir", "feeds": "feeds.npz"}
    {"op": "load", "name": "matmul", "kind": "matmul", "gemms": [[M, K, N, count], ...]}
    {"op": "time", "name": "shapeless", "warmup": 1, "runs": 3}   -> {"times_ms": [...]}
    {"op": "output", "name": "shapeless", "path": "out.npy"}      -> {"ok": true}
    {"op": "info"}   -> which library MLX's ``cblas_sgemm`` binds to, the BLAS files mapped
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
import time

import mlx.core as mx
import numpy as np


def _bundle(req):
    from edgesmith.runtimes import open_runtime

    runtime = open_runtime(req["path"])
    feeds = dict(np.load(req["feeds"]))
    prepared = runtime.prepare(feeds)
    return lambda: next(iter(runtime.run_prepared(prepared).values()))


def _mlx_lm(req):
    from pathlib import Path

    from mlx_lm.utils import load_model

    model, _ = load_model(Path(req["path"]))
    feeds = np.load(req["feeds"])
    if not np.all(feeds["attention_mask"] == 1):
        raise SystemExit("the mlx-lm runner takes unpadded input (attention_mask all ones)")
    ids = mx.array(feeds["input_ids"].astype(np.int32))

    def run():
        logits = model(ids)
        mx.eval(logits)
        return np.array(logits)
    return run


def _matmul(req):
    """Each GEMM of a forward pass (``x @ w.T`` as ``nn.Linear`` does), with its own weight."""
    mx.random.seed(0)
    pairs = []
    for m, k, n, count in req["gemms"]:
        x = mx.random.normal((m, k))
        pairs += [(x, mx.random.normal((n, k)) * 0.02) for _ in range(count)]
    mx.eval(pairs)

    def run():
        outs = [x @ w.T for x, w in pairs]
        mx.eval(outs)
        return None
    return run


def _sgemm_binding() -> str:
    """The file whose ``cblas_sgemm`` MLX's calls resolve to (the global scope wins, as for libmlx)."""

    class DlInfo(ctypes.Structure):
        _fields_ = [("dli_fname", ctypes.c_char_p), ("dli_fbase", ctypes.c_void_p),
                    ("dli_sname", ctypes.c_char_p), ("dli_saddr", ctypes.c_void_p)]

    libdl = ctypes.CDLL(None)
    try:
        addr = ctypes.cast(libdl.cblas_sgemm, ctypes.c_void_p)
    except AttributeError:  # nothing global: libmlx binds to its own dependency
        libmlx = os.path.join(os.path.dirname(mx.__file__), "lib", "libmlx.so")
        addr = ctypes.cast(ctypes.CDLL(libmlx, mode=os.RTLD_NOLOAD).cblas_sgemm, ctypes.c_void_p)
    info = DlInfo()
    libdl.dladdr.argtypes = [ctypes.c_void_p, ctypes.POINTER(DlInfo)]
    libdl.dladdr(addr, ctypes.byref(info))
    return os.path.basename(info.dli_fname.decode())


def _info():
    with open("/proc/self/maps") as f:
        mapped = sorted({line.split()[-1] for line in f if "blas" in line.lower() and "/" in line})
    return {"cblas_sgemm": _sgemm_binding(), "blas_files": [os.path.basename(p) for p in mapped],
            "mlx": mx.__version__, "preload": os.environ.get("LD_PRELOAD", ""),
            "openblas_threads": os.environ.get("OPENBLAS_NUM_THREADS", "")}


def main() -> int:
    out = sys.stdout
    sys.stdout = sys.stderr  # library chatter must not reach the protocol stream
    runners = {}
    makers = {"bundle": _bundle, "mlx-lm": _mlx_lm, "matmul": _matmul}
    for line in sys.stdin:
        req = json.loads(line)
        op = req["op"]
        if op == "load":
            runners[req["name"]] = makers[req["kind"]](req)
            answer = {"ok": True}
        elif op == "time":
            fn = runners[req["name"]]
            for _ in range(req["warmup"]):
                fn()
            times = []
            for _ in range(req["runs"]):
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
            answer = {"times_ms": times}
        elif op == "output":
            np.save(req["path"], runners[req["name"]]())
            answer = {"ok": True}
        elif op == "info":
            answer = _info()
        else:
            answer = {"error": f"unknown op {op!r}"}
        out.write(json.dumps(answer) + "\n")
        out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
