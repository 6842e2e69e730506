"""ONNX Runtime loader for ``onnx`` bundles: the CPU execution provider, or CUDA's where onnxruntime has it."""

from __future__ import annotations

import ast
import json
import os
import re
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from edgesmith.errors import BadInputError, RuntimeUnavailableError, require
from edgesmith.runtimes.base import RUNTIMES, Runtime



def _options(threads: int, profile_prefix: str | None = None, shapes_vary: bool = False):
    ort = require("onnxruntime", "all")
    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    if shapes_vary:  # a generation step's shapes change every token: a memory pattern planned per shape
        so.enable_mem_pattern = False  # is never reused (SmolLM2's decode step: ~5% slower with it)
    so.log_severity_level = 3
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    return so


@RUNTIMES.register
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
        self.session = ort.InferenceSession(
            str(self.bundle.model_path), _options(self.threads, shapes_vary=bool(self.bundle.manifest.generation)),
            providers=self.providers)
        self._outputs = [o.name for o in self.session.get_outputs()]

    def _run_impl(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self._outputs, self.session.run(None, feeds)))

    def kv_stepper(self, record: dict[str, Any], capacity: int | None = None) -> "BoundStepper":
        """A generation stepper that keeps the KV cache in ONNX Runtime's buffers (IO binding).

        Args:
            record: The manifest's ``generation`` record.
            capacity: Positions the whole generation needs (prompt + new tokens); with it, a graph
                whose attention is ``GroupQueryAttention`` writes each step's keys and values in
                place into one buffer of that length (nothing copied per step).
        """
        fuse = self.bundle.manifest.details.get("fuse") or {}
        present = next((o for o in self.session.get_outputs() if o.name.startswith("present_")), None)
        shared = bool(capacity and fuse.get("applied") and "GroupQueryAttention" in fuse.get("contrib_ops", ())
                      and present is not None and not isinstance(present.shape[2], int))
        return BoundStepper(self.session, record, "cuda" if self.accelerator == "cuda" else "cpu",
                            capacity if shared else None)


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


