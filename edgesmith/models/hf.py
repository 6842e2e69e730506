"""Local Hugging Face checkpoints (safetensors or GGUF) as variants.

Encoders (BERT family, e.g. all-MiniLM-L6-v2) export ``last_hidden_state``;
causal LMs (Llama family, e.g. SmolLM2 from GGUF) export prefill ``logits``.
Example inputs come from the checkpoint's own tokenizer (from the GGUF for a GGUF), or are
token ids drawn from the vocabulary for a folder without tokenizer files (and for a
transformers model a ``py:`` factory returns: :func:`model_variant`). Nothing is downloaded:
``local_files_only`` is always set. Nothing in a checkpoint runs: a folder whose
configs point at its own Python code (``auto_map``) is refused before transformers
reads it (and ``trust_remote_code=False`` is passed everywhere), and weights are read
from safetensors only, never from a pickle (``pytorch_model.bin``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edgesmith.errors import BadInputError, missing_extra
from edgesmith.specs import TensorSpec

EXAMPLE_TEXT = [
    "edgesmith ships trained models to phones, laptops and FPGAs.",
    "Parity checks catch a converted model that computes something else.",
]


def _module_class():
    import torch

    class HFWrapper(torch.nn.Module):
        """Positional-argument front for a transformers model, returning one tensor."""

        def __init__(self, model, input_names: list[str], output: str):
            super().__init__()
            self.model = model
            self.input_names = list(input_names)
            self.output = output

        def forward(self, *args):
            kwargs = dict(zip(self.input_names, args))
            if self.output == "logits":
                kwargs["use_cache"] = False
            return getattr(self.model(**kwargs), self.output)

    return HFWrapper


def wrap_model(model, input_names: list[str], output: str):
    """A transformers model as the module of a variant: positional inputs in, one output tensor out.

    This is the module :func:`load_hf` puts in a variant, for a model built in code (a small
    random ``LlamaForCausalLM`` in a test, say) instead of read from a checkpoint.

    Args:
        model: A transformers model (a causal LM keeps it as ``.model``, where Dolphin looks for it).
        input_names: The model's keyword inputs, in the order the wrapper takes them positionally.
        output: The output field to return (``logits`` also turns the KV cache off).

    Returns:
        The wrapper module (in the model's train/eval mode; call ``.eval()`` as needed).
    """
    return _module_class()(model, input_names, output)


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
_REFUSE_HINT = ("use a checkpoint of an architecture transformers has built in, or load the model in your own "
                "code and give it to edgesmith as py:module:factory")


def check_checkpoint(path: Path, gguf: str | None = None) -> None:
    """Refuse a checkpoint folder that would run code when transformers loads it.

    Two things in a Hugging Face folder run code: an ``auto_map`` in any of its
    ``*config.json`` files (transformers imports the ``.py`` it names, after asking on
    stdin) and pickled weights (``pytorch_model.bin`` and the like). The first is
    always refused; pickles are refused unless safetensors weights sit beside them (then
    only the safetensors are read).

    Args:
        path: The checkpoint directory.
        gguf: The GGUF file inside it, if the weights come from GGUF.

    Raises:
        BadInputError: Naming the config and the ``.py`` file, or the pickle file.
    """
    for cfg in sorted(path.glob("*config.json")):
        try:
            data = json.loads(cfg.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise BadInputError(f"cannot read {cfg}: not a JSON file ({reason})",
                                hint="restore the checkpoint's file") from None
        refs = _auto_map_refs(data)
        if refs:
            files = [_code_file(r) for r in refs]
            here = [f for f in files if (path / f).is_file()] or files
            raise BadInputError(
                f"refused to load Hugging Face checkpoint {path}: {cfg.name} maps classes to code shipped with "
                f"it ({', '.join(dict.fromkeys(here))}, through auto_map); edgesmith never runs a "
                "checkpoint's code", hint=_REFUSE_HINT)
    if gguf or any(path.glob("*.safetensors")):
        return
    pickles = sorted(f.name for f in path.iterdir() if f.suffix in PICKLE_SUFFIXES and f.is_file())
    if pickles:
        raise BadInputError(
            f"refused to load Hugging Face checkpoint {path}: its weights {pickles[0]} are a pickle, which can run "
            "code when loaded; edgesmith reads safetensors only",
            hint="convert the weights to model.safetensors (safetensors.torch.save_file) where you trust the file")


def _auto_map_refs(data) -> list[str]:
    """Every class reference under an ``auto_map`` key, anywhere in a parsed config."""
    refs: list[str] = []
    if isinstance(data, dict):
        for key, value in data.items():
            if key == "auto_map":
                values = value.values() if isinstance(value, dict) else [value]
                found = [x for v in values for x in (v if isinstance(v, list) else [v]) if isinstance(x, str)]
                refs += found or [repr(value)]
            else:
                refs += _auto_map_refs(value)
    elif isinstance(data, list):
        for item in data:
            refs += _auto_map_refs(item)
    return refs


def _code_file(ref: str) -> str:
    """``repo--modeling_x.Cls`` or ``modeling_x.Cls`` -> ``modeling_x.py``."""
    module = ref.split("--")[-1].rpartition(".")[0]
    return module.replace(".", "/") + ".py" if module.replace(".", "").replace("_", "").isalnum() else ref


def load_hf(path: Path, gguf: str | None = None, seq_len: int | None = None):
    """Load a local checkpoint directory (or a GGUF file) into a variant.

    A folder without tokenizer files (``config.json`` and ``model.safetensors`` only) loads
    too: its example is token ids drawn from the vocabulary, and it has no tokenizer (a
    generation bundle made from it generates from token ids).

    Args:
        path: Directory with ``config.json``, or the directory holding ``gguf``.
        gguf: GGUF file name inside ``path`` (loads a causal LM through transformers).
        seq_len: Pad/truncate the example prompt to this many tokens.

    Raises:
        RuntimeUnavailableError: If transformers is missing.
        BadInputError: If transformers cannot read the checkpoint or its tokenizer files, or
            loading it would run code (see :func:`check_checkpoint`).
    """
    check_checkpoint(path, gguf)
    try:
        import torch
        import transformers
    except ImportError:
        raise missing_extra("transformers", "hf") from None
    from edgesmith.bundle import sha256_file

    transformers.logging.disable_progress_bar()
    kw = {"local_files_only": True, "trust_remote_code": False}
    if gguf:
        kw["gguf_file"] = gguf
    tok = _load_tokenizer(path, kw)
    try:
        config = transformers.AutoConfig.from_pretrained(str(path), **kw)
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES as CAUSAL

        causal = set(CAUSAL.values())  # GPT2LMHeadModel and the like, beside every ...ForCausalLM
        is_lm = bool(gguf) or any(a.endswith("ForCausalLM") or a in causal for a in (config.architectures or []))
        auto = transformers.AutoModelForCausalLM if is_lm else transformers.AutoModel
        safe = {} if gguf else {"use_safetensors": True}  # never a pickle (check_checkpoint)
        model = auto.from_pretrained(str(path), dtype=torch.float32, **kw, **safe).eval()
    except (OSError, ValueError, KeyError) as exc:
        raise BadInputError(f"cannot load Hugging Face checkpoint {path}: {exc}") from None
    weights = path / gguf if gguf else next(iter(sorted(path.glob("*.safetensors"))), path / "config.json")
    source = {"reference": str(path / gguf) if gguf else str(path), "format": "gguf" if gguf else "hf",
              "sha256": sha256_file(weights)}
    if tok is not None:
        source["tokenizer"] = {"path": str(path), "gguf": gguf}
    return model_variant(model, _name(path, gguf), source, tok, seq_len, task="lm" if is_lm else "encoder")


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "merges.txt",
                   "tokenizer.model", "spiece.model", "sentencepiece.bpe.model", "special_tokens_map.json")


def _load_tokenizer(path: Path, kw: dict):
    """The checkpoint's tokenizer, or None for a folder that has no tokenizer files at all.

    Without files transformers may still build a tokenizer from the config alone (BERT's:
    special tokens only, every word unknown); that is not the model's tokenizer, so it is
    not asked.
    """
    import transformers

    present = [f for f in TOKENIZER_FILES if (path / f).is_file()]
    if not kw.get("gguf_file") and not present:
        return None  # weights only: the variant runs on token ids
    try:
        tok = transformers.AutoTokenizer.from_pretrained(str(path), **kw)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise BadInputError(f"cannot load the tokenizer of {path} ({', '.join(present) or kw.get('gguf_file')}): "
                            f"{reason}", hint="restore the tokenizer files, or remove them all to work from "
                                              "token ids") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def is_causal_lm(module) -> bool:
    """Whether ``module`` is a transformers decoder-only LM with its head (``...ForCausalLM``, ``GPT2LMHeadModel``)."""
    import sys

    transformers = sys.modules.get("transformers")  # a model of its classes means it is imported
    if transformers is None or not isinstance(module, transformers.PreTrainedModel):
        return False
    config = module.config
    return (module.can_generate() and not getattr(config, "is_encoder_decoder", False)
            and module.get_output_embeddings() is not None)


def model_variant(model, name: str, source: dict, tokenizer=None, seq_len: int | None = None, task: str = "lm",
                  batch: int | None = None):
    """A transformers model (a causal LM: ``logits``; an encoder: ``last_hidden_state``) as a variant.

    The example inputs are the tokenizer's encoding of :data:`EXAMPLE_TEXT`, or without a
    tokenizer seeded token ids drawn from the vocabulary (and a mask of ones). Only the
    inputs the model's ``forward`` takes are kept (a tokenizer's ``token_type_ids`` is
    dropped for a decoder that has none).

    Args:
        model: The transformers model, in eval mode.
        name: Variant name.
        source: The variant's ``source`` record (reference, format, sha256, tokenizer).
        tokenizer: Its tokenizer, or None.
        seq_len: Example sequence length (pad/truncate the text; the length of the ids without a tokenizer).
        task: ``lm`` or ``encoder``.
        batch: Example rows without a tokenizer (default: 1 for an LM, 2 for an encoder).

    Returns:
        A :class:`~edgesmith.models.variant.Variant` wrapping the model (:func:`wrap_model`).
    """
    import inspect

    import torch

    from edgesmith.models.variant import Variant

    accepted = set(inspect.signature(model.forward).parameters)
    output = "logits" if task == "lm" else "last_hidden_state"
    if tokenizer is not None:
        text = EXAMPLE_TEXT[:1] if task == "lm" else EXAMPLE_TEXT
        enc = tokenizer(text, return_tensors="np", padding="max_length" if seq_len else True,
                        truncation=bool(seq_len), max_length=seq_len)
        names = [n for n in tokenizer.model_input_names if n in enc and n in accepted]
        example = {n: np.ascontiguousarray(enc[n].astype(np.int64)) for n in names}
    else:
        config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        shape = (batch or (1 if task == "lm" else len(EXAMPLE_TEXT)), seq_len or 16)
        ids = np.random.default_rng(0).integers(0, config.vocab_size, shape).astype(np.int64)
        example = {"input_ids": ids, "attention_mask": np.ones(shape, np.int64)}
        example = {n: a for n, a in example.items() if n in accepted}
        names = list(example)
    dyn = {0: "batch", 1: "sequence"}
    inputs = [TensorSpec(n, example[n].shape, "int64", dict(dyn)) for n in names]
    module = wrap_model(model, names, output).eval()
    with torch.no_grad():
        out = module(*[torch.from_numpy(example[n]) for n in names])
    return Variant(name=name, module=module, inputs=inputs, outputs=[TensorSpec(output, tuple(out.shape), "float32",
                                                                                dict(dyn))],
                   example=example, source=source, task=task)


def _name(path: Path, gguf: str | None) -> str:
    """A bundle name: the GGUF stem, or the directory name (its parent's for a generic ``model/``)."""
    if gguf:
        raw = Path(gguf).stem
    else:
        raw = path.resolve().name
        if raw.lower() in ("model", "checkpoint", "weights"):
            raw = path.resolve().parent.name
    return raw.lower().replace("_", "-")


def tokenizer_for(variant):
    """The tokenizer of a variant loaded from a Hugging Face checkpoint or GGUF (passes keep it).

    Raises:
        BadInputError: The variant did not come from a checkpoint with a tokenizer.
    """
    info = variant.source.get("tokenizer")
    if not info:
        raise BadInputError(f"{variant.name} has no tokenizer (its source, {variant.source.get('reference')}, "
                            "came without tokenizer files)", hint="give token arrays (an .npz) instead of text")
    try:
        import transformers
    except ImportError:
        raise missing_extra("transformers", "hf") from None
    check_checkpoint(Path(info["path"]), info.get("gguf"))
    kw = {"local_files_only": True, "trust_remote_code": False,
          **({"gguf_file": info["gguf"]} if info.get("gguf") else {})}
    tok = transformers.AutoTokenizer.from_pretrained(info["path"], **kw)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok
