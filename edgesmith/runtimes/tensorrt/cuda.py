"""The few CUDA driver calls the TensorRT runtime needs, through ``ctypes`` (no torch, no extra package).

``libcuda`` is the NVIDIA driver's own library: present wherever an NVIDIA GPU
can run anything, absent elsewhere, so :func:`gpus` doubles as GPU detection.
Device memory, copies and a stream are what TensorRT's ``execute_async_v3``
needs; the primary context is the one the CUDA runtime (and TensorRT) uses.
"""

from __future__ import annotations

import ctypes
import functools
import sys

import numpy as np

from edgesmith.errors import RuntimeUnavailableError

_ATTR_CC_MAJOR, _ATTR_CC_MINOR = 75, 76  # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR / _MINOR


@functools.cache
def _driver():
    """The loaded driver library with ``cuInit`` done, or None (no driver, or no usable GPU)."""
    names = ("nvcuda.dll",) if sys.platform == "win32" else ("libcuda.so.1", "libcuda.so")
    for name in names:
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        if lib.cuInit(0) == 0:
            return lib
    return None


def _check(result: int, call: str) -> None:
    if result != 0:
        text = ctypes.c_char_p()
        lib = _driver()
        if lib is not None:
            lib.cuGetErrorName(result, ctypes.byref(text))
        raise RuntimeUnavailableError(f"CUDA call {call} failed: {(text.value or b'').decode() or result}")


def gpus() -> list[str]:
    """Names of the CUDA GPUs here (``NVIDIA H200``...), empty without a driver or a GPU."""
    lib = _driver()
    if lib is None:
        return []
    count = ctypes.c_int()
    if lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return []
    names = []
    for i in range(count.value):
        buf = ctypes.create_string_buffer(256)
        dev = ctypes.c_int()
        _check(lib.cuDeviceGet(ctypes.byref(dev), i), "cuDeviceGet")
        _check(lib.cuDeviceGetName(buf, 256, dev), "cuDeviceGetName")
        names.append(buf.value.decode())
    return names


def compute_capability(index: int = 0) -> str:
    """``major.minor`` of a GPU (an engine runs only on the compute capability it was built for)."""
    lib = require_driver()
    dev, major, minor = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
    _check(lib.cuDeviceGet(ctypes.byref(dev), index), "cuDeviceGet")
    _check(lib.cuDeviceGetAttribute(ctypes.byref(major), _ATTR_CC_MAJOR, dev), "cuDeviceGetAttribute")
    _check(lib.cuDeviceGetAttribute(ctypes.byref(minor), _ATTR_CC_MINOR, dev), "cuDeviceGetAttribute")
    return f"{major.value}.{minor.value}"


def require_driver():
    """The driver library, or the error saying there is no CUDA GPU here (exit code 5)."""
    lib = _driver()
    if lib is None or not gpus():
        raise RuntimeUnavailableError("no NVIDIA GPU with a CUDA driver here (libcuda not found or no device)",
                                      hint="run this on a machine with an NVIDIA GPU (a Jetson, a GPU server)")
    return lib


class Context:
    """The primary context of a GPU, made current on this thread while the object lives."""

    def __init__(self, index: int = 0):
        self._lib = lib = require_driver()
        self._dev = ctypes.c_int()
        _check(lib.cuDeviceGet(ctypes.byref(self._dev), index), "cuDeviceGet")
        self.handle = ctypes.c_void_p()
        _check(lib.cuDevicePrimaryCtxRetain(ctypes.byref(self.handle), self._dev), "cuDevicePrimaryCtxRetain")
        _check(lib.cuCtxSetCurrent(self.handle), "cuCtxSetCurrent")
        self.stream = ctypes.c_void_p()
        _check(lib.cuStreamCreate(ctypes.byref(self.stream), 0), "cuStreamCreate")

    def synchronize(self) -> None:
        """Wait for the work queued on the context's stream."""
        _check(self._lib.cuStreamSynchronize(self.stream), "cuStreamSynchronize")

    def close(self) -> None:
        """Release the stream and the context (buffers must be freed first)."""
        if self.stream:
            self._lib.cuStreamDestroy_v2(self.stream)
            self.stream = ctypes.c_void_p()
        if self.handle:
            self._lib.cuDevicePrimaryCtxRelease_v2(self._dev)
            self.handle = ctypes.c_void_p()


class Buffer:
    """Device memory of ``nbytes`` bytes; copies to and from numpy arrays on a context's stream."""

    def __init__(self, context: Context, nbytes: int):
        self._ctx = context
        self.nbytes = max(int(nbytes), 1)
        self.ptr = ctypes.c_uint64()
        _check(context._lib.cuMemAlloc_v2(ctypes.byref(self.ptr), ctypes.c_size_t(self.nbytes)), "cuMemAlloc")

    def upload(self, array: np.ndarray) -> None:
        """Copy a contiguous host array into the buffer (queued on the stream; the array must live until sync)."""
        _check(self._ctx._lib.cuMemcpyHtoDAsync_v2(self.ptr, array.ctypes.data_as(ctypes.c_void_p),
                                                   ctypes.c_size_t(array.nbytes), self._ctx.stream),
               "cuMemcpyHtoDAsync")

    def download(self, array: np.ndarray) -> None:
        """Copy the buffer's first ``array.nbytes`` bytes into a contiguous host array (queued on the stream)."""
        _check(self._ctx._lib.cuMemcpyDtoHAsync_v2(array.ctypes.data_as(ctypes.c_void_p), self.ptr,
                                                   ctypes.c_size_t(array.nbytes), self._ctx.stream),
               "cuMemcpyDtoHAsync")

    def free(self) -> None:
        """Give the memory back."""
        if self.ptr.value:
            self._ctx._lib.cuMemFree_v2(self.ptr)
            self.ptr = ctypes.c_uint64()
