"""ONNX Runtime loader for ``onnx`` bundles: the CPU execution provider, or CUDA's where onnxruntime has it."""

from __future__ import annotations

import ast
import json
import os
import re
import tempfile
from collections import defaultdict
from typing import Any

import numpy as np

from edgesmith.errors import RuntimeUnavailableError, require
from edgesmith.runtimes import RUNTIMES, Runtime



def _options(threads: int, profile_prefix: str | None = None):
    ort = require("onnxruntime", "all")
    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    so.log_severity_level = 3
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    return so


@RUNTIMES.register("onnxruntime")
class OnnxRuntime(Runtime):
    """Runs ``model.onnx`` with ONNX Runtime (tier ``verified``)."""

    name = "onnxruntime"
    tier = "verified"
    accelerators = ("cpu", "cuda")

    @classmethod
    def available(cls) -> None:
        require("onnxruntime", "all")

    def _load_impl(self) -> None:
        ort = require("onnxruntime", "all")
        self.providers = ["CPUExecutionProvider"]
        if self.accelerator == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise RuntimeUnavailableError(
                    f"onnxruntime {ort.__version__} here has no CUDA execution provider",
                    hint="install onnxruntime-gpu to run onnx bundles on the GPU, or profile the torch or "
                         "tensorrt bundle of the same variant")
            self.providers = ["CUDAExecutionProvider"]
        self.session = ort.InferenceSession(str(self.bundle.model_path), _options(self.threads),
                                            providers=self.providers)
        self._outputs = [o.name for o in self.session.get_outputs()]

    def _run_impl(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self._outputs, self.session.run(None, feeds)))

    def node_times(self, feeds: dict[str, np.ndarray], runs: int) -> list[dict[str, Any]]:
        """Per-node kernel times from ONNX Runtime's profiler, mapped to source modules.

        The dynamo exporter records each node's module path (``name_scopes``);
        nodes that ONNX Runtime fused or created keep only their op type. One
        profiling session runs ``runs + 1`` times; the first (warm-up) run's
        events are dropped by their time stamps.
        """
        ort = require("onnxruntime", "all")
        scopes = _node_scopes(self.bundle.model_path)
        with tempfile.TemporaryDirectory() as tmp:
            session = ort.InferenceSession(
                str(self.bundle.model_path), _options(self.threads, os.path.join(tmp, "ort")),
                providers=self.providers,
            )
            for _ in range(runs + 1):  # the first run warms up and is left out below
                session.run(None, feeds)
            with open(session.end_profiling()) as f:
                events = json.load(f)
        warmup = next((e for e in events if e.get("name") == "model_run"), None)
        if warmup is not None:
            end = warmup["ts"] + warmup.get("dur", 0)
            events = [e for e in events if not warmup["ts"] <= e.get("ts", -1) <= end]
        total: dict[str, float] = defaultdict(float)
        ops: dict[str, str] = {}
        for ev in events:
            if ev.get("cat") != "Node" or not ev.get("name", "").endswith("_kernel_time"):
                continue
            node = ev["name"][: -len("_kernel_time")]
            total[node] += ev.get("dur", 0) / 1000.0
            ops[node] = ev.get("args", {}).get("op_name", "")
        return [
            {"node": n, "op_type": ops[n], "scope": _scope_of(n, scopes), "mean_ms": t / max(runs, 1)}
            for n, t in sorted(total.items(), key=lambda kv: -kv[1])
        ]


_ORT_SUFFIX = re.compile(r"(_nchwc|_token_\d+|_output_\d+)+$")


def _scope_of(node: str, scopes: dict[str, str]) -> str:
    """Source module of a profiled node, also for nodes ONNX Runtime renamed when fusing."""
    base = _ORT_SUFFIX.sub("", node.removeprefix("fused ").strip())
    for name in (node, base, f"node_{base}"):
        if name in scopes:
            return scopes[name]
    return ""


def _node_scopes(path) -> dict[str, str]:
    """ONNX node name -> source module path, from the dynamo exporter's metadata."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    scopes = {}
    for node in model.graph.node:
        for prop in node.metadata_props:
            if prop.key == "pkg.torch.onnx.name_scopes":
                try:
                    parts = [p for p in ast.literal_eval(prop.value) if p]
                except (ValueError, SyntaxError):
                    continue
                # the last entry names the op itself; the one before is its module
                if len(parts) >= 2:
                    scopes[node.name] = parts[-2]
    return scopes
