"""Reading a Core ML package (``model.mlpackage``) with numpy and protobuf only.

An ML package is a directory: ``Manifest.json`` names the root item (the
``Model`` protobuf, ``Data/com.apple.CoreML/model.mlmodel``), whose ML program
refers to weights in ``weights/weight.bin`` (MIL blob storage, format v2)::

    weight.bin: header (64 bytes: u32 count, u32 version=2, reserved)
                per blob, at the offset the program names, metadata (64 bytes:
                u32 sentinel 0xDEADBEEF, u32 dtype, u64 size in bytes, u64 data offset, reserved)
                and the raw little-endian data at the data offset.

``import coremltools`` imports torch (and, off macOS, logs that its native
predictor is missing), which a runtime must not do. Only the generated protobuf
modules in ``coremltools/proto`` are needed, so they are loaded from that
directory under a private package name without running ``coremltools/__init__``;
where coremltools is already imported, its own modules are used.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np

from edgesmith.errors import BadInputError, missing_extra

_PROTO_ALIAS = "_edgesmith_coremltools_proto"
_BLOB_SENTINEL = 0xDEADBEEF

# MIL DataType enum value -> numpy dtype (MIL.proto); others (4-bit, fp8, bf16) are refused.
_DTYPES = {
    1: np.dtype(bool), 10: np.dtype(np.float16), 11: np.dtype(np.float32), 12: np.dtype(np.float64),
    21: np.dtype(np.int8), 22: np.dtype(np.int16), 23: np.dtype(np.int32), 24: np.dtype(np.int64),
    31: np.dtype(np.uint8), 32: np.dtype(np.uint16), 33: np.dtype(np.uint32), 34: np.dtype(np.uint64),
}
STRING = 2


def proto_modules() -> tuple[Any, Any]:
    """Return coremltools' generated ``Model_pb2`` and ``MIL_pb2`` modules, without importing coremltools.

    Raises:
        RuntimeUnavailableError: coremltools (or protobuf) is not installed.
    """
    if "coremltools.proto.Model_pb2" in sys.modules:
        return sys.modules["coremltools.proto.Model_pb2"], sys.modules["coremltools.proto.MIL_pb2"]
    if _PROTO_ALIAS not in sys.modules:
        try:
            spec = importlib.util.find_spec("coremltools")  # finds the package without running it
        except (ImportError, ValueError):
            spec = None
        if spec is None or not spec.submodule_search_locations:
            raise missing_extra("coremltools", "coreml")
        proto_dir = Path(list(spec.submodule_search_locations)[0]) / "proto"
        if not (proto_dir / "Model_pb2.py").is_file():
            raise missing_extra("coremltools", "coreml")
        package = types.ModuleType(_PROTO_ALIAS)
        package.__path__ = [str(proto_dir)]
        sys.modules[_PROTO_ALIAS] = package
    try:
        model_pb2 = importlib.import_module(f"{_PROTO_ALIAS}.Model_pb2")
        mil_pb2 = importlib.import_module(f"{_PROTO_ALIAS}.MIL_pb2")
    except ImportError as exc:  # protobuf missing or too old for the generated code
        raise missing_extra(f"coremltools' protobuf modules ({exc})", "coreml") from None
    return model_pb2, mil_pb2


def read_model(package: Path) -> tuple[Any, Path]:
    """Read the ``Model`` spec of an ML package.

    Args:
        package: The ``.mlpackage`` directory.

    Returns:
        The spec and the directory its ``@model_path`` names (holding ``weights/``).

    Raises:
        BadInputError: Not an ML package, or an unreadable spec.
    """
    package = Path(package)
    try:
        manifest = json.loads((package / "Manifest.json").read_text())
        root = manifest["itemInfoEntries"][manifest["rootModelIdentifier"]]
        spec_path = package / "Data" / root["path"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BadInputError(f"{package} is not a readable ML package: {exc}") from None
    model_pb2, _ = proto_modules()
    spec = model_pb2.Model()
    try:
        spec.ParseFromString(spec_path.read_bytes())
    except Exception as exc:  # protobuf's DecodeError and OSError
        raise BadInputError(f"{spec_path}: not a Core ML model spec ({exc})") from None
    return spec, spec_path.parent


def numpy_dtype(data_type: int, what: str) -> np.dtype:
    """The numpy dtype of a MIL ``DataType`` value.

    Raises:
        BadInputError: A type the evaluator does not compute in (sub-byte, fp8, bf16).
    """
    if data_type not in _DTYPES:
        _, mil_pb2 = proto_modules()
        raise BadInputError(f"{what}: MIL data type {mil_pb2.DataType.Name(data_type)} is not supported "
                            "by the Core ML evaluator", hint="export without weight compression")
    return _DTYPES[data_type]


class BlobStore:
    """Weights of an ML program: ``@model_path/...`` blob files, memory-mapped on first use.

    Args:
        model_dir: The directory holding ``model.mlmodel``.
    """

    def __init__(self, model_dir: Path):
        self.model_dir = model_dir
        self._files: dict[str, np.ndarray] = {}

    def _file(self, name: str) -> np.ndarray:
        if name not in self._files:
            rel = name.removeprefix("@model_path/")
            path = (self.model_dir / rel).resolve()
            if self.model_dir.resolve() not in path.parents or not path.is_file():
                raise BadInputError(f"ML program weights {name!r} are missing or outside the package")
            self._files[name] = np.memmap(path, dtype=np.uint8, mode="r")
        return self._files[name]

    def read(self, name: str, offset: int, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        """Read one blob as an array of ``dtype`` and ``shape``.

        Raises:
            BadInputError: A corrupt blob (bad sentinel, size or offset).
        """
        buf = self._file(name)
        meta = buf[offset:offset + 24]
        if meta.size < 24:
            raise BadInputError(f"{name}: blob at offset {offset} is past the end of the file")
        sentinel, _ = np.frombuffer(meta[:8], "<u4")
        size, data_offset = np.frombuffer(meta[8:24], "<u8")
        count = int(np.prod(shape, dtype=np.int64))
        if sentinel != _BLOB_SENTINEL or size != count * dtype.itemsize or data_offset + size > buf.size:
            raise BadInputError(f"{name}: corrupt blob at offset {offset}")
        data = np.frombuffer(buf[data_offset:data_offset + size], dtype.newbyteorder("<"))
        return data.reshape(shape).astype(dtype)


def tensor_shape(tensor_type) -> tuple[int, ...] | None:
    """Constant shape of a MIL tensor type, or None where a dimension is unknown."""
    dims = []
    for d in tensor_type.dimensions:
        if d.WhichOneof("dimension") != "constant":
            return None
        dims.append(int(d.constant.size))
    return tuple(dims)


def decode_value(value, blobs: BlobStore, what: str) -> Any:
    """Decode a MIL ``Value`` (an op's constant): a numpy array, a string, or a list of them.

    Raises:
        BadInputError: A value kind the evaluator does not read (dictionaries, sub-byte types).
    """
    kind = value.WhichOneof("value")
    vtype = value.type.WhichOneof("type")
    if kind == "blobFileValue":
        t = value.type.tensorType
        return blobs.read(value.blobFileValue.fileName, int(value.blobFileValue.offset),
                          numpy_dtype(t.dataType, what), tensor_shape(t) or ())
    imm = value.immediateValue
    which = imm.WhichOneof("value")
    if which in ("tuple", "list"):
        return [decode_value(v, blobs, what) for v in getattr(imm, which).values]
    if which != "tensor" or vtype != "tensorType":
        raise BadInputError(f"{what}: constant of kind {which or vtype!r} is not supported by the Core ML evaluator")
    t = value.type.tensorType
    field = imm.tensor.WhichOneof("value")
    shape = tensor_shape(t) or ()
    if t.dataType == STRING:
        strings = list(imm.tensor.strings.values)
        return strings[0] if not shape and strings else np.array(strings).reshape(shape)
    dtype = numpy_dtype(t.dataType, what)
    if field == "bytes":
        arr = np.frombuffer(imm.tensor.bytes.values, dtype.newbyteorder("<")).astype(dtype)
    elif field is None:
        arr = np.zeros(0, dtype)
    else:
        arr = np.array(list(getattr(imm.tensor, field).values)).astype(dtype)
    return arr.reshape(shape)
