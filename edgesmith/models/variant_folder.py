"""A language model's variant saved as a folder that keeps its module structure.

A ``torch.export`` program (``.pt2``) is a graph: the transformers class, its config and the modules
later passes look for (Llama attention, ``nn.Linear`` layers, FFN projections) are gone from it, so
neither another pass nor Dolphin could take it. A language-model variant (task ``lm``, a transformers
causal LM inside edgesmith's wrapper) is saved as a folder instead::

    OUT/
      config.json          the transformers config (``architectures`` names its built-in class)
      model.safetensors    the weights (a tied tensor once)
      tokenizer files      when the variant has a tokenizer (tokenizer.json, tokenizer_config.json, ...)
      edgesmith.json       format, name, task, source, passes (name, params, report), inputs, outputs and
                           example (as a ``.pt2`` keeps them), the wrapper's inputs and output, the attention
                           implementation, and every module a pass replaced or added (MatFormer's narrower
                           Linears, R-Sparse's layers, DeltaLLM's states): its path, registered class and
                           arguments (:mod:`edgesmith.models.modules`)

Loading refuses a folder that would run code (:func:`~edgesmith.models.hf.check_checkpoint`), builds the
config's class from transformers' own (``trust_remote_code`` is never on), puts the recorded modules in
place, then reads the safetensors (strict): the variant computes exactly what the saved one did.
"""

from __future__ import annotations

import base64
import copy
import io
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from edgesmith.errors import BadInputError
from edgesmith.specs import TensorSpec

FORMAT = "edgesmith-variant/1"
META = "edgesmith.json"
WEIGHTS = "model.safetensors"


def transformers_model(variant):
    """The transformers causal LM inside a language-model variant (edgesmith's wrapper holds it), else None."""
    transformers = sys.modules.get("transformers")  # a transformers model means transformers is imported
    module = variant.module
    if variant.task != "lm" or transformers is None or not all(hasattr(module, a) for a in ("input_names", "output")):
        return None
    lm = getattr(module, "model", None)
    return lm if isinstance(lm, transformers.PreTrainedModel) else None


def keeps_structure(variant) -> bool:
    """Whether ``variant`` is saved as a variant folder (a transformers LM) rather than a ``.pt2`` program."""
    return transformers_model(variant) is not None


def folder_for(out: str | Path) -> Path:
    """The folder a language model's variant is saved to for ``-o OUT``: ``OUT`` without a ``.pt2`` suffix."""
    out = Path(out)
    return out.with_suffix("") if out.suffix == ".pt2" else out


def is_variant_folder(ref: str | Path) -> bool:
    """Whether ``ref`` is a folder :func:`save_variant_folder` wrote (it has edgesmith.json and config.json)."""
    path = Path(ref)
    return path.is_dir() and (path / META).is_file() and (path / "config.json").is_file()


def variant_meta(variant) -> dict[str, Any]:
    """What a saved variant keeps of ``variant`` besides its module: name, task, source, passes, signature, example."""
    buf = io.BytesIO()
    np.savez(buf, **variant.example)
    return {
        "name": variant.name, "task": variant.task, "source": variant.source, "passes": variant.passes,
        "notes": variant.notes,
        "inputs": [s.to_dict() for s in variant.inputs], "outputs": [s.to_dict() for s in variant.outputs],
        "example": base64.b64encode(buf.getvalue()).decode(),
    }


def meta_signature(meta: dict[str, Any]) -> tuple[list[TensorSpec], list[TensorSpec], dict[str, np.ndarray]]:
    """``(inputs, outputs, example)`` of :func:`variant_meta`'s record (the example read without unpickling)."""
    inputs = [TensorSpec.from_dict(s) for s in meta["inputs"]]
    outputs = [TensorSpec.from_dict(s) for s in meta["outputs"]]
    with np.load(io.BytesIO(base64.b64decode(meta["example"])), allow_pickle=False) as z:
        example = {k: z[k] for k in z.files}
    return inputs, outputs, example


def _own_shapes(module) -> dict[str, tuple]:
    tensors = [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]
    return {name: tuple(t.shape) for name, t in tensors if t is not None}


