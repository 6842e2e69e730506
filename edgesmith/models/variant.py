"""The ``Variant``: a torch module plus what was done to it.

Loaders produce a variant with no passes; passes map a variant to a new one;
exporters turn a variant into a bundle. An ONNX source is a variant without a
module (``onnx_path`` set): it can be inspected, profiled and packaged, not optimized.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgesmith.specs import TensorSpec


@dataclass
class Variant:
    """A model ready for passes and exporters.

    Attributes:
        name: Short name used for bundles (``digits-cnn``).
        module: The torch module (eval mode), taking the inputs positionally in
            ``inputs`` order and returning a tensor or a tuple of tensors; None for ONNX sources.
        inputs: Input signature, with dynamic axes where the model allows them.
        outputs: Output signature.
        example: Example inputs (name -> array), used for golden data and parity.
        source: ``{"reference", "sha256", "format"}`` of what was loaded.
        task: ``classifier``, ``lm``, ``encoder`` or ``generic``.
        passes: Passes applied so far, each ``{"name", "params", ...}``.
        onnx_path: The ONNX file, for ONNX sources.
        notes: Warnings collected on the way (shown by the CLI, kept in manifests).
    """

    name: str
    module: Any
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    example: dict[str, np.ndarray]
    source: dict[str, Any]
    task: str = "generic"
    passes: list[dict[str, Any]] = field(default_factory=list)
    onnx_path: Path | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def classify(self) -> bool:
        """Whether parity reports top-1 agreement (classifiers and LMs)."""
        return self.task in ("classifier", "lm")

    def with_module(self, module: Any, pass_record: dict[str, Any]) -> "Variant":
        """Return a copy with a new module and one more pass recorded."""
        return replace(self, module=module, passes=[*self.passes, pass_record], notes=list(self.notes))

    def run(self, feeds: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """Run the source model on numpy inputs (the example by default).

        Returns:
            Output name -> array.
        """
        feeds = self.example if feeds is None else feeds
        if self.module is None:
            import onnxruntime as ort

            sess = ort.InferenceSession(str(self.onnx_path), providers=["CPUExecutionProvider"])
            values = sess.run(None, feeds)
            return {s.name: v for s, v in zip(self.outputs, values)}
        return run_module(self.module, self.inputs, self.outputs, feeds)


def run_module(module, inputs: list[TensorSpec], outputs: list[TensorSpec] | None, feeds) -> dict[str, np.ndarray]:
    """Run a torch module on numpy feeds and name its outputs.

    Args:
        module: Module taking the inputs positionally.
        inputs: Input signature (gives the order).
        outputs: Output signature (gives the names); None names them ``output_i``.
        feeds: Input name -> array.
    """
    import torch

    args = [torch.from_numpy(np.ascontiguousarray(feeds[s.name])) for s in inputs]
    with torch.no_grad():
        result = module(*args)
    tensors = flatten_outputs(result)
    names = [s.name for s in outputs] if outputs else default_output_names(len(tensors))
    return {n: t.detach().cpu().numpy() for n, t in zip(names, tensors)}


def flatten_outputs(result) -> list:
    """Flatten a module's return value (tensor, tuple, list, dict) to a list of tensors."""
    import torch

    if isinstance(result, torch.Tensor):
        return [result]
    if isinstance(result, dict):
        return [t for v in result.values() for t in flatten_outputs(v)]
    if isinstance(result, (tuple, list)):
        return [t for v in result for t in flatten_outputs(v)]
    raise TypeError(f"model returned {type(result).__name__}, expected tensors")


def default_output_names(n: int) -> list[str]:
    """``output`` for one output, ``output_0..`` for several."""
    return ["output"] if n == 1 else [f"output_{i}" for i in range(n)]
