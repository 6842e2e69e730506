"""``edgesmith optimize`` (registered by :mod:`edgesmith.cli`), and what it prints after the passes: the figures
each pass is judged by, and a search's front.

The whole report of every pass stays in ``--json``; here each gets one line with what a
user looks for: accuracy before -> after, the sparsity reached and what it cost, the
parameters before -> after.
"""

from __future__ import annotations

from pathlib import Path

import click

from edgesmith.cli.common import Column, DataTable, emit_json
from edgesmith.cli.options import load_model, model_options
from edgesmith.cli.progressbar import progress


@click.command()
@click.argument("model")
@model_options
@click.option("-p", "--pass", "pass_specs", multiple=True, required=True, metavar="PASS[:k=v,...]",
              help="Pass to apply, in order (see edgesmith passes list).")
@click.option("-o", "--out", required=True, type=click.Path(),
              help="Output: a .pt2 program; for a language model, the variant folder OUT (without .pt2).")
@click.option("--data", type=click.Path(exists=True),
              help="Training data for passes that train (distill): an image folder (one sub-folder per class) or .npz.")
@click.option("--resume", is_flag=True, help="Continue a training pass (distill, matformer train=) from OUT.ckpt/.")
@click.option("--force", is_flag=True, help="Overwrite an existing output (and start a checkpointed run over).")
@click.option("--json", "as_json", is_flag=True, help="Print the pass reports as JSON.")
def optimize(model, inputs, weights, gguf, seq_len, pass_specs, out, data, resume, force, as_json):
    """Apply passes to a model and save the variant.

    What -o writes depends on the model. A language model (a transformers causal LM,
    e.g. zoo:smollm2-135m, or a variant folder) is saved as the variant folder OUT
    (-o OUT.pt2 names the folder OUT): config.json, model.safetensors, its tokenizer
    and edgesmith.json. It keeps the modules, so another 'edgesmith optimize OUT -p ...',
    'edgesmith dolphin train OUT' or 'edgesmith export OUT' continues from it. Any
    other model is saved as the torch.export program OUT.pt2. Both keep the passes
    applied, the signature and the example inputs. A distillation writes a
    checkpoint to OUT.ckpt/ after every epoch, a MatFormer nested fine-tune every
    save_every steps; --resume continues from it.

    \b
    Examples:
      edgesmith optimize zoo:digits-cnn -p reparam -o digits-reparam.pt2
      edgesmith optimize zoo:digits-cnn -p distill:student=lsnet-t,width=0.08,depth=0.25,epochs=20 \\
          --data digits.npz -o digits-lsnet.pt2
      edgesmith optimize zoo:smollm2-135m -o smol-budget.pt2 \\
          -p matformer:budget_ms=50,text=devils-dictionary,seq_len=128
      edgesmith optimize zoo:smollm2-135m -p matformer:ratio=0.75 -o smol-075
      edgesmith optimize smol-075 -p rsparse:sparsity=0.5 -o smol-075-sparse
    """
    from edgesmith import api as es
    from edgesmith.bundle import check_writable
    from edgesmith.models import save_pt2
    from edgesmith.models.loader import check_pt2_path
    from edgesmith.models.variant_folder import folder_for, keeps_structure, save_variant_folder

    variant = load_model(model, inputs, weights, gguf, seq_len)
    # a language model keeps its modules (a .pt2 graph would lose what later passes need)
    folder = folder_for(out) if keeps_structure(variant) else None
    # before the passes run: a long pass must not end in a file nobody can read, or over an existing one
    check_writable(folder or check_pt2_path(out), force)
    defaults = {"checkpoint": str(Path(out).with_suffix(".ckpt")), "resume": resume, "force": force}
    if data:
        defaults["data"] = data
    with progress("applying passes") as bar:
        variant = es.optimize(variant, pass_specs, defaults=defaults,
                              progress=lambda d, n, total: bar.update(d, completed=n, total=total))
        bar.update(f"saving {folder or out}")
        if folder:
            save_variant_folder(variant, folder, force=force)
        else:
            save_pt2(variant, out, force=force)
    if as_json:
        return emit_json({"out": str(folder) if folder else out, "passes": variant.passes})
    print_pass_reports(variant.passes)
    click.echo(f"wrote {folder} (a variant folder: later passes and dolphin train continue from it)" if folder
               else f"wrote {out}")
    return None


def print_pass_reports(passes: list[dict]) -> None:
    """One line per pass (see :func:`pass_summary`), then any search front."""
    for p in passes:
        seconds = f" ({p['seconds']} s)" if p.get("seconds") is not None else ""
        click.echo(f"{p['name']}: {pass_summary(p['name'], p.get('report') or {})}{seconds}")
        if "search" in (p.get("report") or {}) and "front" in p["report"]["search"]:
            print_front(p["report"]["search"])