def replaced_modules(lm, config) -> list[dict[str, Any]]:
    """The modules of ``lm`` that its class built from ``config`` would not have: ``[{"path", "class", "args"}]``.

    A module counts as replaced when the class alone would put another class, or tensors of other shapes,
    at its path (a sliced Linear), and as added when the class has nothing there (a pass's child module);
    its own children come with it.

    Raises:
        BadInputError: Such a module's class is not registered, or a pass removed a module.
    """
    import torch

    from edgesmith.models.modules import describe_module

    with torch.device("meta"):  # shapes only: nothing allocated, nothing initialised
        reference = dict(type(lm)(copy.deepcopy(config)).named_modules())
    found, taken = [], []
    present = dict(lm.named_modules())
    for path, module in present.items():
        if any(path.startswith(f"{p}.") for p in taken):
            continue
        ref = reference.get(path)
        if ref is not None and type(ref) is type(module) and _own_shapes(ref) == _own_shapes(module):
            continue
        record = describe_module(module)
        if record is None:
            raise BadInputError(
                f"cannot save the variant as a folder: module {path} ({type(module).__name__}) was put there by a "
                "pass, and its class is not registered for saving",
                hint="register it in edgesmith.models.modules.MODULE_KINDS (the pass that makes it does)")
        found.append({"path": path, **record})
        taken.append(path)
    gone = [p for p in reference if p not in present and not any(p.startswith(f"{t}.") for t in taken)]
    if gone:
        raise BadInputError(f"cannot save the variant as a folder: a pass removed module {gone[0]}",
                            hint="save it as a .pt2 program")
    return found


def _weights(lm) -> tuple[dict[str, Any], dict[str, str]]:
    """``(tensors, tied)``: the state dict with each tensor once (own contiguous storage, as safetensors
    wants), and every other name of a tied tensor (the LM head sharing the embeddings) -> the name kept."""
    tensors, tied, seen = {}, {}, {}
    for name, tensor in lm.state_dict().items():
        key = (tensor.data_ptr(), tuple(tensor.shape), tuple(tensor.stride()), tensor.dtype)
        if key in seen:
            tied[name] = seen[key]
            continue
        seen[key] = name
        tensor = tensor.detach()
        whole = tensor.storage_offset() == 0 and tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size()
        tensors[name] = tensor if whole and tensor.is_contiguous() else tensor.contiguous().clone()
    return tensors, tied


def save_variant_folder(variant, path: str | Path, force: bool = False) -> Path:
    """Save a language-model variant as a folder (see the module docstring), atomically.

    Args:
        variant: A variant for which :func:`keeps_structure` holds.
        path: The folder to write.
        force: Replace an existing ``path``.

    Returns:
        ``path``.

    Raises:
        OutputExistsError: ``path`` exists and ``force`` is false.
        BadInputError: The variant holds no transformers model, or a module a pass put in it cannot be saved.
    """
    from safetensors.torch import save_file

    from edgesmith.bundle import staged_bundle

    lm = transformers_model(variant)
    if lm is None:
        raise BadInputError(f"{variant.name} is not a transformers language model; it cannot be saved as a folder",
                            hint="save it as a .pt2 program")
    path = Path(path)
    config = copy.deepcopy(lm.config)
    config.architectures = [type(lm).__name__]
    modules = replaced_modules(lm, config)
    tensors, tied = _weights(lm)
    meta = {"format": FORMAT, **variant_meta(variant),
            "wrapper": {"inputs": list(variant.module.input_names), "output": variant.module.output},
            "model": {"class": type(lm).__name__, "attn_implementation": lm.config._attn_implementation},
            "modules": modules, "tied": tied}
    with staged_bundle(path, force) as stage:
        config.to_json_file(str(stage / "config.json"))
        save_file(tensors, str(stage / WEIGHTS))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(stage / WEIGHTS, 0o666 & ~umask)  # safetensors writes it private; the folder is an ordinary one
        if variant.source.get("tokenizer"):
            from edgesmith.models.hf import tokenizer_for

            tokenizer_for(variant).save_pretrained(str(stage))
        (stage / META).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    return path


