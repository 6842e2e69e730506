"""Compiled CPU kernels of edgesmith, built by ``make`` (``python -m edgesmith.kernels``).

One kernel so far: ``torch.ops.edgesmith.rsparse_matvec`` (``rsparse_decode.cpp``), the batch-1
decode path of an R-Sparse layer that reads only the weights of the active input channels and the
low-rank factors. It is a torch operator (C++ against torch's own headers and libraries) so it
runs on torch's intra-op threads, takes tensors without copies and is called from the layer's
``forward`` like any other op. Why not the alternatives: ONNX Runtime and MLX have no operator that
gathers weight rows by a data-dependent mask without materialising them, and a masked dense matmul
reads every weight, so it saves nothing on a memory-bound decode step.

The shared library is built with the host's compiler for the host's processor
(``-O3 -march=native``); it is not shipped in the package and is loaded only when present.
"""

from __future__ import annotations

import functools
import subprocess
import sysconfig
from pathlib import Path

from edgesmith.errors import RuntimeUnavailableError

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "rsparse_decode.cpp"
LIBRARY = HERE / "_rsparse_decode.so"


def build_command(output: Path = LIBRARY) -> list[str]:
    """The compiler command that builds the kernel library against the installed torch."""
    import torch
    from torch.utils import cpp_extension

    lib_dir = Path(torch.__file__).parent / "lib"
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    return ["c++", "-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-fopenmp",
            f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
            *(f"-I{p}" for p in cpp_extension.include_paths()), f"-I{sysconfig.get_paths()['include']}",
            str(SOURCE), "-o", str(output),
            f"-L{lib_dir}", "-lc10", "-ltorch_cpu", "-ltorch", f"-Wl,-rpath,{lib_dir}"]


def build(output: Path = LIBRARY) -> Path:
    """Compile the kernel library (atomic: a failed build leaves no library behind)."""
    partial = output.with_name(output.name + ".partial")
    result = subprocess.run(build_command(partial), capture_output=True, text=True)
    if result.returncode != 0:
        partial.unlink(missing_ok=True)
        raise RuntimeUnavailableError(f"building {SOURCE.name} failed:\n{result.stderr[-4000:]}",
                                      hint="a C++17 compiler (c++) and torch's headers are needed")
    partial.replace(output)
    return output


@functools.cache
def rsparse_matvec():
    """``torch.ops.edgesmith.rsparse_matvec``, or None where the library was not built."""
    if not LIBRARY.exists():
        return None
    import torch

    torch.ops.load_library(str(LIBRARY))
    return torch.ops.edgesmith.rsparse_matvec


def require_rsparse_matvec():
    """The kernel, or the error that says how to build it."""
    op = rsparse_matvec()
    if op is None:
        raise RuntimeUnavailableError("the R-Sparse decode kernel is not built",
                                      hint="run `make kernels` (or python -m edgesmith.kernels) in the repository")
    return op
