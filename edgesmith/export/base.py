"""The exporter base class, the exporters' registry and what every exporter shares.

:meth:`Exporter.export` owns the common work (staging, golden data, manifest,
parity, atomic rename); subclasses implement :meth:`Exporter._export_impl`,
which only writes the model files. The built-in exporters register into
:data:`EXPORTERS` from their own modules; :mod:`edgesmith.export` imports them.
"""

from __future__ import annotations

import dataclasses
import platform
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from edgesmith.bundle import (
    GOLDEN, Bundle, Manifest, bundle_dir, check_writable, finalize_manifest, save_golden,
    staged_bundle, write_manifest,
)
from edgesmith.errors import ParityError
from edgesmith.export.generation import check_greedy, extra_feeds, generation_step, is_step, write_record
from edgesmith.registry import Registry

# "target" in messages: the CLI calls them targets (--target, targets list)
EXPORTERS: Registry[type["Exporter"]] = Registry("target", "edgesmith.exporters")

_VERSIONED = ("edgesmith", "torch", "onnx", "onnxruntime", "onnxscript", "numpy", "transformers", "mlx", "coremltools",
              "tensorrt")


def library_versions() -> dict[str, str]:
    """Versions of Python and the installed libraries that matter to an artifact."""
    versions = {"python": platform.python_version()}
    for dist in _VERSIONED:
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return versions


@dataclasses.dataclass
class ExportOptions:
    """Options shared by exporters (none yet); subclass per exporter."""


