"""Load any MODEL reference of ARCHITECTURE.md into a :class:`Variant`.

============================= ==============================================================================
``path/model.pt2``            a ``torch.export`` program (edgesmith metadata kept)
``path/dir`` + config.json    a local Hugging Face checkpoint; ``gguf=`` for GGUF
``path/dir`` + edgesmith.json a variant folder: a language model ``optimize`` saved (:mod:`.variant_folder`)
``path/model.gguf``           a GGUF checkpoint (its directory holds the file)
``py:pkg.mod:factory``        a factory returning an ``nn.Module`` (+ ``weights``); a transformers causal LM
                              loads as a language model (token ids for its example, no tokenizer)
``path/model.onnx``           an ONNX model (inspect, profile, package)
``zoo:NAME``                  a built-in model
============================= ==============================================================================
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

from edgesmith.errors import BadInputError, UsageError
from edgesmith.quiet import quiet
from edgesmith.specs import TensorSpec, example_array

PT2_META = "edgesmith.json"


def load_model(
    ref: str,
    *,
    weights: str | Path | None = None,
    inputs: list[TensorSpec] | None = None,
    gguf: str | None = None,
    seq_len: int | None = None,
    name: str | None = None,
):
    """Load a model reference.

    Args:
        ref: A MODEL reference (see the module docstring).
        weights: Checkpoint for a ``py:`` factory (safetensors, or a torch file
            loaded with ``weights_only=True``).
        inputs: Input specs overriding the model's own (``--input``).
        gguf: GGUF file name inside a checkpoint directory.
        seq_len: Example sequence length for language models.
        name: Variant name (defaults from the reference).

    Returns:
        A :class:`~edgesmith.models.variant.Variant` whose example inputs the model accepts.

    Raises:
        BadInputError: Missing or unreadable model, unsafe weights, rejected input shape.
        UsageError: A malformed reference.
    """
    from edgesmith.models.zoo import load_zoo

    if ref.startswith("zoo:"):
        variant = load_zoo(ref[4:])
        if inputs:
            variant = _override_inputs(variant, inputs)
    elif ref.startswith("py:"):
        variant = _load_factory(ref, weights, inputs, seq_len)
    else:
        path = Path(ref)
        if not path.exists():
            raise BadInputError(f"model {ref} does not exist", hint=_missing_hint(path))
        if path.suffix == ".gguf":
            gguf, path = path.name, path.parent
        if path.is_dir() and not gguf and (path / PT2_META).is_file():
            from edgesmith.models.variant_folder import load_variant_folder

            variant = load_variant_folder(path)
            if inputs:
                variant = _override_inputs(variant, inputs)
        elif path.is_dir():
            if not gguf and not (path / "config.json").exists():
                raise BadInputError(f"{path} has no config.json", hint="point at a Hugging Face checkpoint directory")
            from edgesmith.models.hf import load_hf

            variant = load_hf(path, gguf=gguf, seq_len=seq_len)
            if inputs:
                variant = _override_inputs(variant, inputs)
        elif path.suffix == ".pt2":
            variant = _load_pt2(path, inputs)
        elif path.suffix == ".onnx":
            variant = _load_onnx(path, inputs)
        else:
            raise BadInputError(
                f"cannot tell what kind of model {path} is from its suffix {path.suffix!r}",
                hint="use .pt2, .onnx, .gguf, a checkpoint directory, py:module:factory or zoo:NAME",
            )
    if weights is not None and not ref.startswith("py:"):
        raise UsageError("--weights only applies to py:module:factory models")
    if name:
        variant.name = name
    _check_accepts(variant)
    return variant


def _missing_hint(path: Path) -> str:
    """What to give instead of a missing ``path``: the variant folder ``optimize -o NAME.pt2`` wrote for an LM."""
    from edgesmith.models.variant_folder import folder_for, is_variant_folder

    if path.suffix == ".pt2" and is_variant_folder(folder_for(path)):
        return (f"a language model's variant is saved as the folder {folder_for(path)} (it keeps the module "
                "structure later passes need): give that")
    return "give a file, a directory, py:... or zoo:..."


def _check_accepts(variant) -> None:
    """Run the example through the model so a rejected shape fails here, clearly."""
    try:
        outputs = variant.run()
    except Exception as exc:
        shapes = ", ".join(f"{s.name}:{'x'.join(map(str, s.shape))}:{s.dtype}" for s in variant.inputs)
        reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise BadInputError(
            f"{variant.source.get('reference', variant.name)} rejects input {shapes}: {reason}",
            hint="give the shape the model expects with --input name:shape:dtype",
        ) from None
    if not variant.outputs:
        variant.outputs = [TensorSpec(k, v.shape, str(v.dtype)) for k, v in outputs.items()]


def _override_inputs(variant, specs: list[TensorSpec]):
    known = {s.name: s for s in variant.inputs}
    for s in specs:
        if s.name not in known:
            raise UsageError(
                f"--input names {s.name!r}, which {variant.name} does not take",
                hint=f"its inputs are: {', '.join(known)}",
            )
    new = {s.name: TensorSpec(s.name, s.shape, s.dtype, known[s.name].dynamic) for s in specs}
    variant.inputs = [new.get(s.name, s) for s in variant.inputs]
    variant.example = {s.name: example_array(s) if s.name in new else variant.example[s.name] for s in variant.inputs}
    variant.outputs = [TensorSpec(o.name, (), o.dtype, o.dynamic) for o in variant.outputs]
    _check_accepts(variant)
    outs = variant.run()
    variant.outputs = [TensorSpec(o.name, outs[o.name].shape, o.dtype, o.dynamic) for o in variant.outputs]
    return variant


def load_weights(path: str | Path) -> dict:
    """Load a state dict safely: safetensors, or torch with ``weights_only=True``.

    Raises:
        BadInputError: Missing file, or a pickle that would run code when loaded.
    """
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:
            raise BadInputError(f"cannot read safetensors file {path}: {exc}") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0][:200]
        raise BadInputError(
            f"refused to load {path}: it holds objects that could run code when unpickled ({first})",
            hint="save plain tensors (model.state_dict()) or safetensors",
        ) from None
    except Exception as exc:
        raise BadInputError(f"cannot read weights file {path}: {type(exc).__name__}: {exc}") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise BadInputError(f"{path} holds a {type(state).__name__}, not a state dict")
    return state


def _load_factory(ref: str, weights, inputs, seq_len=None):
    """A ``py:`` factory's module as a variant: a transformers causal LM becomes a ``task="lm"`` variant."""
    import torch

    from edgesmith.bundle import sha256_file
    from edgesmith.models.variant import Variant, default_output_names, flatten_outputs

    try:
        mod_name, factory_name = ref[3:].rsplit(":", 1)
    except ValueError:
        raise UsageError(f"cannot read {ref!r}", hint="write py:package.module:factory") from None
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        factory = getattr(importlib.import_module(mod_name), factory_name)
    except ImportError as exc:
        raise BadInputError(f"cannot import {mod_name} for {ref}: {exc}") from None
    except AttributeError:
        raise BadInputError(f"{mod_name} has no factory {factory_name!r}") from None
    module = factory()
    if not isinstance(module, torch.nn.Module):
        raise BadInputError(f"{ref} returned a {type(module).__name__}, not a torch.nn.Module")
    sha = ""
    if weights is not None:
        state = load_weights(weights)
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise BadInputError(f"weights {weights} do not fit {ref}: {str(exc).splitlines()[0]} ...") from None
        sha = sha256_file(weights)
    module.eval()
    from edgesmith.models.hf import is_causal_lm

    if is_causal_lm(module):
        return _factory_lm(module, ref, factory_name, {"reference": ref, "format": "py", "sha256": sha,
                                                        "weights": str(weights or "")}, inputs, seq_len)
    if not inputs:
        raise UsageError(f"{ref} needs its input shapes", hint="pass --input name:1x3x224x224:float32")
    example = {s.name: example_array(s) for s in inputs}
    variant = Variant(
        name=factory_name.replace("_", "-"), module=module,
        inputs=[TensorSpec(s.name, s.shape, s.dtype, {0: "batch"} if s.shape else {}) for s in inputs],
        outputs=[], example=example,
        source={"reference": ref, "format": "py", "sha256": sha, "weights": str(weights or "")},
    )
    _check_accepts(variant)
    with torch.no_grad():
        n = len(flatten_outputs(module(*[torch.from_numpy(example[s.name]) for s in inputs])))
    outs = variant.run()
    names = default_output_names(n)
    variant.outputs = [TensorSpec(nm, outs[nm].shape, str(outs[nm].dtype), {0: "batch"}) for nm in names]
    return variant


