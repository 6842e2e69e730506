"""The device catalog: one YAML file per device in ``edgesmith/devices/catalog/`` (ARCHITECTURE.md).

A :class:`Device` is frozen data: what the device can compute per precision, how
fast it moves memory, how much it holds, its power, the targets and runtimes it
supports, and where each figure comes from. Users add their own devices with
``--device-file FILE.yaml`` in the same format (``edgesmith devices show NAME``
prints one). ``host`` is the machine edgesmith runs on, detected at run time.

The targets and runtimes a file lists are names of the exporter and runtime registries,
which live in higher layers (a plugin adds its own): reading a file checks only that they
are names, and :func:`check_names` checks them against the registries' names, which the
caller that uses the device hands in.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from edgesmith.errors import BadInputError, UsageError

CATALOG_DIR = Path(__file__).parent / "catalog"
KINDS = ("cpu", "gpu", "npu", "fpga")
PRECISIONS = ("fp32", "fp16", "bf16", "int8", "int4")
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*$")


@dataclass(frozen=True)
class Device:
    """A device edgesmith can profile on (measured) or predict for.

    Attributes:
        name: Identifier (``jetson-orin-nano``), the file's stem.
        title: What it is, in words.
        kind: ``cpu``, ``gpu``, ``npu`` or ``fpga``.
        peak_tflops: Dense peak throughput per precision in TFLOP/s (TOPS for integers); empty if unknown.
        memory_bandwidth_gbs: Memory bandwidth, GB/s (None if unknown).
        memory_gb: Memory the device can use, GB (None if unknown).
        power_w: Power at the figures above, W (None if unknown).
        targets: Export targets whose artifacts run on it.
        runtimes: Runtimes that run them.
        sources: Where the figures come from.
        notes: How derived figures were computed.
        part: The FPGA part on the board (``fpga`` devices, optional): an hls bundle's predicted
            resources are set against its capacity.
        origin: The file it was read from (None for the detected host).
    """

    name: str
    title: str
    kind: str
    peak_tflops: dict[str, float]
    memory_bandwidth_gbs: float | None
    memory_gb: float | None
    power_w: float | None
    targets: tuple[str, ...]
    runtimes: tuple[str, ...]
    sources: tuple[str, ...] = ()
    notes: str = ""
    part: str = ""
    origin: str | None = field(default=None, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (the file format, plus ``origin``)."""
        data = dataclasses.asdict(self)
        data["targets"], data["runtimes"], data["sources"] = (list(self.targets), list(self.runtimes),
                                                               list(self.sources))
        return data

    @classmethod
    def from_dict(cls, data: Any, origin: str) -> Device:
        """Validate a parsed device file.

        Raises:
            BadInputError: Naming the file and the offending key or value.
        """
        if not isinstance(data, dict):
            raise BadInputError(f"{origin}: a device file is a mapping of keys, got {type(data).__name__}")
        fields = {f.name for f in dataclasses.fields(cls)} - {"origin"}
        odd = [k for k in data if not isinstance(k, str)]
        if odd:
            raise BadInputError(f"{origin}: key {odd[0]!r} is not a name", hint=f"keys: {', '.join(sorted(fields))}")
        unknown = sorted(set(data) - fields)
        if unknown:
            close = difflib.get_close_matches(unknown[0], fields, n=1)
            raise BadInputError(f"{origin}: unknown key {unknown[0]!r}",
                                hint=f"did you mean {close[0]!r}?" if close else f"keys: {', '.join(sorted(fields))}")
        missing = [k for k in ("name", "title", "kind", "peak_tflops", "memory_bandwidth_gbs", "memory_gb",
                               "power_w", "targets", "runtimes", "sources") if k not in data]
        if missing:
            raise BadInputError(f"{origin}: missing key {missing[0]!r}",
                                hint="see edgesmith devices show jetson-orin-nano for a complete file")
        name = data["name"]
        if not isinstance(name, str) or not _NAME.match(name):
            raise BadInputError(f"{origin}: name {name!r} must be lowercase letters, digits and hyphens")
        if data["kind"] not in KINDS:
            raise BadInputError(f"{origin}: kind {data['kind']!r} is not one of {', '.join(KINDS)}")
        peaks = data["peak_tflops"] or {}
        if not isinstance(peaks, dict):
            raise BadInputError(f"{origin}: peak_tflops must map precisions to numbers")
        for precision, value in peaks.items():
            if precision not in PRECISIONS:
                raise BadInputError(f"{origin}: peak_tflops has unknown precision {precision!r}",
                                    hint=f"use {', '.join(PRECISIONS)}")
            _positive(value, f"peak_tflops.{precision}", origin)
        for key in ("memory_bandwidth_gbs", "memory_gb", "power_w"):
            if data[key] is not None:
                _positive(data[key], key, origin)
        for key in ("targets", "runtimes"):
            values = data[key] or []
            if not isinstance(values, list):
                raise BadInputError(f"{origin}: {key} must be a list")
            bad = [v for v in values if not isinstance(v, str) or not v]
            if bad:
                raise BadInputError(f"{origin}: {key} has unknown {bad[0]!r}",
                                    hint="names as listed by edgesmith targets list (targets and their runtimes)")
        part = data.get("part") or ""
        if not isinstance(part, str) or (part and data["kind"] != "fpga"):
            raise BadInputError(f"{origin}: part must be an FPGA part number (a string) on an fpga device",
                                hint="e.g. part: xczu7ev-ffvc1156-2-e")
        sources = data["sources"] or []
        if not isinstance(sources, list) or not all(isinstance(s, str) for s in sources):
            raise BadInputError(f"{origin}: sources must be a list of strings")
        return cls(name=name, title=str(data["title"]), kind=data["kind"],
                   peak_tflops={k: float(v) for k, v in peaks.items()},
                   memory_bandwidth_gbs=_num(data["memory_bandwidth_gbs"]), memory_gb=_num(data["memory_gb"]),
                   power_w=_num(data["power_w"]), targets=tuple(data["targets"] or ()),
                   runtimes=tuple(data["runtimes"] or ()), sources=tuple(sources),
                   notes=str(data.get("notes") or "").strip(), part=part, origin=origin)


