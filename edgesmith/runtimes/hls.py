"""HLS C-simulation loader for ``hls`` bundles.

An ``hls`` bundle holds the hls4ml project (``hls/``) and the C simulation
library hls4ml's ``build_lib.sh`` compiled from it with g++: the same C++ the
vendor tool synthesises, with ``ap_fixed`` arithmetic bit for bit, run on the
CPU. Its entry point ``<project>_float(float *in, float *out)`` takes one
sample in the model's own layout (channels first, flattened) and writes one
output; this loader calls it through ``ctypes`` for each sample of a batch.

Results are tier ``emulated`` (a faithful stand-in, not the FPGA) and its
timings are not an FPGA latency (``timing = "emulated"``; the bundle's predicted
cycle count is). If the shipped library cannot be loaded here (another CPU or
C library), the project is rebuilt with g++ into the edgesmith cache, never
inside the (hashed, read-only) bundle. numpy and the standard library only.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import re
import subprocess
import threading
from pathlib import Path

import numpy as np

from edgesmith.errors import BadInputError, RuntimeUnavailableError
from edgesmith.runtimes.base import RUNTIMES, Runtime

PROJECT_DIR = "hls"
WEIGHTS_DIR = "firmware/weights"
_LOCK = threading.Lock()


def build_library(project_dir: Path, project: str) -> Path:
    """Compile an hls4ml project's C simulation with its ``build_lib.sh``; return the library.

    Raises:
        RuntimeUnavailableError: No g++ here.
        BadInputError: The compiler failed (its last lines are in the message).
    """
    if shutil.which("g++") is None:
        raise RuntimeUnavailableError("g++ is not installed; the HLS C simulation is compiled with it",
                                      hint="install a C++ compiler (e.g. apt install g++)")
    for old in (project_dir / "firmware").glob(f"{project}-*.so"):
        old.unlink()
    # hls4ml's script compiles the absolute path of the weights into the library; the bundle moves, so the
    # library is built to read them relative to the working directory (CSim loads them from the project)
    script = (project_dir / "build_lib.sh").read_text()
    script, n = re.subn(r'^WEIGHTS_DIR=.*$', f'WEIGHTS_DIR=\'"{WEIGHTS_DIR}"\'', script, flags=re.M)
    if n != 1:
        raise BadInputError(f"{project_dir / 'build_lib.sh'} does not set WEIGHTS_DIR as hls4ml writes it",
                            hint="re-export the bundle with a supported hls4ml")
    proc = subprocess.run(["bash", "-c", script, "build_lib.sh"], cwd=project_dir, capture_output=True, text=True)
    libs = sorted((project_dir / "firmware").glob(f"{project}-*.so"))
    if proc.returncode != 0 or not libs:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-8:])
        raise BadInputError(f"compiling the HLS C simulation of {project} failed:\n{tail}",
                            hint="check the layer types and precisions in the project's firmware/defines.h")
    return libs[-1]


class CSim:
    """The compiled C simulation of one project, callable on numpy batches.

    The library reads its weights (``firmware/weights/*.txt``) on its first call, relative to the working
    directory, so that call is made here, from the project directory.
    """

    def __init__(self, library: Path, project: str, n_in: int, out_shape: tuple[int, ...]):
        self.library = library
        self._lib = ctypes.CDLL(str(library))
        fn = getattr(self._lib, f"{project}_float", None)
        if fn is None:
            raise BadInputError(f"{library.name} has no function {project}_float", hint="re-export the bundle")
        fn.restype = None
        fn.argtypes = [ctypes.POINTER(ctypes.c_float), ctypes.POINTER(ctypes.c_float)]
        self._fn = fn
        self.n_in = n_in
        self.out_shape = tuple(out_shape)
        project_dir = library.parent.parent
        missing = [p.name for p in (project_dir / WEIGHTS_DIR).glob("*.h") if not p.with_suffix(".txt").exists()]
        if missing:
            raise BadInputError(f"{project_dir} lacks the weight files of {', '.join(sorted(missing)[:3])}",
                                hint="re-export the bundle")
        with _LOCK:
            here = os.getcwd()
            os.chdir(project_dir)
            try:
                self(np.zeros((1, n_in), dtype=np.float32))
            finally:
                os.chdir(here)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        batch = x.shape[0]
        flat = np.ascontiguousarray(x.reshape(batch, -1), dtype=np.float32)
        if flat.shape[1] != self.n_in:
            raise BadInputError(f"the HLS model takes {self.n_in} values per sample, got {flat.shape[1]}")
        out = np.zeros((batch, int(np.prod(self.out_shape))), dtype=np.float32)
        ptr = ctypes.POINTER(ctypes.c_float)
        for i in range(batch):
            self._fn(flat[i].ctypes.data_as(ptr), out[i].ctypes.data_as(ptr))
        return out.reshape((batch, *self.out_shape))


def _cache_dir() -> Path:
    from edgesmith.runtimes.base import cache_dir

    return cache_dir("hls")


@RUNTIMES.register
class HlsRuntime(Runtime):
    """Runs an ``hls`` bundle's C simulation (tier ``emulated``)."""

    name = "hls"
    tier = "emulated"
    timing = "emulated"

    def _load_impl(self) -> None:
        m = self.bundle.manifest
        info = m.details.get("hls")
        if not info:
            raise BadInputError(f"{self.bundle.path.name} has no HLS record in its manifest", hint="re-export it")
        n_in = int(np.prod(m.inputs[0].shape[1:]))
        out_shape = tuple(m.outputs[0].shape[1:])
        library = self.bundle.path / info["library"]
        try:
            self.csim = CSim(library, info["project"], n_in, out_shape)
        except OSError:  # built for another machine: rebuild a private copy
            self.csim = CSim(self._rebuild(info), info["project"], n_in, out_shape)

    def _rebuild(self, info) -> Path:
        digest = self.bundle.manifest.files.get(PROJECT_DIR, {}).get("sha256", "")
        key = hashlib.sha256(f"{digest}{os.uname().machine}".encode()).hexdigest()[:16]
        work = _cache_dir() / key
        if not any((work / "firmware").glob(f"{info['project']}-*.so")):
            if work.exists():
                shutil.rmtree(work)
            shutil.copytree(self.bundle.path / PROJECT_DIR, work)
            build_library(work, info["project"])
        return sorted((work / "firmware").glob(f"{info['project']}-*.so"))[-1]

    def _run_impl(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        m = self.bundle.manifest
        return {m.outputs[0].name: self.csim(feeds[m.inputs[0].name])}