class Exporter:
    """Base class of exporters.

    Subclasses set ``name`` (the target, equal to the module name), ``runtime``
    (the runtime registry key that runs the artifact), ``model_file`` and
    ``Options`` (a ``precision`` field there selects the parity tolerance),
    and implement :meth:`_export_impl`.
    """

    name: ClassVar[str] = ""
    runtime: ClassVar[str] = ""
    model_file: ClassVar[str] = ""
    Options: ClassVar[type] = ExportOptions
    generates: ClassVar[bool] = False  # exports a decoder LM as a generation bundle (export/generation.py)

    def __init__(self, options: Any | None = None):
        self.options = options if options is not None else self.Options()
        self.details: dict[str, Any] = {}  # the manifest's target-specific records, filled by _export_impl
        # option values the artifact was written with where _export_impl departed from those asked (a
        # fallback): the manifest's options record what was written, not what was asked
        self.written_options: dict[str, Any] = {}

    @property
    def precision(self) -> str:
        """Parity tolerance row: the options' ``precision`` field where it has one, else ``fp32``."""
        return getattr(self.options, "precision", "fp32")

    @classmethod
    def describe(cls, bundle: Bundle, parity) -> list:
        """What the command line prints after an export to this target, above the parity table.

        Exporters whose manifest ``details`` hold something a user should see (a precision
        table, a support check) override this; the CLI renders the blocks without knowing
        the target.

        Args:
            bundle: The bundle the export wrote.
            parity: Its :class:`~edgesmith.parity.ParityResult`.

        Returns:
            Blocks in order, each one of: a ``str`` (a line of plain text); ``{"markup": str}``
            (a line with rich markup such as ``[bold]...[/]``); ``{"title": str, "columns": [...],
            "rows": [[str, ...], ...]}`` (a table, a column being a header or a dict of
            ``name``, ``justify``, ``key``, ``wrap``). A generation bundle's summary by default.
        """
        gen = bundle.manifest.generation
        if not gen:
            return []
        greedy = (parity.generation or {}) if parity is not None else {}
        same = f"; greedy: {greedy['matched']} of {greedy['tokens']} tokens as the source model" if greedy else ""
        prompt = '--prompt "..."' if gen.get("tokenizer") else "--ids 1,2,3"
        return [f"generation bundle: KV cache of {gen['layers']} layers x {gen['kv_heads']} heads x {gen['head_dim']}, "
                f"tokenizer: {'yes' if gen.get('tokenizer') else 'no (generate from --ids)'}, chat template: "
                f"{'yes' if gen.get('chat_template') else 'no'}{same}",
                f"try: edgesmith generate {bundle.path} {prompt} --max-new-tokens 32"]

    def export(self, variant, out: str | Path, *, name: str | None = None, force: bool = False,
               keep_failed: bool = False) -> tuple[Bundle, Any]:
        """Export a variant to ``OUT/NAME.TARGET`` and check parity on the target's runtime.

        Args:
            variant: The variant to export.
            out: Output directory.
            name: Bundle name (default: the variant's).
            force: Overwrite an existing bundle.
            keep_failed: Keep the bundle even when parity fails (still raises).

        Returns:
            The bundle and its :class:`~edgesmith.parity.ParityResult`.

        Raises:
            OutputExistsError: The bundle exists and ``force`` is false.
            ParityError: The artifact's outputs differ from the source model's.
            BadInputError / RuntimeUnavailableError: From the conversion or the runtime.
        """
        # exporters may narrow the signature (static shapes); keep the caller's variant intact
        variant = dataclasses.replace(variant, inputs=list(variant.inputs), outputs=list(variant.outputs),
                                      notes=list(variant.notes))
        dest = bundle_dir(out, name or variant.name, self.name)
        check_writable(dest, force)
        self.written_options = {}
        source, step = variant, generation_step(self, variant)
        variant = step or variant
        with staged_bundle(dest, force) as stage:
            self._export_impl(variant, stage)
            generation = write_record(source, stage, step) if step else None
            reference = variant.run()
            save_golden(stage / GOLDEN, variant.example, reference)
            manifest = Manifest(
                name=dest.name.rsplit(".", 1)[0], target=self.name, runtime=self.runtime,
                model_file=self.model_file, precision=self.precision,
                inputs=variant.inputs, outputs=variant.outputs, task=variant.task,
                source=variant.source, passes=variant.passes,
                options={**dataclasses.asdict(self.options), **self.written_options, "notes": variant.notes},
                versions=library_versions(), details=self.details, generation=generation,
            )
            bundle = finalize_manifest(stage, manifest)
            parity = self._parity(bundle, variant)
            if step and parity.passed:
                greedy = check_greedy(bundle, source)
                parity.generation = greedy
                if not greedy["passed"]:
                    parity.failures.append(f"greedy generation: {greedy['matched']} of {greedy['tokens']} tokens "
                                           f"match the source model's (expected {greedy['expected']}, "
                                           f"got {greedy['got']})")
                    parity.passed = False
            manifest.parity = parity.to_dict()
            write_manifest(stage, manifest)
            if not parity.passed and not keep_failed:
                raise ParityError(f"{self.name} export of {variant.name} failed parity: "
                                  f"{'; '.join(parity.failures)}", parity)
        if not parity.passed:
            raise ParityError(f"{self.name} export of {variant.name} failed parity (bundle kept at {dest}): "
                              f"{'; '.join(parity.failures)}", parity)
        return Bundle(dest, manifest), parity

    def _parity(self, bundle: Bundle, variant):
        """Run the staged bundle on its runtime against the source model's outputs (golden + extra feeds).

        Exporters whose artifact cannot run here override this with a ``structural`` result.
        """
        from edgesmith.runtimes import check_bundle

        return check_bundle(bundle, extra=self._extra_feeds(variant))

    def _extra_feeds(self, variant) -> list[tuple]:
        """A second batch size, for models exported with a dynamic batch axis; for a generation
        step, its prefill and a decode step too."""
        more = extra_feeds(variant) if is_step(variant) else []
        if not variant.inputs or not all(0 in s.dynamic for s in variant.inputs):
            return more
        feeds = {k: np.concatenate([v, v[:1]], axis=0) for k, v in variant.example.items()}
        return [(feeds, variant.run(feeds)), *more]

    def _export_impl(self, variant, stage: Path) -> None:
        """Write the model files (``model_file`` at least) into ``stage``."""
        raise NotImplementedError