def _positive(value: Any, key: str, origin: str) -> None:
    try:
        number = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    except OverflowError:
        number = None
    if number is None or not 0 < number < float("inf"):  # also refuses nan
        raise BadInputError(f"{origin}: {key} must be a positive number, got {value!r}")


def _num(value: Any) -> float | None:
    return None if value is None else float(value)


def check_names(devices: Iterable[Device], known: Mapping[str, Iterable[str]]) -> None:
    """Refuse a device whose targets or runtimes are not names the registries know.

    Args:
        devices: The devices to check (the built-in host is checked like a file).
        known: ``{"targets": export target names, "runtimes": runtime names}``, from the
            registries (plugins included), handed in by the layer that has them.

    Raises:
        BadInputError: Naming the device's file, the key and the first unknown name.
    """
    for device in devices:
        for key, names in known.items():
            names = list(names)
            bad = [v for v in getattr(device, key) if v not in names]
            if bad:
                raise BadInputError(f"{device.origin or device.name}: {key} has unknown {bad[0]!r}",
                                    hint=f"use {', '.join(names)}")


def load_device_file(path: str | Path) -> Device:
    """Read and validate one device file.

    Raises:
        BadInputError: A missing or unreadable file, bad YAML, or an invalid device (named).
    """
    from edgesmith.options import read_yaml_file

    return Device.from_dict(read_yaml_file(path, "device file"), str(path))


def host_device() -> Device:
    """The machine edgesmith runs on (its figures are measured, not catalogued)."""
    import platform

    from edgesmith.devices.host import cpu_model, usable_cores

    apple = platform.system() == "Darwin"  # Core ML runs for real only on macOS (elsewhere: emulated)
    return Device(name="host", title=f"this machine: {cpu_model()}, {usable_cores()} cores, {platform.system()}",
                  kind="cpu", peak_tflops={}, memory_bandwidth_gbs=None, memory_gb=_host_memory_gb(),
                  power_w=None, targets=("onnx", "torch", "mlx", *(("coreml",) if apple else ())),
                  runtimes=("onnxruntime", "torch", "mlx", *(("coreml",) if apple else ())),
                  sources=("detected at run time",))


def _host_memory_gb() -> float | None:
    try:
        import psutil

        return round(psutil.virtual_memory().total / 1e9, 1)
    except ImportError:
        return None


def list_devices(device_files: tuple[str | Path, ...] | list = ()) -> list[Device]:
    """The host, every catalog device, then the user's files (a user file may not reuse a name).

    Raises:
        BadInputError: An invalid file (catalog or user), or a name given twice.
    """
    devices = [host_device()]
    for path in [*sorted(CATALOG_DIR.glob("*.yaml")), *map(Path, device_files)]:
        device = load_device_file(path)
        if path.parent == CATALOG_DIR and device.name != path.stem:
            raise BadInputError(f"{path}: name {device.name!r} differs from the file name {path.stem!r}")
        clash = next((d for d in devices if d.name == device.name), None)
        if clash is not None:
            raise BadInputError(f"{path}: device {device.name!r} is already defined by {clash.origin or 'edgesmith'}",
                                hint="give your device another name")
        devices.append(device)
    return devices


def get_device(name: str, device_files: tuple[str | Path, ...] | list = ()) -> Device:
    """One device by name (``host``, a catalog name, or one from ``device_files``).

    Raises:
        UsageError: An unknown name, with the closest known ones.
    """
    devices = {d.name: d for d in list_devices(device_files)}
    if name in devices:
        return devices[name]
    close = difflib.get_close_matches(name, devices, n=3)
    raise UsageError(f"unknown device {name!r}",
                     hint=(f"did you mean {' or '.join(close)}? " if close else "")
                     + "see edgesmith devices list, or add one with --device-file")


def gpu_slug(cuda_name: str) -> str:
    """A CUDA device name as a device name: ``NVIDIA H100 80GB HBM3`` -> ``nvidia-h100-80gb-hbm3``."""
    return re.sub(r"[^a-z0-9]+", "-", cuda_name.lower()).strip("-")


def match_gpu(cuda_name: str, devices: list[Device]) -> Device | None:
    """The gpu device a CUDA device name is: the longest device name that starts its slug at a word boundary."""
    slug = gpu_slug(cuda_name)
    found = [d for d in devices if d.kind == "gpu" and (slug == d.name or slug.startswith(d.name + "-"))]
    return max(found, key=lambda d: len(d.name), default=None)
