"""``edgesmith dolphin``: train, ask, evaluate and export a Dolphin pair (registered by :mod:`edgesmith.cli`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from edgesmith.cli.common import console, emit_json
from edgesmith.cli.progressbar import progress
from edgesmith.dolphin.options import DolphinOptions  # plain data, no torch: the train flags derive from it
from edgesmith.options import option_help


def _training_options(f):
    """One ``--name`` per :class:`DolphinOptions` field, typed and defaulted from it."""
    helps = option_help(DolphinOptions)
    for field in reversed(dataclasses.fields(DolphinOptions)):
        flag = "--" + field.name.replace("_", "-")
        f = click.option(flag, field.name, type=type(field.default), default=field.default, show_default=True,
                         help=helps.get(field.name, ""))(f)
    return f


@click.group()
def dolphin():
    """Dolphin: compress a long context into K memory vectors for the main LM (arXiv 2408.15518).

    A small encoder LM (by default the decoder's first 4 blocks) reads the context and K memory
    tokens; a projector maps their last hidden states into the decoder's prompt, which then holds
    K positions instead of the context: less prefill time and KV cache on the device.

    \b
    Examples:
      edgesmith dolphin train zoo:smollm2-135m -o out/dolphin
      edgesmith dolphin ask -m out/dolphin --context notes.txt --question "Who wrote it?"
      edgesmith dolphin eval -m out/dolphin
      edgesmith dolphin export -m out/dolphin -o out/bundles
    """


@dolphin.command()
@click.argument("model")
@click.option("--encoder", metavar="MODEL", help="A separate encoder LM (default: a truncated copy of MODEL).")
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False),
              help="Folder for dolphin.pt, dolphin.json and the checkpoint.")
@_training_options
@click.option("--resume", is_flag=True, help="Continue the run checkpointed in OUT/checkpoint.")
@click.option("--force", is_flag=True, help="Train again over an existing pair or checkpoint.")
@click.option("--json", "as_json", is_flag=True, help="Print the record written to dolphin.json.")
def train(model, encoder, out, resume, force, as_json, **fields):
    """Train the memory tokens and projector (both LMs frozen; --lora R adds encoder adapters).

    Two stages in one run: restore a context from its memory (--reconstruct-steps), then continue a
    document from the memory of its prefix (--steps). A checkpoint is written every --save-every
    steps; --resume continues it. The defaults take about 7 minutes on a 2-core CPU with SmolLM2-135M.

    \b
    Examples:
      edgesmith dolphin train zoo:smollm2-135m -o out/dolphin
      edgesmith dolphin train zoo:smollm2-135m -o out/dolphin --lora 8 --steps 300 --resume
    """
    from edgesmith import api as es

    DolphinOptions(**fields).check()  # a bad option is refused before any progress line
    with progress("loading models") as bar:
        record = es.dolphin_train(model, out, encoder=encoder, resume=resume, force=force,
                                  progress=lambda d, n, total: bar.update(d, completed=n, total=total), **fields)
    if as_json:
        emit_json(record)
        return
    stages = record["training"].get("stages", {})
    for name, stage in stages.items():
        click.echo(f"{name}: {stage['steps']} steps, loss {stage['loss_first']} -> {stage['loss_last']}")
    click.echo(f"trained {record['training']['trained_parameters']:,} parameters in {record['training']['seconds']} s "
               f"on {record['windows']} windows; wrote {Path(out) / 'dolphin.pt'}")


def _read_context(path: str) -> str:
    from edgesmith.errors import BadInputError

    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInputError(f"cannot read context {path}: {exc}", hint="give a UTF-8 text file") from None
    if not text.strip():
        raise BadInputError(f"context {path} is empty")
    return text


@dolphin.command()
@click.option("-m", "--model", "folder", required=True, type=click.Path(file_okay=False),
              help="A folder written by edgesmith dolphin train.")
@click.option("--context", required=True, type=click.Path(dir_okay=False), help="The document (UTF-8 text).")
@click.option("--question", required=True, help="What to ask (or the text to continue).")
@click.option("--max-new-tokens", default=48, show_default=True, type=click.IntRange(1, 4096))
@click.option("--full", is_flag=True, help="Answer with the whole context in the decoder's prompt instead (to compare).")
@click.option("--json", "as_json", is_flag=True, help="Print the answer, token counts and timings as JSON.")
def ask(folder, context, question, max_new_tokens, full, as_json):
    """Answer QUESTION about a long --context through its K memory vectors.

    The encoder reads the context (at most its window; longer is refused with the limit), the
    decoder reads K memory positions plus the question and generates with its KV cache.

    \b
    Example:
      edgesmith dolphin ask -m out/dolphin --context notes.txt --question "In short:"
    """
    from edgesmith import api as es

    text = _read_context(context)
    with progress(f"loading {folder}"):
        pair = es.dolphin(folder)
    record = es.dolphin_ask(pair, text, question, max_new_tokens=max_new_tokens, full=full)
    if as_json:
        emit_json(record)
    else:
        click.echo(record["answer"])
        console().print(f"[dim]{record['mode']}: {record['context_tokens']} context tokens -> "
                        f"{record['prompt_tokens']} decoder prompt tokens, {record['new_tokens']} generated in {record['seconds']} s[/dim]")


@dolphin.command("eval")
@click.option("-m", "--model", "folder", required=True, type=click.Path(file_okay=False),
              help="A folder written by edgesmith dolphin train.")
@click.option("--windows", default=0, type=int, help="Held-out windows to score (0: all of the test split).")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def evaluate(folder, windows, as_json):
    """Continuation perplexity on the evaluation text's test split: none / other / compressed / full.

    Each window is the training context length then the continuation length. 'other' is the
    memory of another window's context: what the trained memory tokens give by themselves.

    \b
    Example:
      edgesmith dolphin eval -m out/dolphin --windows 8 --json
    """
    from edgesmith import api as es

    with progress(f"loading {folder}"):
        pair = es.dolphin(folder)
    with progress("scoring windows") as bar:
        result = es.dolphin_eval(pair, windows=windows, progress=lambda n, total: bar.update(completed=n, total=total))
    if as_json:
        emit_json(result)
        return
    click.echo(f"continuation perplexity over {result['windows']} held-out windows ({result['tokens']} tokens): "
               f"none {result['none']}, other {result['other']}, compressed {result['compressed']}, "
               f"full {result['full']}; compressed closes {result['gap_closed']:.1%} of the none-full gap")


@dolphin.command("export")
@click.option("-m", "--model", "folder", required=True, type=click.Path(file_okay=False),
              help="A folder written by edgesmith dolphin train.")
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False), help="Folder for the two bundles.")
@click.option("--target", default="onnx", show_default=True, help="Export target.")
@click.option("--name", help="Bundle name stem (default: DECODER-dolphin).")
@click.option("--force", is_flag=True, help="Overwrite existing bundles.")
@click.option("--json", "as_json", is_flag=True, help="Print the bundles and their parity as JSON.")
def export(folder, out, target, name, force, as_json):
    """Export the encoder side (context -> memories) and the decoder side (memories + prompt -> logits)
    as two bundles, each parity-checked against the trained pair. On onnx the decoder side is a
    generation bundle (the memories in its prefill, then KV-cache steps): `edgesmith generate` runs
    the pair from a context file, without torch.

    \b
    Example:
      edgesmith dolphin export -m out/dolphin -o out/bundles
      edgesmith generate out/bundles/smollm2-135m-dolphin-decoder.onnx --context doc.txt -p "Who wrote it?"
    """
    from edgesmith import api as es

    with progress(f"exporting {folder} to {target}"):
        results = es.dolphin_export(folder, out, target=target, name=name, force=force)
    if as_json:
        emit_json([{"bundle": str(b.path), "parity": p.to_dict()} for b, p in results])
        return
    from edgesmith.cli.common import parity_row, parity_table

    table = parity_table()
    for bundle, result in results:
        parity_row(table, str(bundle.path), result)
    table.show()
    decoder = results[-1][0]
    if decoder.manifest.generation:
        click.echo(f"generate with: edgesmith generate {decoder.path} --context FILE --prompt TEXT")
