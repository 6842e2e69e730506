"""ONNX exporter: ``torch.onnx.export`` with the dynamo exporter.

The variant is captured once with ``torch.export`` (dynamic batch and sequence
axes where the model allows them) and translated at a current opset; models
over 2 GB keep their weights as external data next to ``model.onnx``. ONNX
sources are re-saved as they are. Parity runs on ONNX Runtime (tier ``verified``).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from edgesmith.errors import BadInputError
from edgesmith.export.base import EXPORTERS, Exporter
from edgesmith.export.generation import extra_feeds, is_step
from edgesmith.quiet import quiet

TWO_GB = 2 * 1024**3


@dataclasses.dataclass
class OnnxOptions:
    """Options of the ``onnx`` target.

    Attributes:
        opset: ONNX opset of the default domain.
        dynamic: Keep the model's dynamic axes (batch, sequence); false exports fixed shapes.
        optimize: Run the ONNX graph optimizer after translation (constant folding, fusions).
        external_data: Store weights in ``model.onnx.data``; None decides by size (over 2 GB).
        generation: Export a decoder LM as a generation bundle (one graph with its KV cache,
            the tokenizer, the chat template); false keeps the prefill-only graph.
        fuse: Write ONNX Runtime's fused operators (``com.microsoft``): an encoder (BERT family)
            gets ``Attention``, ``BiasGelu``, ``Sum`` + ``LayerNormalization`` (:mod:`.onnx_fuse.encoder`);
            a Llama-family generation step is rewritten with ``GroupQueryAttention``,
            ``SkipSimplifiedLayerNormalization``, fused QKV and gate/up MatMuls (:mod:`.onnx_fuse.decoder`);
            where nothing fuses the graph stays and the manifest says why. False keeps the dynamo graph.
    """

    opset: int = 20
    dynamic: bool = True
    optimize: bool = True
    external_data: bool | None = None
    generation: bool = True
    fuse: bool = True


@EXPORTERS.register
class OnnxExporter(Exporter):
    """Variant -> ``model.onnx``, verified on ONNX Runtime."""

    name = "onnx"
    runtime = "onnxruntime"
    model_file = "model.onnx"
    Options = OnnxOptions
    generates = True

    def _export_impl(self, variant, stage: Path) -> None:
        import onnx

        path = stage / self.model_file
        if variant.module is None:
            model = onnx.load(str(variant.onnx_path))
            big = model.ByteSize() > TWO_GB if self.options.external_data is None else self.options.external_data
            onnx.save(model, str(path), save_as_external_data=big, location="model.onnx.data")
            return
        import contextlib

        from edgesmith.export.onnx_fuse import encoder as fuse_enc

        fuse_encoder = self.options.fuse and variant.task == "encoder"
        with fuse_enc.eager_attention(variant.module) if fuse_encoder else contextlib.nullcontext():
            program = self._program(variant)  # eager attention exports the pattern ORT's optimizer fuses
        import torch

        try:
            with quiet("torch.onnx", "torch.export", "torch._dynamo", "onnxscript", stdout=True):
                onnx_program = torch.onnx.export(
                    program, dynamo=True, opset_version=self.options.opset,
                    input_names=[s.name for s in variant.inputs],
                    output_names=[s.name for s in variant.outputs],
                    optimize=self.options.optimize, verbose=False,
                )
        except Exception as exc:
            raise BadInputError(
                f"ONNX cannot take {variant.name}: {_first_line(_root_cause(exc))}",
                hint="see the unsupported op named above; replace it or register a custom translation",
            ) from exc
        from edgesmith.models.complexity import unique_tensors

        size = sum(t.numel() * t.element_size() for t in unique_tensors(program.state_dict.values()))
        big = size > TWO_GB if self.options.external_data is None else self.options.external_data
        with quiet("torch.onnx", "torch.export", "torch._dynamo", "onnxscript", stdout=True):
            onnx_program.save(str(path), external_data=big)
        if fuse_encoder:
            self.details["fuse"] = self._fuse_encoder(path, variant, big)
        if self.options.fuse and is_step(variant):
            self.details["fuse"] = self._fuse_step(path, variant, big)

    def _fuse_encoder(self, path: Path, variant, big: bool) -> dict:
        """Fuse the encoder graph in place (:func:`~.onnx_fuse.encoder.fuse_encoder`); its manifest record."""
        from edgesmith.export.onnx_fuse import NotFusable
        from edgesmith.export.onnx_fuse.encoder import fuse_encoder

        if big:
            return {"applied": False, "note": "not fused: the weights are external data (over 2 GB)"}
        try:
            return fuse_encoder(path, variant)
        except NotFusable as exc:
            variant.notes.append(f"onnx: encoder not fused: {exc}")
            return {"applied": False, "note": f"not fused: {exc}"}

    def _fuse_step(self, path: Path, step, big: bool) -> dict:
        """Write the generation step's fused graph over the dynamo one (:func:`~.onnx_fuse.fuse_step`)."""
        from edgesmith.export.onnx_fuse import NotFusable, fuse_step

        try:
            return fuse_step(path, step, self.options.opset, big)
        except NotFusable as exc:
            step.notes.append(f"onnx: decoder not fused: {exc}")
            return {"applied": False, "note": f"not fused: {exc}"}

    def _extra_feeds(self, variant) -> list[tuple]:
        """A fused step takes two rows only one new token at a time after a past: its batch feeds
        are a prefill and a decode step (:func:`~.onnx_fuse.batch_feeds`), not the example doubled."""
        if not (is_step(variant) and self.details.get("fuse", {}).get("applied")):
            return super()._extra_feeds(variant)
        from edgesmith.export.onnx_fuse import batch_feeds

        return [*batch_feeds(variant), *extra_feeds(variant)]

    def _program(self, variant):
        from edgesmith.models.program import export_program, output_dynamic_axes

        if not self.options.dynamic:
            from edgesmith.specs import TensorSpec

            variant.inputs = [TensorSpec(s.name, s.shape, s.dtype) for s in variant.inputs]
            variant.outputs = [TensorSpec(s.name, s.shape, s.dtype) for s in variant.outputs]
        program = export_program(variant)
        axes = output_dynamic_axes(program, variant.inputs)
        from edgesmith.specs import TensorSpec

        # axes the program names win; declared ones it could not name stay (a KV cache's ``total``
        # = past + sequence is a sum of two input axes, which the program has no single name for)
        variant.outputs = [TensorSpec(s.name, s.shape, s.dtype, {**s.dynamic, **a})
                           for s, a in zip(variant.outputs, axes)]
        return program


def _root_cause(exc: BaseException) -> BaseException:
    """The innermost cause: torch wraps the error naming the unsupported op in generic ones."""
    seen = {id(exc)}
    while exc.__cause__ is not None and id(exc.__cause__) not in seen:
        exc = exc.__cause__
        seen.add(id(exc))
    return exc


def _first_line(exc: BaseException) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()  # torch colours its messages
    return f"{type(exc).__name__}: {text.splitlines()[0][:300] if text else ''}"
