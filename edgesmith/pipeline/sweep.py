"""Sweeps: many variants x targets x devices, run in parallel, merged into one profile document.

A sweep is a list of jobs; a job is a :class:`~edgesmith.pipeline.recipe.Recipe` with one
variant and one target (so a recipe file expands into a sweep, one job per
variant x target). Each job runs in its own process: load, passes, export (parity
checked) and, when ``host`` is among the devices, the host measurement. Jobs run in
a local process pool by default, or as Ray tasks (``ray_address``) on a cluster.
Predictions for the other devices are made afterwards in this process, for every
bundle at once: they need only each bundle's graph and the host calibration, and a
torch or mlx bundle borrows the graph of the same variant's onnx bundle, which by
then exists if onnx was among the targets.

A job that fails (a bad pass, a target that cannot take an op, a parity failure,
a crashed worker) becomes a failed :class:`JobResult` with its message and exit
code; the other jobs finish. Latencies measured while other jobs run share the
machine with them: each job gets ``cores // workers`` runtime threads so they do not
oversubscribe it, but a lone ``edgesmith profile`` is the cleaner measurement.
"""

from __future__ import annotations

import dataclasses
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from edgesmith.errors import EdgesmithError, RuntimeUnavailableError, UsageError, require
from edgesmith.pipeline.recipe import Recipe, Variant


@dataclass
class JobResult:
    """What one job produced, or why it failed.

    Attributes:
        label: ``model + passes -> target``.
        ok: Whether every step succeeded.
        bundle: The bundle's path (None if the export failed).
        parity: The bundle's parity record.
        doc: The job's profile document (host entries), if it measured.
        error: The failure's message and hint.
        exit_code: The exit code the failure maps to (0 when ok).
        seconds: Wall time of the job.
        notes: What the job could not do that did not fail it.
    """

    label: str
    ok: bool
    bundle: str | None = None
    parity: dict[str, Any] | None = None
    doc: dict[str, Any] | None = None
    error: str | None = None
    exit_code: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        """The job's line in a merged document (everything but the profile)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in ("doc", "parity")}


def job_label(job: Recipe) -> str:
    """``model + pass + pass -> target`` (or the variant's own name)."""
    (variant,) = job.variants
    name = variant.name or " + ".join([job.model, *variant.passes])
    return f"{name} -> {job.targets[0]}"


def expand(recipe: Recipe) -> list[Recipe]:
    """One job per variant x target of a recipe (every job keeps all the recipe's devices)."""
    jobs = []
    for variant in recipe.variants:
        for target in recipe.targets:
            jobs.append(dataclasses.replace(recipe, variants=[variant], targets=[target], report=False))
    return jobs


def jobs_from_options(models: Sequence[str], pass_sets: Sequence[str], targets: Sequence[str],
                      devices: Sequence[str], **common: Any) -> list[Recipe]:
    """The product models x pass sets x targets, as jobs.

    Args:
        models: MODEL references.
        pass_sets: One variant's passes each, joined by ``+`` (``"none"`` or ``""`` for none):
            ``"reparam"``, ``"reparam+distill:student=lsnet_t,epochs=1"``.
        targets: Export targets.
        devices: Device names (every job gets all of them).
        common: Other :class:`~edgesmith.pipeline.recipe.Recipe` fields (``runs``, ``data``...).
    """
    variants = [Variant(None, [] if s.strip() in ("", "none") else [p for p in s.split("+") if p])
                for s in (pass_sets or ["none"])]
    jobs = []
    for model in models:
        recipe = Recipe(path=Path("<sweep>"), model=model, variants=variants, targets=list(targets),
                        devices=list(devices), report=False, **common)
        jobs.extend(expand(recipe))
    return jobs


def validate_jobs(jobs: list[Recipe], device_files: Sequence[str] = ()) -> None:
    """Check every job's passes, targets and devices before anything runs.

    Raises:
        UsageError: An unknown pass, pass option, target or device, naming the job.
    """
    from edgesmith.devices.catalog import get_device
    from edgesmith.export import EXPORTERS
    from edgesmith.optimize import parse_pass_spec

    for job in jobs:
        try:
            for spec in job.variants[0].passes:
                parse_pass_spec(spec, {"data": job.data} if job.data else None)
            EXPORTERS.get(job.targets[0])
            for name in job.devices:
                get_device(name, device_files)
        except EdgesmithError as exc:
            raise UsageError(f"sweep job {job_label(job)}: {exc.message}", hint=exc.hint) from None
    if not jobs:
        raise UsageError("the sweep has no jobs", hint="give at least one --model (or a recipe)")


def run_job(job: Recipe, out: str, force: bool = False) -> JobResult:
    """Run one job in this process: export its one variant to its one target, measure it on host.

    Never raises for the job's own failure: it is returned as a failed :class:`JobResult`.
    """
    from edgesmith import api as es
    from edgesmith.pipeline.recipe import build_bundles

    start = time.perf_counter()
    label = job_label(job)
    try:
        bundles, parity = build_bundles(job, Path(out), force=force)
        (bundle,) = bundles
        result = JobResult(label=label, ok=True, bundle=str(bundle), parity=parity[bundle.name].to_dict())
        if "host" in job.devices:
            try:
                result.doc = es.profile([bundle], device="host", runs=job.runs, warmup=job.warmup,
                                        threads=job.threads, layers=job.layers)
            except RuntimeUnavailableError as exc:  # a structural bundle (tensorrt without a GPU): predicted only
                result.notes.append(f"not measured on host: {exc.message}")
    except EdgesmithError as exc:
        message = exc.message + (f" (hint: {exc.hint})" if exc.hint else "")
        result = JobResult(label=label, ok=False, error=message, exit_code=exc.exit_code)
    except Exception as exc:  # noqa: BLE001 - a bug in one job must not take the sweep down
        result = JobResult(label=label, ok=False, error=f"{type(exc).__name__}: {exc}", exit_code=1,
                           notes=[traceback.format_exc(limit=5)])
    result.seconds = time.perf_counter() - start
    return result


def _usable_cores() -> int:
    from edgesmith.devices.host import usable_cores

    return usable_cores()


def run_sweep(jobs: list[Recipe], out: str | Path, *, workers: int | None = None, ray_address: str | None = None,
              force: bool = False, device_files: Sequence[str] = (),
              progress: Callable[[str, int, int], None] | None = None) -> tuple[list[JobResult], dict[str, Any]]:
    """Run jobs in parallel and merge their results.

    Args:
        jobs: From :func:`expand` or :func:`jobs_from_options` (checked with :func:`validate_jobs` first).
        out: Folder for every bundle (with Ray: a path every worker can reach).
        workers: Local processes (default: one per usable core, at most one per job).
        ray_address: Run on Ray instead: ``local`` starts a cluster in this process, anything
            else (``auto``, ``ray://host:10001``) connects to one.
        force: Overwrite existing bundles.
        device_files: The user's device files (for the predictions).
        progress: Called as ``progress(job label, done, total)`` when a job finishes.

    Returns:
        The results in job order, and the merged profile document (see :func:`merge`).

    Raises:
        UsageError: An invalid job (before anything runs), or Ray not reachable.
    """
    from edgesmith.profiles.calibrate import host_calibration

    validate_jobs(jobs, device_files)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    workers = max(1, min(workers or _usable_cores(), len(jobs)))
    threads = max(1, _usable_cores() // workers) if ray_address is None else 1
    jobs = [dataclasses.replace(j, threads=j.threads or threads) for j in jobs]
    if any("host" in j.devices for j in jobs) and ray_address is None:
        # one calibration up front, cached for the workers' thread count, instead of one per worker at once
        host_calibration(threads)
    if ray_address is None:
        results = _run_pool(jobs, str(out), force, workers, progress)
    else:
        results = _run_ray(jobs, str(out), force, ray_address, progress)
    return results, merge(results, jobs, device_files)


def _run_pool(jobs, out, force, workers, progress) -> list[JobResult]:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    results: list[JobResult | None] = [None] * len(jobs)
    context = multiprocessing.get_context("spawn")  # torch and fork do not mix
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = {pool.submit(run_job, job, out, force): i for i, job in enumerate(jobs)}
        for done, future in enumerate(as_completed(futures), 1):
            i = futures[future]
            try:
                results[i] = future.result()
            except Exception as exc:  # noqa: BLE001 - a worker that died (BrokenProcessPool) fails its job only
                results[i] = JobResult(label=job_label(jobs[i]), ok=False, exit_code=1,
                                       error=f"the worker process failed: {type(exc).__name__}: {exc}")
            if progress:
                progress(results[i].label, done, len(jobs))
    return results  # type: ignore[return-value]


def _run_ray(jobs, out, force, address, progress) -> list[JobResult]:
    ray = require("ray", "ray")
    env = {k: os.environ[k] for k in ("EDGESMITH_CACHE", "HF_HUB_OFFLINE") if k in os.environ}
    started = not ray.is_initialized()
    if started:
        try:
            if address == "local":
                ray.init(num_cpus=_usable_cores(), include_dashboard=False, log_to_driver=False,
                         object_store_memory=256 * 2**20, runtime_env={"env_vars": env})
            else:
                ray.init(address=address, log_to_driver=False, runtime_env={"env_vars": env})
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise UsageError(f"cannot reach the Ray cluster at {address!r}: {str(exc).splitlines()[0]}",
                             hint="start one (ray start --head) or use --ray-address local") from None
    try:
        remote = ray.remote(num_cpus=1)(run_job)
        refs = {remote.remote(job, out, force): i for i, job in enumerate(jobs)}
        results: list[JobResult | None] = [None] * len(jobs)
        pending, done = list(refs), 0
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            i = refs[ready[0]]
            try:
                results[i] = ray.get(ready[0])
            except Exception as exc:  # noqa: BLE001 - a task that died fails its job only
                results[i] = JobResult(label=job_label(jobs[i]), ok=False, exit_code=1,
                                       error=f"the Ray task failed: {type(exc).__name__}: {str(exc).splitlines()[0]}")
            done += 1
            if progress:
                progress(results[i].label, done, len(jobs))
        return results  # type: ignore[return-value]
    finally:
        if started:
            ray.shutdown()


def merge(results: list[JobResult], jobs: list[Recipe], device_files: Sequence[str] = ()) -> dict[str, Any]:
    """One profile document for the whole sweep.

    The host entries of every job that measured, then a ``predicted`` entry per bundle and
    non-host device (made here), plus ``"jobs"``: one record per job (label, ok, bundle, error,
    exit code, seconds, notes). A prediction that cannot be made (a torch bundle without its onnx
    sibling) is a note on its job, not a failure.
    """
    from edgesmith import api as es
    from edgesmith.devices.host import fingerprint
    from edgesmith.profiles.profile import profile_document

    docs = [r.doc for r in results if r.doc]
    doc = profile_document([], docs[0]["environment"] if docs else fingerprint())
    doc["entries"] = [e for d in docs for e in d["entries"]]
    if docs and "calibration" in docs[0]:
        doc["calibration"] = docs[0]["calibration"]
    for result, job in zip(results, jobs, strict=True):
        others = [d for d in job.devices if d != "host"]
        if not result.ok or not others:
            continue
        try:
            predicted = es.profile([result.bundle], device=others, device_files=device_files)
        except EdgesmithError as exc:
            result.notes.append(f"not predicted on {', '.join(others)}: {exc.message}")
            continue
        doc["entries"].extend(predicted["entries"])
        result.notes += [f"not predicted on {s['device']}: {s['reason']}" for s in predicted.get("not_predicted", [])]
        doc.setdefault("calibration", predicted.get("calibration"))
    doc["jobs"] = [r.record() for r in results]
    return doc
