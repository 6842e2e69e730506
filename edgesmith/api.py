"""The Python API: the same steps as the command line, one function each.

Example::

    from edgesmith import api as es

    variant = es.load("zoo:digits-cnn")
    variant = es.optimize(variant, ["reparam"])
    bundle, parity = es.export(variant, "out", target="onnx")
    doc = es.profile([bundle.path])
    es.report([doc], "out/report.html")
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from edgesmith.specs import TensorSpec, parse_input_spec


def load(model: str, *, weights: str | None = None, inputs: Iterable[str | TensorSpec] = (),
         gguf: str | None = None, seq_len: int | None = None, name: str | None = None):
    """Load a MODEL reference (see ARCHITECTURE.md) into a variant.

    Args:
        model: ``path.pt2``, a variant folder, a checkpoint directory, ``py:mod:factory``, ``path.onnx`` or
            ``zoo:NAME``.
        weights: Weights for a ``py:`` factory (loaded with ``weights_only=True``).
        inputs: Input specs (``"name:1x3x224x224:float32"`` or :class:`TensorSpec`).
        gguf: GGUF file inside a checkpoint directory.
        seq_len: Example sequence length for language models.
        name: Variant name.
    """
    from edgesmith.models import load_model
    from edgesmith.models.variant_folder import is_variant_folder

    if is_variant_folder(model):
        import edgesmith.optimize  # noqa: F401  (its passes register the module classes a variant folder names)

    specs = [parse_input_spec(s) if isinstance(s, str) else s for s in inputs]
    return load_model(model, weights=weights, inputs=specs or None, gguf=gguf, seq_len=seq_len, name=name)


def optimize(variant, passes: Iterable[str], *, defaults: dict[str, Any] | None = None,
             progress: Callable[[str, int, int], None] | None = None):
    """Apply passes given as ``NAME[:key=value,...]`` (``edgesmith passes list``).

    Args:
        variant: From :func:`load`.
        passes: Pass specs, applied in order.
        defaults: Values for options a spec leaves unset, given to each pass that has the option,
            e.g. ``{"data": "digits.npz", "checkpoint": "student.ckpt", "resume": True}`` for ``distill``:
            text, or values of the option's type (taken as they are; a path for a text option).
        progress: ``(description, completed, total)`` callback of long passes (``distill``).
    """
    import functools

    from edgesmith.optimize import apply_passes
    from edgesmith.optimize.base import PassContext
    from edgesmith.profiles.probe import latency_probe

    # a pass may not reach up to export or profile: what it needs of them is handed down
    context = PassContext(latency_probe=functools.partial(latency_probe, export=export, profile=profile))
    return apply_passes(variant, list(passes), defaults, progress, context)


def export(variant, out: str | Path, *, target: str = "onnx", name: str | None = None,
           options: dict[str, str] | None = None, force: bool = False, keep_failed: bool = False):
    """Export a variant to ``OUT/NAME.TARGET`` and check its parity.

    Returns:
        ``(Bundle, ParityResult)``.

    Raises:
        ParityError: The artifact computes something else than the source model.
    """
    from edgesmith.export import get_exporter

    return get_exporter(target, options).export(variant, out, name=name, force=force, keep_failed=keep_failed)


@dataclasses.dataclass
class TargetResult:
    """One target's outcome in :func:`export_targets`: a bundle and its parity, or the error.

    Attributes:
        target: The export target.
        bundle: The bundle written, or None when the export failed.
        parity: The parity result (also set for a parity failure, from the error).
        error: The error that stopped this target, or None.
        notes: What the exporter noted on its own copy of the variant (fixed shapes, a misfit...),
            beyond the variant's own notes.
    """

    target: str
    bundle: Any = None
    parity: Any = None
    error: Any = None
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def refused(self) -> bool:
        """Whether the target turned the model down cleanly: an op or layer it cannot take (exit 3).

        An existing output, a parity failure, a missing runtime or a crash is not a refusal.
        """
        from edgesmith.errors import BadInputError, OutputExistsError

        return isinstance(self.error, BadInputError) and not isinstance(self.error, OutputExistsError)


def export_targets(variant, out: str | Path, targets: Sequence[str], *, name: str | None = None,
                   options: dict[str, dict[str, str]] | None = None, force: bool = False,
                   keep_failed: bool = False, stop_on_error: bool = True,
                   stage: Callable[[str], Any] | None = None) -> list[TargetResult]:
    """Export one variant to several targets, each checked for parity: the loop every pipeline runs.

    Args:
        variant: The variant to export.
        out: Output folder; bundles are ``OUT/NAME.TARGET``.
        targets: Export targets, in order.
        name: Bundle name (default: the variant's).
        options: Per-target exporter options, ``{target: {key: value}}``.
        force: Overwrite existing bundles.
        keep_failed: Keep a bundle whose parity failed, for inspection.
        stop_on_error: Raise a target's error at once; else record it and go on with the next target
            (one target that cannot take the model must not stop the others).
        stage: Called with each target before its export; returns a context manager around it
            (a progress line), or None.

    Returns:
        One :class:`TargetResult` per target.

    Raises:
        EdgesmithError: A target failed and ``stop_on_error`` is set.
    """
    import contextlib

    from edgesmith.errors import EdgesmithError

    results = []
    for target in targets:
        result = TargetResult(target)
        try:
            with (stage(target) if stage else None) or contextlib.nullcontext():
                result.bundle, result.parity = export(variant, out, target=target, name=name,
                                                      options=(options or {}).get(target), force=force,
                                                      keep_failed=keep_failed)
            result.notes = [n for n in result.bundle.manifest.options.get("notes", []) if n not in variant.notes]
        except EdgesmithError as exc:
            if stop_on_error:
                raise
            result.error = exc
            result.parity = getattr(exc, "result", None)
        results.append(result)
    return results


def verify(bundle: str | Path, threads: int = 0):
    """Verify a bundle's files and re-run its golden data on its runtime.

    Returns:
        The :class:`~edgesmith.parity.ParityResult` (check ``.passed``).
    """
    from edgesmith.runtimes import check_bundle

    return check_bundle(bundle, threads=threads)


def run(bundle: str | Path, inputs: dict[str, np.ndarray], threads: int = 0) -> dict[str, np.ndarray]:
    """Run a bundle on inputs (name -> array) with its runtime."""
    from edgesmith.runtimes import open_runtime

    return open_runtime(bundle, threads=threads).run(inputs)


def generate(bundle: str | Path, prompt: str | None = None, *, ids: Sequence[int] | None = None, chat: bool = False,
             chat_template: str | None = None, system: str | None = None, max_new_tokens: int | None = None,
             temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
             seed: int | None = None, stop: Sequence[str] = (), ignore_eos: bool = False, threads: int = 0,
             binding: bool = True, on_text: Callable[[str], None] | None = None, context: str | None = None,
             encoder: str | Path | None = None):
    """Generate text with a generation bundle (a decoder LM exported to onnx, mlx or coreml), without torch.

    Args:
        bundle: The bundle.
        prompt: The prompt text (or ``ids``: token ids, for a bundle without a tokenizer).
        chat: Wrap the prompt in the bundle's chat template (as the user's turn).
        chat_template: A Jinja chat template instead of the bundle's. system: A system message for the template.
        max_new_tokens, temperature, top_k, top_p, seed, stop, ignore_eos: See :class:`~edgesmith.runtimes.
            generate.Sampling`; None takes the bundle's defaults. threads: Runtime threads (0: its default).
        binding: Keep the KV cache in the runtime's buffers (ONNX Runtime). on_text: Called with each new text piece.
        context, encoder: A Dolphin decoder's document, compressed by its encoder bundle (default: beside it).

    Returns:
        The :class:`~edgesmith.runtimes.generate.Generation` (text, tokens, TTFT, ms/token).

    Raises:
        BadInputError: Not a generation bundle; no tokenizer or chat template; a prompt too long.
        UsageError: A sampling value out of range, or both or neither of ``prompt`` and ``ids``.
    """
    from edgesmith.errors import UsageError
    from edgesmith.runtimes.generate import Generator, Sampling

    if (prompt is None) == (ids is None):
        raise UsageError("give a prompt or token ids (one of them)", hint="--prompt TEXT or --ids 1,2,3")
    generator = Generator(bundle, threads=threads, binding=binding)
    sampling = Sampling.resolve(generator.record.get("defaults", {}), max_new_tokens=max_new_tokens,
                                temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, stop=tuple(stop),
                                ignore_eos=ignore_eos or None)
    prompt_ids = list(ids) if ids is not None else generator.encode(prompt, chat, chat_template, system)
    return generator.generate(prompt_ids, sampling, on_text, context=context, encoder=encoder)


def profile(bundles: Iterable[str | Path], *, device: str | Sequence[str] = "host", warmup: int = 10,
            runs: int = 100, threads: int = 0, layers: bool = True, recalibrate: bool = False, compiled: bool = False,
            progress: Callable[[str, int], None] | None = None, device_files: Sequence[str | Path] = (),
            prompt_lengths: Sequence[int] | None = None, decode_tokens: int = 32, lm_runs: int = 5) -> dict[str, Any]:
    """Profile bundles on devices and return a profile document.

    On ``host`` a bundle is measured, and an ONNX Runtime bundle (the runtime the host calibration times)
    also gets its host prediction beside the measurement, with the error. A GPU device that is here (the
    first CUDA GPU is that catalog device, or ``cuda:0``) is measured too, with the device's prediction and
    its error beside it. On any other device (a catalog name or one from ``device_files``) the latency is
    predicted from the graph's per-op FLOPs and bytes (mode ``predicted``); see :mod:`edgesmith.profiles.predict`.

    Args:
        bundles: Bundle directories; a plain ``.onnx`` file is packaged into a temporary bundle first.
        device: One device name or several.
        warmup: Untimed runs.
        runs: Timed runs.
        threads: Runtime threads (0 = default).
        layers: Collect per-layer times.
        progress: Called as ``progress(bundle, runs_done)``.
        device_files: The user's own device files.
        recalibrate: Measure the host's calibration again instead of reading the cache.
        compiled: Measure torch bundles under ``torch.compile``.
        prompt_lengths, decode_tokens, lm_runs: A generation bundle's TTFT and tokens/s (:mod:`edgesmith.profiles.lm`).

    Returns:
        The profile document; ``not_predicted`` and ``not_measured`` list the (bundle, device) pairs that could
        not be predicted (no ONNX graph, a figure missing) or measured (the runtime is not here), and why.

    Raises:
        UsageError: An unknown device (with the closest names); a prediction that cannot be made
            when it is the only thing asked for, or when nothing at all could be profiled.
    """
    from edgesmith.export import EXPORTERS
    from edgesmith.profiles.plan import profile_bundles

    def package(onnx_file: str, out: str) -> Path:
        return export(load(onnx_file), out, target="onnx")[0].path

    return profile_bundles(bundles, device=device, warmup=warmup, runs=runs, threads=threads, layers=layers,
                           progress=progress, device_files=device_files, recalibrate=recalibrate, compiled=compiled,
                           prompt_lengths=prompt_lengths, decode_tokens=decode_tokens, lm_runs=lm_runs,
                           package=package, target_names=EXPORTERS.names())


def build_engine(bundle: str | Path, *, force: bool = False, timing_cache: str | Path | None = None,
                 runs: int = 100, warmup: int = 10, step: Callable[[str], None] | None = None):
    """Complete a tensorrt bundle here: build its engine, check parity on it, measure it (in place).

    Returns:
        ``(Bundle, ParityResult, Profile)``; see :func:`edgesmith.runtimes.tensorrt.build.complete_bundle`.

    Raises:
        RuntimeUnavailableError: No TensorRT or no NVIDIA GPU here (exit code 5).
        ParityError: The engine is out of tolerance (the bundle is left as it was).
    """
    from edgesmith.profiles.measure import gpu_here, profile_bundle
    from edgesmith.runtimes.tensorrt.build import complete_bundle

    def measure(path):
        here = gpu_here()  # named after the catalog device the GPU is, else cuda:0
        return profile_bundle(path, device=here.name if here else "cuda:0", runs=runs, warmup=warmup, layers=False)

    return complete_bundle(bundle, force=force, timing_cache=timing_cache, measure=measure, step=step)


def report(profiles: Iterable[dict[str, Any] | str | Path], out: str | Path, force: bool = False) -> list[Path]:
    """Write a report (``.html`` + ``.md``, ``.md`` or ``.json``) from profile documents or files."""
    from edgesmith.profiles.profile import read_profile_document
    from edgesmith.profiles.report import write_report

    docs = [p if isinstance(p, dict) else read_profile_document(p) for p in profiles]
    return write_report(docs, out, force=force)


def models(patterns: Iterable[str] = (), details: bool = False,
           progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """The built-in models: ``{"name", "task", "summary", "options"}`` each.

    Args:
        patterns: Shell-style name patterns (``lsnet-*``); all models if empty.
        details: Also count parameters and MACs (batch 1; backbones at 224x224 with 1000 classes)
            and give the paper's figures where the model has a paper (see
            :func:`edgesmith.models.complexity.zoo_complexity`); loads every model.
        progress: Called with each model's name before it is counted.
    """
    import dataclasses
    import fnmatch

    from edgesmith.errors import UsageError
    from edgesmith.models.complexity import zoo_complexity
    from edgesmith.models.zoo import ZOO

    patterns = [p.removeprefix("zoo:").replace("_", "-") for p in patterns]
    names = [n for n in ZOO.names() if not patterns or any(fnmatch.fnmatch(n, p) for p in patterns)]
    if not names:
        raise UsageError(f"no zoo model matches {' '.join(patterns)}", hint="see edgesmith models list")
    rows = []
    for name in names:
        entry = ZOO.get(name)
        options = [f.name for f in dataclasses.fields(entry.Options)] if entry.Options else []
        row = {"name": f"zoo:{name}", "task": entry.task, "summary": entry.summary, "options": options}
        if details:
            if progress:
                progress(name)
            row.update(zoo_complexity(entry))
        rows.append(row)
    return rows


def devices(device_files: Iterable[str | Path] = ()) -> list:
    """The host, the catalog's devices and the user's device files, as :class:`~edgesmith.devices.catalog.Device`.

    Raises:
        BadInputError: An invalid device file, or one listing a target or runtime edgesmith does not have.
    """
    from edgesmith.devices.catalog import check_names, list_devices
    from edgesmith.export import EXPORTERS
    from edgesmith.runtimes import RUNTIMES

    found = list_devices(list(device_files))
    check_names(found, {"targets": EXPORTERS.names(), "runtimes": RUNTIMES.names()})
    return found


def device(name: str, device_files: Iterable[str | Path] = ()):
    """One device by name (``host``, a catalog name, or one defined in ``device_files``).

    Raises:
        UsageError: An unknown name, with the closest known ones.
        BadInputError: An invalid device file (see :func:`devices`).
    """
    from edgesmith.devices.catalog import get_device

    devices(device_files)  # every file is checked, as when listing them
    return get_device(name, list(device_files))


def inspect(variant) -> dict[str, Any]:
    """Parameters, size, signature, FLOPs and op histogram of a variant."""
    from edgesmith.models.inspect import inspect_variant

    return inspect_variant(variant)


def dolphin_train(model: str, out: str | Path, *, encoder: str | None = None, resume: bool = False,
                  force: bool = False, progress: Callable[[str, int, int], None] | None = None,
                  **options) -> dict[str, Any]:
    """Train a Dolphin pair into the folder ``out`` (``edgesmith dolphin train``).

    Args:
        model: The decoder LM; a truncated copy of it reads the context unless ``encoder`` is given.
        out: Folder for ``dolphin.pt``, ``dolphin.json`` and the checkpoint.
        encoder: A separate encoder LM.
        resume: Continue the run checkpointed in ``OUT/checkpoint``.
        force: Train again over an existing pair or checkpoint.
        progress: ``(description, step, steps)`` callback.
        **options: :class:`~edgesmith.dolphin.options.DolphinOptions` fields.

    Returns:
        The record written to ``OUT/dolphin.json``.
    """
    from edgesmith.dolphin.folder import train_folder
    from edgesmith.dolphin.options import DolphinOptions

    options = DolphinOptions.from_fields(options)
    return train_folder(model, out, options, encoder, resume=resume, force=force, progress=progress)


def dolphin(folder: str | Path):
    """A trained Dolphin pair: ``pair.ask(context, question)``, ``pair.compress(ids)``, ``pair.generate(...)``."""
    from edgesmith.dolphin.folder import load_folder

    return load_folder(folder)


def dolphin_ask(pair, context: str, question: str, *, max_new_tokens: int = 48, full: bool = False) -> dict[str, Any]:
    """Answer ``question`` about a long ``context`` through its K memory vectors (``edgesmith dolphin ask``).

    Args:
        pair: A Dolphin folder, or a pair from :func:`dolphin`.
        context: The document's text.
        question: What to ask (or the text to continue).
        max_new_tokens: Most tokens to generate (greedy, with the decoder's KV cache).
        full: Put the whole context in the decoder's prompt instead (to compare).

    Returns:
        ``{"answer", "mode", "context_tokens", "prompt_tokens", "new_tokens", "seconds"}`` (``seconds``: the answer's).
    """
    import time

    pair = dolphin(pair) if isinstance(pair, (str, Path)) else pair
    began = time.perf_counter()
    record = pair.answer(context, question, max_new_tokens, full=full)
    return record | {"seconds": round(time.perf_counter() - began, 3)}


def dolphin_eval(pair, *, windows: int = 0, progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Continuation perplexity on the evaluation text's test split (``edgesmith dolphin eval``).

    Args:
        pair: A Dolphin folder, or a pair from :func:`dolphin`.
        windows: Held-out windows to score (0: all).
        progress: ``(windows scored, windows)`` callback.

    Returns:
        See :func:`edgesmith.dolphin.train.held_out_perplexity`.
    """
    from edgesmith.dolphin.train import held_out_perplexity

    pair = dolphin(pair) if isinstance(pair, (str, Path)) else pair
    return held_out_perplexity(pair, windows, progress)


def dolphin_export(folder: str | Path, out: str | Path, *, target: str = "onnx", name: str | None = None,
                   force: bool = False) -> list:
    """Export a trained pair as ``NAME-encoder`` and ``NAME-decoder`` bundles (``edgesmith dolphin export``).

    Args:
        folder: A folder written by :func:`dolphin_train`.
        out: Folder for the two bundles.
        target: Export target.
        name: Bundle name stem (default: ``DECODER-dolphin``).
        force: Overwrite existing bundles.

    Returns:
        ``[(Bundle, ParityResult), (Bundle, ParityResult)]``: encoder, then decoder.
    """
    from edgesmith.dolphin.folder import export_folder

    return export_folder(folder, out, target=target, name=name, force=force)