class BoundStepper:
    """Generation steps over IO binding: numpy sees only the token ids and the last logits.

    Two ways to hold the cache. By default each step's present keys and values (ONNX Runtime's
    own values) are bound as the next step's past ones. With ``capacity`` (a fused graph whose
    ``GroupQueryAttention`` takes a buffer longer than the context, reading the valid length from
    the attention mask), one buffer per layer of ``capacity`` positions is bound as both the past
    and the present: the operator writes the new positions in place, so no step copies the cache.
    """

    def __init__(self, session, record: dict[str, Any], device: str, capacity: int | None = None):
        from edgesmith.runtimes.kv import empty_cache

        ort = require("onnxruntime", "all")
        self.session = session
        self.device = device
        self.binding = session.io_binding()
        self.capacity = capacity
        cache = empty_cache(record, length=capacity or 0)
        self.past = {name: ort.OrtValue.ortvalue_from_numpy(arr, device) for name, arr in cache.items()}
        self.outputs = [o.name for o in session.get_outputs()]
        if capacity:  # bound once: the same buffers are every step's past and present
            for name, value in self.past.items():
                self.binding.bind_ortvalue_input(name, value)
                self.binding.bind_ortvalue_output("present" + name[4:], value)
        vocab = next((o.shape[-1] for o in session.get_outputs() if o.name == "logits"), None)
        # on the CPU the logits go straight into a numpy array: fetching the outputs would wrap every
        # bound output (the whole cache, 2 per layer) in a Python object each step (~0.3 ms of a ~20 ms step)
        self.vocab = vocab if isinstance(vocab, int) and device == "cpu" else None
        self._logits: dict[tuple[int, int], np.ndarray] = {}

    def step(self, ids: np.ndarray, start: int, extra: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """Run one step (``extra``: more feeds, a Dolphin decoder's memories); return the last logits ``(vocab,)``
        (on the CPU with a capacity: a view of the step's output buffer, valid until the next step)."""
        from edgesmith.runtimes.kv import step_feeds

        io = self.binding
        feeds = {**step_feeds(ids, start), **(extra or {})}
        if self.capacity:
            if start + ids.shape[1] > self.capacity:
                raise BadInputError(f"step at {start} + {ids.shape[1]} positions overflows the cache of "
                                    f"{self.capacity}", hint="give a larger capacity (prompt + new tokens)")
            for name, arr in feeds.items():
                io.bind_cpu_input(name, arr)
            if self.vocab is None:
                io.bind_output("logits", self.device)
                self.session.run_with_iobinding(io)
                return io.get_outputs()[-1].numpy()[0, -1]  # outputs come in binding order: logits last
            logits = self._logits_buffer(ids.shape)
            self.session.run_with_iobinding(io)
            # a view, valid until the next step (a copy would allocate 200 KB per token: an mmap and its page faults)
            return logits[0, -1]
        io.clear_binding_inputs()
        io.clear_binding_outputs()
        for name, arr in feeds.items():
            io.bind_cpu_input(name, arr)
        for name, value in self.past.items():
            io.bind_ortvalue_input(name, value)
        for name in self.outputs:
            io.bind_output(name, self.device)
        self.session.run_with_iobinding(io)
        values = dict(zip(self.outputs, io.get_outputs()))
        self.past = {name: values["present" + name[4:]] for name in self.past}
        return values["logits"].numpy()[0, -1]

    def _logits_buffer(self, shape: tuple[int, int]) -> np.ndarray:
        """A numpy array bound as the ``logits`` output of a step of ``shape`` (kept for one-token steps)."""
        ort = require("onnxruntime", "all")

        arr = self._logits.get(shape)
        if arr is None:
            arr = np.empty((*shape, self.vocab), np.float32)
            if shape[1] == 1:
                self._logits[shape] = arr
        self.binding.bind_ortvalue_output("logits", ort.OrtValue.ortvalue_from_numpy(arr))
        return arr


_ORT_SUFFIX = re.compile(r"(_nchwc|_token_\d+|_output_\d+)+$")


def _scope_of(node: str, scopes: dict[str, str]) -> str:
    """Source module of a profiled node, also for nodes ONNX Runtime renamed when fusing."""
    base = _ORT_SUFFIX.sub("", node.removeprefix("fused ").strip())
    for name in (node, base, f"node_{base}"):
        if name in scopes:
            return scopes[name]
    return ""


def _node_scopes(path) -> dict[str, str]:
    """ONNX node name -> source module path, from the dynamo exporter's metadata.

    Read from the protobuf wire format, not with the ``onnx`` package: a device's
    runtime-only install has onnxruntime but not onnx. Field numbers are onnx.proto's.
    """
    scopes = {}
    model = memoryview(Path(path).read_bytes())
    graphs = [value for field, value in _fields(model) if field == _MODEL_GRAPH]
    for graph in graphs:
        for node in (value for field, value in _fields(graph) if field == _GRAPH_NODE):
            name, scope = "", None
            for field, value in _fields(node):
                if field == _NODE_NAME:
                    name = bytes(value).decode()
                elif field == _NODE_METADATA:
                    entry = dict(_fields(value))
                    if bytes(entry.get(_ENTRY_KEY, b"")) == b"pkg.torch.onnx.name_scopes":
                        scope = bytes(entry.get(_ENTRY_VALUE, b"")).decode()
            if scope is None:
                continue
            try:
                parts = [p for p in ast.literal_eval(scope) if p]
            except (ValueError, SyntaxError):
                continue
            # the last entry names the op itself; the one before is its module
            if len(parts) >= 2:
                scopes[name] = parts[-2]
    return scopes


# onnx.proto field numbers: ModelProto.graph, GraphProto.node, NodeProto.name and .metadata_props,
# StringStringEntryProto.key and .value
_MODEL_GRAPH, _GRAPH_NODE, _NODE_NAME, _NODE_METADATA, _ENTRY_KEY, _ENTRY_VALUE = 7, 1, 3, 9, 1, 2


def _fields(message: memoryview) -> Iterator[tuple[int, Any]]:
    """The (field number, value) pairs of one protobuf message, in order.

    Varints come as ints, length-delimited fields (strings, bytes, sub-messages) as views
    into ``message`` (no copy, so initializers are skipped, not read), fixed-width ones as None.
    """
    i, end = 0, len(message)
    while i < end:
        key, i = _varint(message, i)
        wire = key & 7
        if wire == 0:
            value, i = _varint(message, i)
        elif wire == 2:
            size, i = _varint(message, i)
            value, i = message[i:i + size], i + size
        elif wire in (1, 5):
            value, i = None, i + (8 if wire == 1 else 4)
        else:
            raise BadInputError(f"model.onnx: protobuf wire type {wire} at byte {i} is not one ONNX uses")
        yield key >> 3, value


def _varint(buf: memoryview, i: int) -> tuple[int, int]:
    """Decode the base-128 varint at ``buf[i]``; return it and the index after it."""
    value = shift = 0
    while True:
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i
        shift += 7