def _factory_lm(model, ref: str, factory_name: str, source: dict, inputs, seq_len):
    """A factory's transformers causal LM, wrapped like a checkpoint's (no tokenizer: token ids from its vocabulary).

    ``--input input_ids:BxS`` (or ``--seq-len``) sizes the example; other names are refused.
    """
    from edgesmith.models.hf import model_variant

    shape = None
    for spec in inputs or []:
        if spec.name not in ("input_ids", "attention_mask") or len(spec.shape) != 2:
            raise UsageError(f"--input {spec.name}:{'x'.join(map(str, spec.shape))} does not fit {ref}, a causal LM",
                             hint="give input_ids:BATCHxLENGTH (token ids) or --seq-len, or nothing")
        shape = spec.shape
    batch, length = shape if shape else (1, seq_len)
    variant = model_variant(model, factory_name.replace("_", "-"), source, None, length, task="lm", batch=batch)
    _check_accepts(variant)
    return variant


def _load_pt2(path: Path, inputs):
    import logging

    import torch

    from edgesmith.bundle import sha256_file
    from edgesmith.models.variant import Variant, default_output_names

    extra = {PT2_META: ""}
    try:
        with quiet("torch.export", level=logging.CRITICAL):  # it logs a traceback for unreadable files
            program = torch.export.load(str(path), extra_files=extra)
    except Exception as exc:
        raise BadInputError(
            f"cannot read {path} as a torch.export program: {type(exc).__name__}: {str(exc)[:200]}",
            hint="save it with torch.export.save; the file may be truncated",
        ) from None
    meta = json.loads(extra[PT2_META]) if extra.get(PT2_META) else {}
    if meta:
        from edgesmith.models.variant_folder import meta_signature

        specs, outputs, example = meta_signature(meta)
    else:
        specs = _program_input_specs(program)
        outputs = []
        example = {}
    if inputs:
        known = {s.name: s for s in specs}
        specs = [TensorSpec(s.name, s.shape, s.dtype, known.get(s.name, s).dynamic) for s in inputs]
        example = {}
    example = {s.name: example[s.name] if s.name in example else example_array(s) for s in specs}
    variant = Variant(
        name=meta.get("name", path.stem.replace("_", "-")), module=program.module(), inputs=specs,
        outputs=outputs, example=example,
        source=meta.get("source") or {"reference": str(path), "format": "pt2", "sha256": sha256_file(path)},
        task=meta.get("task", "generic"), passes=meta.get("passes", []),
    )
    if not outputs:
        _check_accepts(variant)
        outs = variant.run()
        variant.outputs = [TensorSpec(n, v.shape, str(v.dtype)) for n, v in
                           zip(default_output_names(len(outs)), outs.values())]
    return variant


