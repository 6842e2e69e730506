"""TensorRT loader for ``tensorrt`` bundles (``model.engine``), on an NVIDIA GPU.

A TensorRT bundle exported where TensorRT or a GPU was missing holds only its
TensorRT-ready ``model.onnx`` (tier ``structural``); ``edgesmith build-engine``
on the target machine adds ``model.engine``. This loader deserialises the
engine with TensorRT's Python runtime, gives each input its shape (within the
engine's optimisation profile), and runs ``execute_async_v3`` on device memory
from :mod:`edgesmith.runtimes.tensorrt.cuda`. Tier ``verified``, timings measured on the
GPU (host-to-device copies of the inputs and device-to-host copies of the
outputs included). Without TensorRT, a GPU or an engine: exit code 5, saying
which and what to do.
"""

from __future__ import annotations

import numpy as np

from edgesmith.errors import BadInputError, RuntimeUnavailableError, require
from edgesmith.runtimes.base import RUNTIMES, Runtime

ONNX_FILE = "model.onnx"  # the TensorRT-ready graph every tensorrt bundle holds
ENGINE_FILE = "model.engine"  # the engine, once built


def tensorrt_unavailable() -> str | None:
    """Why TensorRT cannot build or run engines here (None where it can)."""
    from edgesmith.runtimes.tensorrt.cuda import gpus

    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "TensorRT is not installed here (pip install 'edgesmith[tensorrt]'; on a Jetson it comes with JetPack)"
    except OSError as exc:  # the package is there but its CUDA libraries are not
        return f"TensorRT is installed but cannot load: {exc}"
    if not gpus():
        return "there is no NVIDIA GPU with a CUDA driver here, and TensorRT builds and runs engines only on one"
    return None


@RUNTIMES.register
class TensorrtRuntime(Runtime):
    """Runs ``model.engine`` with TensorRT on the first CUDA GPU (tier ``verified``)."""

    name = "tensorrt"
    tier = "verified"
    accelerators = ("cuda",)

    @classmethod
    def available(cls) -> None:
        reason = tensorrt_unavailable()
        if reason:
            raise RuntimeUnavailableError(
                reason, hint="a tensorrt bundle runs where TensorRT and an NVIDIA GPU are: run "
                             "`edgesmith build-engine BUNDLE` there (or the bundle's build_engine.sh)")

    def _load_impl(self) -> None:
        from edgesmith.runtimes.tensorrt.cuda import Context

        m = self.bundle.manifest
        if m.model_file != ENGINE_FILE:
            raise RuntimeUnavailableError(
                f"bundle {self.bundle.path.name} has no TensorRT engine yet (tier structural: exported where "
                "TensorRT or a GPU was missing)",
                hint=f"run `edgesmith build-engine {self.bundle.path}` on the target machine")
        trt = require("tensorrt", "tensorrt")
        self._trt = trt
        self._logger = trt.Logger(trt.Logger.ERROR)
        self._context = Context()
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(self.bundle.model_path.read_bytes())
        if self.engine is None:
            built = (m.details.get("tensorrt") or {}).get("engine") or {}
            raise RuntimeUnavailableError(
                f"TensorRT {trt.__version__} could not load {self.bundle.path.name}'s engine (built with TensorRT "
                f"{built.get('tensorrt', '?')} on {built.get('gpu', '?')}, compute capability "
                f"{built.get('compute_capability', '?')})",
                hint=f"an engine runs only with the TensorRT version and GPU kind it was built for: "
                     f"`edgesmith build-engine {self.bundle.path} --force` here")
        self.execution = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self._inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._outputs = [n for n in names if n not in self._inputs]
        self._dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        self._buffers: dict = {}

    def _buffer(self, name: str, nbytes: int):
        from edgesmith.runtimes.tensorrt.cuda import Buffer

        buf = self._buffers.get(name)
        if buf is None or buf.nbytes < nbytes:  # grow only: timed runs reuse their memory
            if buf is not None:
                buf.free()
            buf = self._buffers[name] = Buffer(self._context, nbytes)
            self.execution.set_tensor_address(name, buf.ptr.value)
        return buf

    def _run_impl(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        staged = {}
        for name in self._inputs:
            arr = np.ascontiguousarray(feeds[name].astype(self._dtypes[name], copy=False))
            if not self.execution.set_input_shape(name, arr.shape):
                raise BadInputError(f"input {name} has shape {arr.shape}, outside the engine's optimisation "
                                    f"profile (min/opt/max: {self._profile(name)})",
                                    hint="re-export with -O min_shapes=... -O max_shapes=... covering it")
            self._buffer(name, arr.nbytes).upload(arr)
            staged[name] = arr  # alive until the copy is done
        outputs = {}
        for name in self._outputs:
            shape = tuple(self.execution.get_tensor_shape(name))
            out = np.empty(shape, self._dtypes[name])
            self._buffer(name, out.nbytes)
            outputs[name] = out
        if not self.execution.execute_async_v3(self._context.stream.value or 0):
            raise RuntimeUnavailableError(f"TensorRT failed to run {self.bundle.path.name}")
        for name, out in outputs.items():
            self._buffers[name].download(out)
        self._context.synchronize()
        return {s.name: outputs[s.name] for s in self.bundle.manifest.outputs}

    def _profile(self, name: str) -> str:
        shapes = self.engine.get_tensor_profile_shape(name, 0)
        return " / ".join("x".join(str(d) for d in s) for s in shapes)

    def __del__(self):
        self.execution = self.engine = None  # TensorRT's objects go before the memory and the context
        for buf in getattr(self, "_buffers", {}).values():
            buf.free()
        ctx = getattr(self, "_context", None)
        if ctx is not None:
            ctx.close()
