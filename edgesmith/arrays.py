"""Reading ``.npz`` files of numbers (golden data, ``--inputs``, training data) without unpickling.

Every array's ``.npy`` header is read and checked before any array: an object dtype (which
numpy would unpickle) and a header that claims more bytes than its member holds (which would
make numpy allocate the claimed size) are refused, naming the file and the array. numpy only:
runtimes read golden data on device.
"""

from __future__ import annotations

import math
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np

from edgesmith.errors import BadInputError

# what reading a damaged zip or .npy raises (zipfile: BadZipFile, NotImplementedError for an odd
# version, RuntimeError for an encrypted member; zlib.error for corrupt compressed data)
_READ_ERRORS = (OSError, ValueError, EOFError, KeyError, NotImplementedError, RuntimeError, zipfile.BadZipFile,
                zlib.error, struct.error)


def load_arrays(path: str | Path, what: str) -> dict[str, np.ndarray]:
    """Read an ``.npz`` of numeric arrays without unpickling anything.

    Args:
        path: The file.
        what: What it is, for the messages (``inputs``, ``golden data``).

    Returns:
        Array name -> array (bool, integer, float or complex).

    Raises:
        BadInputError: Not an ``.npz`` (unreadable, truncated, a ``.npy`` or other file), or an
            array of objects, strings or another non-numeric dtype, naming the file and the array.
    """
    path = Path(path)
    try:
        file = open(path, "rb")  # ours to close, whatever np.load does with a damaged file
    except FileNotFoundError:
        raise BadInputError(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise BadInputError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    with file:
        return _read_npz(file, path, what)


def _read_npz(file, path: Path, what: str) -> dict[str, np.ndarray]:
    hint = "write it with numpy.savez(path, name=array, ...)"
    magic = file.read(6)
    file.seek(0)
    if magic.startswith(b"\x93NUMPY"):
        raise BadInputError(f"cannot read {what} {path}: it holds one bare array (.npy), not an .npz of named arrays",
                            hint=hint)
    if not magic.startswith(b"PK"):  # np.load would take anything else for a pickle
        raise BadInputError(f"cannot read {what} {path}: it is not an .npz (a zip archive of .npy arrays)",
                            hint=hint)
    try:
        z = np.load(file, allow_pickle=False)
    except _READ_ERRORS as exc:
        raise BadInputError(f"cannot read {what} {path}: it is not an .npz of arrays ({first_line(exc)})",
                            hint="write it with numpy.savez(path, name=array, ...)") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise BadInputError(f"cannot read {what} {path}: it holds one bare array, not an .npz of named arrays",
                            hint="write it with numpy.savez(path, name=array, ...)")
    arrays = {}
    with z:
        _check_headers(z.zip, path, what)
        for key in z.files:
            try:
                arr = z[key]
            except _READ_ERRORS as exc:
                raise BadInputError(f"cannot read array {key!r} of {what} {path} ({first_line(exc)})",
                                    hint="save numbers only: object arrays are refused, they would be unpickled"
                                    ) from None
            if not isinstance(arr, np.ndarray):  # a zip member that is not an .npy comes back as bytes
                raise BadInputError(f"{what} {path} holds {key!r}, which is not an array",
                                    hint="write it with numpy.savez(path, name=array, ...)")
            if arr.dtype.kind not in "biufc":
                raise BadInputError(f"array {key!r} of {what} {path} holds {arr.dtype} values, not numbers",
                                    hint="save numeric arrays (bool, int, float)")
            arrays[key] = arr
    return arrays


def _check_headers(archive, path: Path, what: str) -> None:
    """Read every member's ``.npy`` header, before any array, and refuse what must not be read.

    An object dtype would be unpickled; a header whose shape claims more bytes than the member
    holds (a truncated file, or a few bytes claiming a huge array) would make numpy allocate the
    claimed size before it notices.

    Raises:
        BadInputError: Naming the file, the array and what is wrong with it.
    """
    hint = "write it with numpy.savez(path, name=array, ...), numbers only"
    for info in archive.infolist():
        key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
        try:
            with archive.open(info) as f:
                version = np.lib.format.read_magic(f)
                read = {(1, 0): np.lib.format.read_array_header_1_0,
                        (2, 0): np.lib.format.read_array_header_2_0}.get(version)
                if read is None:
                    raise ValueError(f"unsupported .npy format version {version}")
                shape, _, dtype = read(f)
                start = f.tell()
        except (*_READ_ERRORS, SyntaxError, TypeError) as exc:
            raise BadInputError(f"{what} {path} holds {key!r}, which is not a readable array "
                                f"({first_line(exc)})", hint=hint) from None
        if dtype.hasobject:
            raise BadInputError(f"array {key!r} of {what} {path} holds Python objects, which are never unpickled",
                                hint=hint)
        claimed = math.prod(shape) * dtype.itemsize
        if claimed != info.file_size - start:
            raise BadInputError(f"array {key!r} of {what} {path} claims shape {tuple(shape)} {dtype} "
                                f"({claimed} bytes) but holds {info.file_size - start} bytes: truncated or corrupt",
                                hint=hint)


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (at most 200 characters), or its type's name."""
    text = str(exc).strip()
    return (text.splitlines()[0][:200] if text else "") or type(exc).__name__
