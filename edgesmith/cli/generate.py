"""``edgesmith generate``: text from a generation bundle, streamed (registered by :mod:`edgesmith.cli`)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from edgesmith import errors
from edgesmith.cli.common import emit_json


def _ids(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(t) for t in text.replace(",", " ").split()]
    except ValueError:
        raise errors.UsageError(f"--ids takes whole numbers separated by commas, got {text!r}") from None


def _read(path: str | None, what: str) -> str | None:
    if path is None:
        return None
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise errors.BadInputError(f"cannot read {what} {path}: {getattr(exc, 'strerror', None) or exc}") from None


@click.command()
@click.argument("bundle", type=click.Path())
@click.option("--prompt", "-p", help="The prompt text.")
@click.option("--prompt-file", type=click.Path(), help="Read the prompt from a file.")
@click.option("--ids", help="Token ids instead of text (comma-separated), for a bundle without a tokenizer.")
@click.option("--chat", is_flag=True, help="Wrap the prompt in the model's chat template, as the user's turn.")
@click.option("--chat-template", type=click.Path(), help="A Jinja chat template file to use instead of the bundle's.")
@click.option("--system", help="A system message (with --chat).")
@click.option("--max-new-tokens", "-n", type=int, help="New tokens at most [default: the model's, else 64].")
@click.option("--temperature", "-t", type=float, help="0 decodes greedily (the default unless the model samples); "
                                                      "higher is more varied.")
@click.option("--top-k", type=int, help="Sample among the k most likely tokens (0: all).")
@click.option("--top-p", type=float, help="Sample among the most likely tokens whose probabilities reach p.")
@click.option("--seed", type=int, help="Sampler seed: the same seed gives the same text [default: 0].")
@click.option("--stop", multiple=True, help="A string that ends the generation (repeatable).")
@click.option("--ignore-eos", is_flag=True, help="Go on past end-of-sequence tokens (fixed-length timing).")
@click.option("--threads", default=0, help="Runtime threads (0 = runtime default).")
@click.option("--no-binding", is_flag=True, help="Pass the KV cache as numpy arrays each step instead of keeping "
                                                  "it in the runtime (ONNX Runtime's buffers, MLX arrays).")
@click.option("--context", "context_file", type=click.Path(),
              help="A Dolphin decoder bundle's context: a text file, compressed once by the encoder bundle.")
@click.option("--encoder", type=click.Path(), help="The Dolphin encoder bundle [default: NAME-encoder beside BUNDLE].")
@click.option("--json", "as_json", is_flag=True, help="Print the result (text, tokens, timings) as JSON, "
                                                       "without streaming.")
def generate(bundle, prompt, prompt_file, ids, chat, chat_template, system, max_new_tokens, temperature, top_k,
             top_p, seed, stop, ignore_eos, threads, no_binding, context_file, encoder, as_json):
    """Generate text with a language-model bundle, streaming it to stdout.

    BUNDLE is a generation bundle: a decoder LM exported to onnx, mlx or coreml, with its
    KV cache, tokenizer and chat template. Runs without torch (the runtime install).
    Timings (time to first token, ms per token) go to stderr.

    \b
    Examples:
      edgesmith export zoo:smollm2-135m --target onnx -o out
      edgesmith generate out/smollm2-135m.onnx --prompt "The capital of France is" -n 20
      edgesmith generate out/smollm2-135m.onnx --chat -p "Name three rivers." -t 0.7 --seed 1
      edgesmith generate out/smollm2-135m-dolphin-decoder.onnx --context doc.txt -p "Who wrote it?"
    """
    from edgesmith import api as es

    given = [x for x in (prompt, prompt_file, ids) if x is not None]
    if len(given) != 1:
        raise errors.UsageError("give exactly one of --prompt, --prompt-file and --ids",
                                hint='edgesmith generate BUNDLE --prompt "Once upon a time"')
    template = _read(chat_template, "the chat template")
    text = prompt if prompt is not None else _read(prompt_file, "the prompt")

    def show(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    result = es.generate(bundle, text, ids=_ids(ids), chat=chat, chat_template=template, system=system,
                         max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                         seed=seed, stop=stop, ignore_eos=ignore_eos, threads=threads, binding=not no_binding,
                         on_text=None if as_json else show, context=_read(context_file, "the context"),
                         encoder=encoder)
    from edgesmith.bundle import Bundle

    notes = (Bundle.open(bundle, verify=False).manifest.options or {}).get("notes", [])  # e.g. what a sparsity buys
    if as_json:
        emit_json({**result.to_dict(), "notes": notes})
        return
    click.echo("")
    speed = "" if result.ms_per_token is None else \
        f", {result.ms_per_token:.1f} ms/token ({result.tokens_per_s:.1f} tokens/s)"
    emulated = "; emulated: a stand-in for the runtime ran it here, these times are not the target's speed" \
        if result.timing == "emulated" else ""
    click.echo(f"{len(result.tokens)} tokens, time to first token {1000 * result.ttft_s:.1f} ms "
               f"({len(result.prompt_tokens)} prompt tokens){speed}, stopped: {result.stop_reason}{emulated}",
               err=True)
    for note in notes:
        click.echo(f"note: {note}", err=True)