def _program_input_specs(program) -> list[TensorSpec]:
    import torch

    specs = []
    nodes = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    for name in program.graph_signature.user_inputs:
        val = nodes[name].meta.get("val")
        if val is None:
            raise BadInputError(f"program input {name} has no recorded shape", hint="pass --input")
        shape, dynamic = [], {}
        for i, d in enumerate(val.shape):
            if isinstance(d, torch.SymInt):
                hint = d.node.hint if d.node.hint is not None else 2
                shape.append(int(hint))
                dynamic[i] = "batch" if i == 0 else f"dim{i}"
            else:
                shape.append(int(d))
        specs.append(TensorSpec(name, tuple(shape), str(val.dtype).replace("torch.", ""), dynamic))
    return specs


def check_pt2_path(path: str | Path) -> Path:
    """``path`` if it names a ``.pt2`` file, else the error saying what to write instead.

    Every command reads a saved variant by its ``.pt2`` suffix (MODEL references), so a file
    saved under another name could not be read back; it is refused rather than renamed, as the
    user's name is kept as written.

    Raises:
        UsageError: Another suffix, or none.
    """
    path = Path(path)
    if path.suffix != ".pt2":
        fixed = path.with_suffix(".pt2") if path.suffix else path.with_name(path.name + ".pt2")
        raise UsageError(f"cannot save a variant as {str(path)!r}: edgesmith reads a saved variant by its "
                         f"suffix .pt2, and this name has {repr(path.suffix) if path.suffix else 'none'}",
                         hint=f"write -o {fixed}")
    return path