def load_variant_folder(path: str | Path):
    """Load a folder written by :func:`save_variant_folder` into a variant.

    Raises:
        BadInputError: The folder would run code, is not a variant folder of this format, names a class
            transformers does not have or a module class nothing registers, or its weights do not fit.
        RuntimeUnavailableError: transformers is missing.
    """
    from edgesmith.errors import missing_extra
    from edgesmith.models.hf import check_checkpoint, wrap_model
    from edgesmith.models.variant import Variant

    path = Path(path)
    check_checkpoint(path)
    try:
        meta = json.loads((path / META).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise BadInputError(f"cannot read {path / META}: {exc}", hint="save the variant again") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise BadInputError(f"{path / META} is not an edgesmith variant folder record (format {found!r}, "
                            f"expected {FORMAT!r})", hint="save the variant again with edgesmith optimize -o")
    if not (path / WEIGHTS).is_file():
        raise BadInputError(f"variant folder {path} has no {WEIGHTS}", hint="save the variant again")
    try:
        import transformers
    except ImportError:
        raise missing_extra("transformers", "hf") from None
    from safetensors.torch import load_file

    try:
        config = transformers.AutoConfig.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
        inputs, outputs, example = meta_signature(meta)
        wrapper, model = meta["wrapper"], meta["model"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BadInputError(f"cannot read variant folder {path}: {type(exc).__name__}: {exc}",
                            hint="save the variant again") from None
    cls = getattr(transformers, str(model.get("class")), None)  # transformers' own classes only, never the folder's
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        raise BadInputError(f"variant folder {path} names model class {model.get('class')!r}, which transformers "
                            f"{transformers.__version__} does not have", hint="use the transformers it was saved with")
    lm = cls(config)
    for record in meta.get("modules") or []:
        _place(lm, record, path)
    if model.get("attn_implementation") and lm.config._attn_implementation != model["attn_implementation"]:
        lm.config._attn_implementation = model["attn_implementation"]  # a pass's (registered by its module)
    try:
        state = load_file(str(path / WEIGHTS))
        state.update({name: state[kept] for name, kept in dict(meta.get("tied") or {}).items()})
        lm.load_state_dict(state, strict=True)
    except Exception as exc:  # safetensors and torch raise plain errors for a damaged file or other shapes
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise BadInputError(f"the weights in {path / WEIGHTS} do not fit the model {path} describes: {reason}",
                            hint="save the variant again") from None
    lm.eval()
    module = wrap_model(lm, list(wrapper["inputs"]), str(wrapper["output"])).eval()
    source = dict(meta.get("source") or {"reference": str(path), "format": "variant-folder", "sha256": ""})
    source.pop("tokenizer", None)
    if (path / "tokenizer_config.json").is_file() or (path / "tokenizer.json").is_file():
        source["tokenizer"] = {"path": str(path), "gguf": None}
    return Variant(name=str(meta.get("name") or path.name), module=module, inputs=inputs, outputs=outputs,
                   example=example, source=source, task=str(meta.get("task", "lm")),
                   passes=list(meta.get("passes") or []), notes=list(meta.get("notes") or []))


def _place(lm, record: dict[str, Any], folder: Path) -> None:
    """Put the module ``record`` describes at its path in ``lm`` (replacing what is there, or adding it)."""
    from edgesmith.models.modules import build_module

    target = str(record.get("path", "")) if isinstance(record, dict) else ""
    parent_path, _, leaf = target.rpartition(".")
    try:
        parent = lm.get_submodule(parent_path)
    except AttributeError:
        parent = None
    # a module's place only: a child there, or a new name (never another attribute of the model)
    if not leaf or parent is None or (hasattr(parent, leaf) and leaf not in parent._modules):
        raise BadInputError(f"variant folder {folder} puts a module at {target!r}, which its model does not have",
                            hint="the folder's edgesmith.json was edited or damaged; save the variant again")
    setattr(parent, leaf, build_module(record, f"variant folder {folder}, module {target}"))