def _pct(v: float) -> str:
    return f"{v:.2%}"


def _accuracy(acc: dict, before: str, after: str) -> str:
    """``test accuracy 97.50% -> 96.94% (360 held-out samples)`` from :func:`held_out_accuracy`'s record."""
    return (f"test accuracy {_pct(acc[before])} -> {_pct(acc[after])} ({acc[after] - acc[before]:+.2%}, "
            f"{acc.get('samples', '?')} held-out samples)")


def pass_summary(name: str, report: dict) -> str:
    """The few figures a pass is judged by, in words.

    Args:
        name: The pass (``reparam``, ``prepbn``...).
        report: Its report, as :func:`edgesmith.api.optimize` records it.

    Returns:
        One line; for a pass without a summary of its own, its scalar figures as ``key value``.
    """
    r = report
    if name == "reparam":
        folds = ", ".join(f"{k} {n}" for k, n in r.get("by_fold", {}).items() if n)
        text = f"{r.get('folded', 0)} folds" + (f" ({folds})" if folds else "")
        if r.get("constants"):
            text += f", {r['constants']} constants folded"
        if "max_abs" in r:
            text += f"; outputs unchanged (max_abs {r['max_abs']:.2g})"
        if r.get("kept"):
            text += f"; {len(r['kept'])} norm(s) kept (see the notes)"
        return text
    if name in ("prepbn", "sla"):
        before, after = ("layernorm", "repbn") if name == "prepbn" else ("softmax", "sla")
        what = "LayerNorm" if name == "prepbn" else "attention"
        text = f"{len(r.get('converted', []))} {what} module(s) converted"
        if r.get("test_accuracy"):
            text += "; " + _accuracy(r["test_accuracy"], before, after)
        return text
    if name == "distill":
        text = (f"student {r.get('student')} {r.get('student_params', 0):,} params (teacher "
                f"{r.get('teacher_params', 0):,})")
        if "accuracy" in r:
            text += (f"; test accuracy {_pct(r['teacher_accuracy'])} (teacher) -> {_pct(r['accuracy'])} "
                     f"({r['accuracy'] - r['teacher_accuracy']:+.2%}, {r.get('test_images', '?')} images)")
        if "agreement" in r:
            text += f"; agrees with the teacher on {_pct(r['agreement'])}"
        return text
    if name == "rsparse":
        text = (f"achieved sparsity {_pct(r['achieved_sparsity'])} (target {_pct(r['target_sparsity'])}) "
                f"over {r.get('layers', '?')} layers") if "achieved_sparsity" in r else "no sparsity counted"
        nll = r.get("calibration_nll")
        if nll:
            text += (f"; calibration loss {nll['dense']:.3f} -> {nll['sparse']:.3f} nats/token "
                     f"({nll['sparse'] - nll['dense']:+.3f})")
        return text
    if name == "matformer":
        before, after = r.get("params_before"), r.get("params_after")
        text = f"{r.get('ffns', '?')} FFN(s) sliced"
        if before and after is not None:
            text += f"; params {before:,} -> {after:,} ({(after - before) / before:+.1%})"
        return text
    if name == "deltallm":
        return (f"score sparsity {_pct(r['score_sparsity'])}, attention sparsity {_pct(r['attention_sparsity'])} "
                f"(counted on {r.get('counting_tokens', '?')} prefill tokens) in {r.get('attention_layers', '?')} "
                "attention layers")
    scalars = {k: v for k, v in r.items() if isinstance(v, (int, float, str, bool)) and not isinstance(v, dict)}
    return ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in scalars.items()) or "done"


def print_front(search: dict) -> None:
    """The Mix'n'Match candidates no other beats on cost and loss, and the one chosen."""
    latency = "latency_ms" in search["chosen"]
    table = DataTable(Column("candidate", key=True),
                      *(Column(c, "right") for c in ("parameters", *(["latency ms"] if latency else []),
                                                     "calibration loss", "fits")),
                      title=f"Mix'n'Match front ({search['evaluated']} candidates scored, {search['budget']})")
    for row in search["front"]:
        cells = [row["how"], f"{row['params']:,}"]
        if latency:
            cells.append(f"{row['latency_ms']:.3f} ({row['latency_mode']})")
        cells += [f"{row['loss']:.4f}", "yes" if row["within_budget"] else "no"]
        table.add_row(*cells)
    table.show(stderr=True)
    chosen = search["chosen"]
    took = f", {chosen['latency_ms']:.3f} ms {chosen['latency_mode']}" if latency else ""
    click.echo(f"chosen: {chosen['how']}, {chosen['params']:,} parameters{took}, calibration loss {chosen['loss']:.4f}, "
               f"widths {'/'.join(map(str, chosen['widths']))}")