def save_pt2(variant, path: str | Path, force: bool = False) -> Path:
    """Save a variant as a ``torch.export`` program with its edgesmith metadata.

    The example inputs, signature, task, source and passes travel inside the
    ``.pt2`` so loading it again restores the variant.

    Raises:
        UsageError: ``path`` does not end in ``.pt2`` (no command could read it back).
        OutputExistsError: If ``path`` exists and ``force`` is false.
    """
    import os
    import tempfile

    import torch

    from edgesmith.bundle import check_writable
    from edgesmith.models.program import export_program
    from edgesmith.models.variant_folder import variant_meta

    path = check_pt2_path(path)
    check_writable(path, force)
    program = export_program(variant)
    meta = variant_meta(variant)
    path.parent.mkdir(parents=True, exist_ok=True)
    # torch.export.save warns about names not ending in .pt2; mkstemp makes the file private
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial.pt2", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        torch.export.save(program, tmp, extra_files={PT2_META: json.dumps(meta)})
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _load_onnx(path: Path, inputs):
    import onnx

    from edgesmith.bundle import sha256_file
    from edgesmith.models.variant import Variant

    try:
        model = onnx.load(str(path), load_external_data=False)
        onnx.checker.check_model(model)
    except Exception as exc:
        raise BadInputError(
            f"{path} is not a valid ONNX model: {type(exc).__name__}: {str(exc).strip()[:200]}"
        ) from None
    init_names = {i.name for i in model.graph.initializer}
    specs = []
    for vi in model.graph.input:
        if vi.name in init_names:
            continue
        specs.append(_value_info_spec(vi))
    outputs = [_value_info_spec(vi) for vi in model.graph.output]
    if inputs:
        known = {s.name: s for s in specs}
        specs = [TensorSpec(s.name, s.shape, s.dtype, known[s.name].dynamic if s.name in known else {})
                 for s in inputs]
    variant = Variant(
        name=path.stem.replace("_", "-"), module=None, inputs=specs, outputs=outputs,
        example={s.name: example_array(s) for s in specs},
        source={"reference": str(path), "format": "onnx", "sha256": sha256_file(path)},
        onnx_path=path,
    )
    return variant


def _value_info_spec(vi) -> TensorSpec:
    import onnx

    tt = vi.type.tensor_type
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type).name
    shape, dynamic = [], {}
    for i, d in enumerate(tt.shape.dim):
        if d.HasField("dim_value") and d.dim_value > 0:
            shape.append(d.dim_value)
        else:
            shape.append(1)
            dynamic[i] = d.dim_param or f"dim{i}"
    return TensorSpec(vi.name, tuple(shape), dtype, dynamic)
