"""The ``Profile``: latency, memory and size numbers plus where they came from.

A profile document (what ``edgesmith profile -o profile.json`` writes and
``edgesmith report`` reads) is JSON::

    {"schema_version": 1, "kind": "edgesmith.profile", "created_at": "...",
     "environment": {...}, "entries": [Profile, ...]}
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edgesmith.errors import BadInputError

PROFILE_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class LatencyStats:
    """Summary of timed runs, in milliseconds."""

    p50: float
    p90: float
    p99: float
    min: float
    max: float
    mean: float
    std: float

    @classmethod
    def from_samples(cls, samples_ms: list[float]) -> "LatencyStats":
        """Summarise timed runs.

        Args:
            samples_ms: One latency per run, in milliseconds (at least one).
        """
        s = sorted(samples_ms)

        def pct(q: float) -> float:
            # linear interpolation between closest ranks, as numpy's default
            pos = (len(s) - 1) * q
            lo = int(pos)
            hi = min(lo + 1, len(s) - 1)
            return s[lo] + (s[hi] - s[lo]) * (pos - lo)

        return cls(
            p50=pct(0.50), p90=pct(0.90), p99=pct(0.99), min=s[0], max=s[-1],
            mean=statistics.fmean(s), std=statistics.pstdev(s) if len(s) > 1 else 0.0,
        )


@dataclass(frozen=True)
class LayerTime:
    """Time spent in one source module (or op, where no module is known).

    Attributes:
        name: Source module path (``features.0``) or ``op:<OpType>``.
        op_types: The runtime op types that ran for it.
        mean_ms: Mean time per inference in this layer.
        share: Fraction of the summed layer time (0..1).
    """

    name: str
    op_types: list[str]
    mean_ms: float
    share: float


@dataclass
class Profile:
    """One model artifact on one device.

    Attributes:
        name: Variant name (bundle name).
        target: Export target (``onnx``, ``torch``...).
        runtime: Runtime that ran it (``onnxruntime``...).
        device: Device name (``host``...).
        mode: ``measured`` (ran here) or ``predicted`` (roofline from specs).
        latency_ms: Latency summary.
        samples_ms: Every timed run, for distribution plots.
        throughput_per_s: Inferences per second (batch / p50).
        batch: Batch size of the inputs used.
        load_time_ms: Time to load and verify the bundle and create the session.
        peak_memory_mb: Peak resident memory, in MiB, that loading and running the bundle adds to a
            fresh Python process (measured in a child process, the same way in ``profile``,
            ``run RECIPE`` and ``sweep``; see :mod:`edgesmith.runtimes.memory`). None when unknown:
            the OS gives no peak, or the entry is ``predicted`` (a device's process memory is not
            predicted; its ``prediction`` holds ``memory_mb``, the model's own tensors).
        file_size_bytes: Size of the model files in the bundle.
        warmup: Untimed warm-up runs.
        runs: Timed runs.
        threads: Intra-op threads the runtime used (0 = runtime default).
        layers: Per-layer breakdown, largest first (may be empty).
        parity: The bundle's parity record (tier, passed, metrics), if any.
        passes: Passes applied to the variant.
        bundle: Path of the bundle profiled.
        timing: ``measured`` (the target's runtime ran: a latency) or ``emulated`` (a stand-in
            such as the Core ML evaluator off macOS ran: its timings are not a latency).
        prediction: The roofline prediction (:class:`edgesmith.profiles.predict.Prediction` fields:
            ``latency_ms``, ``low_ms``, ``high_ms``, ``flops``, ``bytes``, ``by_class``, ``notes``...).
            In a ``predicted`` entry it is the entry's latency (``latency_ms`` holds the point
            estimate, ``samples_ms`` is empty); in a ``measured`` entry it is the prediction for the
            same device, with ``error`` = (predicted - measured p50) / measured p50.
        lm: A generation bundle's TTFT and decode speed per prompt length
            (:mod:`edgesmith.profiles.lm`): ``mode`` (``measured`` or ``predicted``), ``rows``
            (``prompt_tokens``, ``ttft_ms``, ``decode_ms_per_token``, ``tokens_per_s``), and in a
            measured entry the same device's ``prediction`` with its errors; None for other bundles.
    """

    name: str
    target: str
    runtime: str
    device: str
    mode: str
    latency_ms: LatencyStats
    samples_ms: list[float]
    throughput_per_s: float
    batch: int
    load_time_ms: float
    peak_memory_mb: float | None
    file_size_bytes: int
    warmup: int
    runs: int
    threads: int
    layers: list[LayerTime] = field(default_factory=list)
    parity: dict[str, Any] | None = None
    passes: list[dict[str, Any]] = field(default_factory=list)
    bundle: str = ""
    timing: str = "measured"
    prediction: dict[str, Any] | None = None
    lm: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Profile":
        """Rebuild a profile from :meth:`to_dict` output."""
        data = dict(data)
        data["latency_ms"] = LatencyStats(**data["latency_ms"])
        data["layers"] = [LayerTime(**x) for x in data.get("layers", [])]
        return cls(**data)


def profile_document(entries: list[Profile], environment: dict[str, Any]) -> dict[str, Any]:
    """Wrap profiles and the environment fingerprint into a profile document."""
    return {
        "schema_version": PROFILE_SCHEMA_VERSION,
        "kind": "edgesmith.profile",
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "environment": environment,
        "entries": [e.to_dict() for e in entries],
    }


def read_profile_document(path: str | Path) -> dict[str, Any]:
    """Read and check a profile document.

    Raises:
        BadInputError: If the file is missing, not JSON, or not a profile document.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise BadInputError(f"profile {path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadInputError(f"profile {path} is not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("kind") != "edgesmith.profile":
        raise BadInputError(
            f"{path} is not an edgesmith profile", hint="make one with `edgesmith profile BUNDLE -o FILE`"
        )
    if doc.get("schema_version") != PROFILE_SCHEMA_VERSION:
        raise BadInputError(
            f"profile {path} has schema_version {doc.get('schema_version')!r}, "
            f"this edgesmith reads {PROFILE_SCHEMA_VERSION}"
        )
    for i, entry in enumerate(doc.get("entries", [])):
        try:
            Profile.from_dict(entry)
        except (TypeError, KeyError) as exc:
            raise BadInputError(f"profile {path}: entry {i} is malformed: {exc}") from None
    return doc
