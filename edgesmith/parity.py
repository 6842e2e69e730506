"""One parity contract for every target: ``compare(reference, candidate)``.

The tolerance depends on the precision the target computes in (the table
``TOLERANCES``); every result names the tier it was obtained at
(``verified``, ``emulated``, ``structural``). numpy only: runtimes use it on device.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

import numpy as np

TIERS = ("verified", "emulated", "structural")

# precision -> thresholds. fp32: max_abs <= atol * max(1, max|reference|).
TOLERANCES: dict[str, dict[str, float]] = {
    "fp32": {"atol": 1e-4},
    "fp16": {"min_snr_db": 40.0},
    "fixed": {"min_top1": 0.99, "min_snr_db": 25.0},
}


@dataclass(frozen=True)
class OutputMetrics:
    """Differences between one reference output and its candidate."""

    name: str
    max_abs: float
    max_rel: float
    mean_abs: float
    cosine: float
    snr_db: float
    top1_agreement: float | None
    ref_max_abs: float


@dataclass
class ParityResult:
    """Outcome of a parity check.

    Attributes:
        tier: ``verified``, ``emulated`` or ``structural``.
        precision: Tolerance row used (``fp32``, ``fp16``, ``fixed``).
        passed: Whether every output is within tolerance.
        outputs: Metrics per output.
        tolerance: The thresholds applied.
        failures: Human-readable reasons for each failing output.
        checks: For a ``structural`` result (the artifact did not run), what was checked on the graph
            instead; where the graph itself ran (tensorrt's ONNX on ONNX Runtime), ``outputs`` hold its metrics.
        generation: For a generation bundle, the greedy generation through the bundle's loop against
            the source model's (``prompt_tokens``, ``tokens``, ``matched``, ``passed``, ...); else None.
    """

    tier: str
    precision: str
    passed: bool
    outputs: list[OutputMetrics] = field(default_factory=list)
    tolerance: dict[str, float] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)
    generation: dict[str, Any] | None = None

    @property
    def worst(self) -> OutputMetrics | None:
        """The output with the largest max_abs."""
        return max(self.outputs, key=lambda m: m.max_abs, default=None)

    def to_dict(self) -> dict[str, Any]:
        """Return the manifest form, with a ``metrics`` summary of the worst output.

        An infinite SNR (identical outputs) is written as None: JSON has no infinity.
        """
        d = _finite(asdict(self))
        w = self.worst
        d["metrics"] = (
            _finite({k: v for k, v in asdict(w).items() if k not in ("name", "ref_max_abs")}) if w else {}
        )
        return d

    def summary(self) -> str:
        """One line: tier, pass/fail, worst max_abs and SNR."""
        w = self.worst
        status = "PASS" if self.passed else "FAIL"
        if w is None:
            checked = f": {'; '.join(self.checks)}" if self.checks else ""
            return f"{status} [{self.tier}] no outputs compared{checked}"
        top1 = "" if w.top1_agreement is None else f", top-1 {w.top1_agreement:.1%}"
        greedy = "" if not self.generation else \
            f", greedy {self.generation['matched']}/{self.generation['tokens']} tokens"
        return (f"{status} [{self.tier}, {self.precision}] max_abs {w.max_abs:.3g}, SNR {format_snr(w.snr_db)}"
                f"{top1}{greedy}")


def _finite(obj):
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def format_snr(snr_db: float | None) -> str:
    """``132.4 dB``, or ``exact`` for identical outputs (infinite SNR, None in JSON)."""
    if snr_db is None or snr_db == float("inf"):
        return "exact"
    return f"{snr_db:.1f} dB"


def _metrics(name: str, ref: np.ndarray, cand: np.ndarray, classify: bool) -> OutputMetrics:
    r = np.asarray(ref, dtype=np.float64).ravel()
    c = np.asarray(cand, dtype=np.float64).ravel()
    diff = np.abs(r - c)
    ref_abs = np.abs(r)
    signal = float(np.sum(r * r))
    noise = float(np.sum((r - c) ** 2))
    if noise == 0.0:
        snr = float("inf")
    elif signal == 0.0:
        snr = float("-inf")
    else:
        snr = 10.0 * np.log10(signal / noise)
    denom = float(np.linalg.norm(r) * np.linalg.norm(c))
    cosine = float(np.dot(r, c) / denom) if denom else float(np.array_equal(r, c))
    top1 = None
    if classify and np.ndim(ref) >= 1 and np.shape(ref)[-1] > 1:
        a = np.argmax(np.asarray(ref), axis=-1)
        b = np.argmax(np.asarray(cand), axis=-1)
        top1 = float(np.mean(a == b))
    return OutputMetrics(
        name=name,
        max_abs=float(diff.max(initial=0.0)),
        max_rel=float((diff / np.maximum(ref_abs, 1e-12)).max(initial=0.0)),
        mean_abs=float(diff.mean()) if diff.size else 0.0,
        cosine=cosine,
        snr_db=float(snr),
        top1_agreement=top1,
        ref_max_abs=float(ref_abs.max(initial=0.0)),
    )


def _failure(m: OutputMetrics, precision: str, tol: dict[str, float]) -> str | None:
    if precision == "fp32":
        limit = tol["atol"] * max(1.0, m.ref_max_abs)
        if not m.max_abs <= limit:
            return f"{m.name}: max_abs {m.max_abs:.3g} > {limit:.3g} (fp32 tolerance)"
    elif precision == "fp16":
        if not m.snr_db >= tol["min_snr_db"]:
            return f"{m.name}: SNR {m.snr_db:.1f} dB < {tol['min_snr_db']} dB (fp16 tolerance)"
    else:
        if m.top1_agreement is not None and not m.top1_agreement >= tol["min_top1"]:
            return f"{m.name}: top-1 agreement {m.top1_agreement:.1%} < {tol['min_top1']:.0%}"
        if not m.snr_db >= tol["min_snr_db"]:
            return f"{m.name}: SNR {m.snr_db:.1f} dB < {tol['min_snr_db']} dB (fixed-point tolerance)"
    return None


def compare(
    reference: Mapping[str, np.ndarray],
    candidate: Mapping[str, np.ndarray],
    *,
    precision: str = "fp32",
    tier: str = "verified",
    classify: bool = False,
) -> ParityResult:
    """Compare a candidate's outputs with the reference outputs, output by output.

    Args:
        reference: Output name -> array from the source model.
        candidate: Output name -> array from the artifact (same names).
        precision: Row of :data:`TOLERANCES` to apply.
        tier: How the candidate was obtained (see :data:`TIERS`).
        classify: Also report top-1 (argmax over the last axis) agreement.

    Returns:
        A :class:`ParityResult`; a missing output or a shape mismatch is a failure.

    Raises:
        ValueError: For an unknown precision or tier (a programming error).
    """
    if precision not in TOLERANCES:
        raise ValueError(f"unknown precision {precision!r}")
    if tier not in TIERS:
        raise ValueError(f"unknown tier {tier!r}")
    tol = TOLERANCES[precision]
    result = ParityResult(tier=tier, precision=precision, passed=True, tolerance=dict(tol))
    for name, ref in reference.items():
        if name not in candidate:
            result.failures.append(f"{name}: missing from the candidate's outputs")
            continue
        cand = np.asarray(candidate[name])
        if cand.shape != np.shape(ref):
            result.failures.append(f"{name}: shape {cand.shape} != reference {np.shape(ref)}")
            continue
        m = _metrics(name, ref, cand, classify)
        result.outputs.append(m)
        reason = _failure(m, precision, tol)
        if reason:
            result.failures.append(reason)
    result.passed = not result.failures
    return result
