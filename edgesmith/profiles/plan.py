"""Profiling bundles on devices: what is measured here, what is predicted, and the document they make.

The policy behind :func:`edgesmith.api.profile`, per (bundle, device) pair:

- a device that is here (``host``; the GPU here, by its catalog name or as ``cuda:0``) measures
  the bundle (:mod:`edgesmith.profiles.measure`). Its prediction goes beside the measurement, with
  the error, where the prediction is comparable: on the host for the runtime the host calibration
  times (:func:`edgesmith.profiles.calibrate.calibrated_runtime`), on a catalog GPU for any runtime;
- any other device predicts it (:mod:`edgesmith.profiles.predict`, mode ``predicted``);
- the host calibration is read (or measured) once per call, and only when a prediction needs it;
- a pair that cannot be measured (its runtime is not here) or predicted (no ONNX graph, a figure
  the device lacks) is recorded with its reason and the others go on. It is an error only when
  it is the one thing asked for, or when nothing at all could be profiled.

A generation bundle (a language model with its KV cache) also gets its time to first token and
decode tokens/s per prompt length (the entry's ``lm``, :mod:`edgesmith.profiles.lm`): measured on
the host with the host's prediction and its error beside it, predicted on every other device. Its
graph costs are read once per bundle, whatever the number of devices.

Two things come from the layers above, handed in by the API: packaging a plain ``.onnx`` file
into a bundle (an export), and the export target names a device file may list.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from edgesmith.devices.catalog import Device
from edgesmith.errors import EdgesmithError, RuntimeUnavailableError, UsageError
from edgesmith.profiles.profile import Profile
from edgesmith.profiles.roofline import Calibration


def profile_bundles(bundles: Iterable[str | Path], *, device: str | Sequence[str] = "host", warmup: int = 10,
                    runs: int = 100, threads: int = 0, layers: bool = True,
                    progress: Callable[[str, int], None] | None = None, device_files: Sequence[str | Path] = (),
                    recalibrate: bool = False, compiled: bool = False, prompt_lengths: Sequence[int] | None = None,
                    decode_tokens: int = 32, lm_runs: int = 5,
                    package: Callable[[str, str], str | Path], target_names: Iterable[str]) -> dict[str, Any]:
    """Profile bundles on devices and return a profile document (see the module docstring).

    Args:
        bundles: Bundle directories, or plain ``.onnx`` files (packaged by ``package`` first).
        device, warmup, runs, threads, layers, progress, device_files, recalibrate, compiled, prompt_lengths,
            decode_tokens, lm_runs: As in :func:`edgesmith.api.profile`, which calls this.
        package: ``package(onnx_file, folder)`` exports a plain ``.onnx`` file to a bundle in
            ``folder`` and returns the bundle's path.
        target_names: The export targets a device file may list (the exporter registry's names).

    Returns:
        The profile document, with ``calibration`` when one was used, ``not_predicted`` and
        ``not_measured`` when some pairs could not be profiled.

    Raises:
        UsageError: An unknown device; a pair that cannot be profiled when it is the only one asked
            for, or nothing at all profiled.
        BadInputError: A device file that lists a target or runtime edgesmith does not have.
        RuntimeUnavailableError: ``cuda:0`` without a GPU here; the only pair asked for cannot run here.
    """
    from edgesmith.devices.host import fingerprint
    from edgesmith.profiles.lm import LMSettings
    from edgesmith.profiles.profile import profile_document

    names = [device] if isinstance(device, str) else list(device)
    here, devices = _devices(names, device_files, target_names)
    plan = _Plan(threads=threads, recalibrate=recalibrate)
    lm = LMSettings(prompt_lengths=tuple(prompt_lengths) if prompt_lengths else None, decode_tokens=decode_tokens,
                    runs=lm_runs)
    bundles = list(bundles)
    alone = len(devices) * len(bundles) == 1  # one pair asked for: its failure is the answer
    with tempfile.TemporaryDirectory(prefix="edgesmith-profile-") as tmp:
        for b in bundles:
            path = b
            if Path(b).suffix == ".onnx" and not Path(b).is_dir():
                path = package(str(b), tmp)
            record = _generation(path)
            settings = lm.for_bundle(record, Path(b).name) if record is not None else None  # before any work
            for target in devices:
                if getattr(target, "name", target) in here:
                    cb = (lambda n, _b=str(b): progress(_b, n)) if progress else None
                    entry = plan.measure(str(b), path, target, alone, progress=cb, warmup=warmup, runs=runs,
                                         layers=layers, compiled=compiled, device_files=device_files)
                else:
                    try:
                        entry = plan.predict(str(b), path, target, alone)
                    finally:
                        if progress:
                            progress(str(b), runs)
                if entry is not None:
                    entry.bundle = str(b)
                    if record is not None:
                        plan.add_lm(entry, str(b), path, target, settings)
                    plan.entries.append(entry)
    if not plan.entries and (plan.skipped or plan.unmeasured):
        raise UsageError(f"nothing could be profiled: {(plan.skipped or plan.unmeasured)[0]['reason']}")
    doc = profile_document(plan.entries, fingerprint(threads))
    if plan.calibration is not None:
        doc["calibration"] = {k: v for k, v in plan.calibration.to_dict().items() if k != "suite"}
    if plan.skipped:
        doc["not_predicted"] = plan.skipped
    if plan.unmeasured:
        doc["not_measured"] = plan.unmeasured
    return doc


def _devices(names: list[str], device_files: Sequence[str | Path],
             target_names: Iterable[str]) -> tuple[dict[str, str], list[Device | str]]:
    """What can be measured here, and the devices asked for (``cuda:0`` stays a name).

    An unknown name, a bad device file or a missing GPU fails here, before any work.
    """
    from edgesmith.devices.catalog import check_names, get_device, list_devices
    from edgesmith.profiles.measure import measurable_here
    from edgesmith.runtimes import RUNTIMES

    here = measurable_here(device_files) if any(n != "host" for n in names) else {"host": "cpu"}
    # cuda:0 is the GPU here when no catalog device matches it
    if "cuda:0" in names and "cuda:0" not in here:
        raise RuntimeUnavailableError("there is no NVIDIA GPU with a CUDA driver here to measure on (cuda:0)",
                                      hint="profile on the machine with the GPU, or predict: -d nvidia-h100 ...")
    check_names(list_devices(device_files), {"targets": list(target_names), "runtimes": RUNTIMES.names()})
    return here, [n if n == "cuda:0" else get_device(n, device_files) for n in names]


def _generation(path) -> dict[str, Any] | None:
    """A bundle's ``generation`` record (None: not a generation bundle, or not a bundle at all)."""
    from edgesmith.bundle import Bundle

    try:
        return Bundle.open(path, verify=False).manifest.generation or None
    except EdgesmithError:
        return None  # measuring or predicting it says what is wrong


def _reason(exc: EdgesmithError) -> str:
    return exc.message + (f" ({exc.hint})" if exc.hint else "")


class _Plan:
    """The entries of one profile call, the pairs left out and why, and the calibration read once."""

    def __init__(self, threads: int, recalibrate: bool):
        self.threads = threads
        self.recalibrate = recalibrate
        self.calibration: Calibration | None = None
        self.entries: list[Profile] = []
        self.skipped: list[dict[str, str]] = []  # (bundle, device) pairs that could not be predicted, and why
        self.unmeasured: list[dict[str, str]] = []  # ... measured (the bundle's runtime cannot run here), and why
        self.lm_costs: dict[str, Any] = {}  # bundle path -> its generation graph's StepCosts

    def host_calibration(self) -> Calibration:
        """The host calibration, read (or measured) on first use."""
        from edgesmith.profiles.calibrate import host_calibration

        if self.calibration is None:
            self.calibration = host_calibration(self.threads, refresh=self.recalibrate)
        return self.calibration

    def measure(self, label: str, path, target: Device | str, alone: bool, **options) -> Profile | None:
        """A ``measured`` entry, with the device's prediction beside it where comparable (None: not here)."""
        from edgesmith.profiles.calibrate import calibrated_runtime
        from edgesmith.profiles.measure import profile_bundle
        from edgesmith.profiles.predict import predict_bundle

        name = getattr(target, "name", target)
        try:
            entry = profile_bundle(path, device=name, threads=self.threads, **options)
        except RuntimeUnavailableError as exc:  # a tensorrt bundle with no GPU, or on the host's CPU
            if alone:
                raise
            self.unmeasured.append({"bundle": label, "device": name, "reason": _reason(exc)})
            return None
        # the host calibration times one runtime; a catalog GPU is predicted for any runtime
        if (name == "host" and entry.runtime == calibrated_runtime()) or name not in ("host", "cuda:0"):
            try:
                prediction, _ = predict_bundle(path, target, self.host_calibration())
            except UsageError:
                return entry  # no ONNX graph: measured only
            except RuntimeUnavailableError as exc:  # a runtime-only install cannot read the graph
                self.skipped.append({"bundle": label, "device": name, "reason": _reason(exc)})
                return entry
            entry.prediction = prediction.to_dict()
            p50 = entry.latency_ms.p50
            entry.prediction["error"] = (prediction.latency_ms - p50) / p50 if p50 else None
        return entry

    def predict(self, label: str, path, target: Device, alone: bool) -> Profile | None:
        """A ``predicted`` entry (None: it cannot be predicted, recorded with the reason)."""
        from edgesmith.profiles.predict import predicted_profile

        try:
            return predicted_profile(path, target, self.host_calibration())
        except UsageError as exc:
            if alone:
                raise  # the only thing asked for: say why, as an error
            self.skipped.append({"bundle": label, "device": target.name, "reason": _reason(exc)})
            return None

    def add_lm(self, entry: Profile, label: str, path, target: Device | str, settings) -> None:
        """Give a generation bundle's entry its ``lm`` record: measured on the host, else predicted.

        A prediction that cannot be made (no ONNX graph, a figure the device lacks) is recorded in
        ``not_predicted`` with the reason; the host's measurement stands without it.
        """
        from edgesmith.profiles import lm

        name = getattr(target, "name", target)
        measured = lm.measure_lm(path, settings, self.threads) if name == "host" else None
        try:
            if str(path) not in self.lm_costs:
                self.lm_costs[str(path)] = lm.step_costs(path)
            device = target if isinstance(target, Device) else None
            prediction = (lm.predict_lm(self.lm_costs[str(path)], device, self.host_calibration(), settings)
                          if device is not None else None)
        except (UsageError, RuntimeUnavailableError) as exc:
            self.skipped.append({"bundle": label, "device": name, "reason": "tokens/s: " + _reason(exc)})
            prediction = None
        if measured is not None:
            entry.lm = lm.with_errors(measured, prediction) if prediction else measured
        elif prediction is not None:
            entry.lm = lm.predicted_record(prediction)
