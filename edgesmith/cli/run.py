"""``edgesmith run``: a bundle on inputs, or a whole pipeline from a recipe (registered by :mod:`edgesmith.cli`)."""

from __future__ import annotations

from pathlib import Path

import click

from edgesmith.cli.common import emit_json, format_option, parity_row, parity_table, say
from edgesmith.cli.profile import print_fpga_resources, profile_table, warn_not_predicted
from edgesmith.cli.progressbar import progress


@click.command()
@click.argument("target", metavar="BUNDLE|RECIPE.yaml", type=click.Path())
@click.option("--inputs", "inputs_file", type=click.Path(dir_okay=False),
              help="Bundle: .npz with one array per input (default: the bundle's golden inputs).")
@click.option("-o", "--out", type=click.Path(),
              help="Bundle: write outputs to this .npz. Recipe: output folder (default: the recipe's out).")
@click.option("--force", is_flag=True, help="Overwrite --out (a recipe's bundles, profile and report).")
@click.option("--threads", default=0, help="Runtime threads (0 = runtime default).")
@click.option("--check", is_flag=True, help="Recipe: validate it and print the plan, run nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print output summaries (recipe: the results) as JSON.")
@format_option
def run(target, inputs_file, out, force, threads, check, as_json):
    """Run a bundle on inputs with its runtime, or a whole pipeline from a recipe.

    A recipe (.yaml) names the model, the variants' passes, the targets, the devices
    and the report ('edgesmith examples copy' writes two; see edgesmith.pipeline.recipe); it is validated before
    anything runs.

    \b
    Examples:
      edgesmith run out/digits-cnn.onnx --inputs digits.npz -o logits.npz
      edgesmith run examples/demo.yaml -o demo-out
    """
    if Path(target).suffix in (".yaml", ".yml"):
        return run_recipe_file(target, out, force, check, as_json)
    return run_bundle(target, inputs_file, out, force, threads, as_json)


def run_bundle(bundle, inputs_file, out, force, threads, as_json):
    """``edgesmith run BUNDLE``: run it on the inputs (default: its golden inputs) and summarise the outputs."""
    import warnings

    import numpy as np

    from edgesmith import api as es
    from edgesmith.arrays import load_arrays
    from edgesmith.bundle import Bundle, check_writable
    from edgesmith.runtimes.base import InputCastNote

    if out:
        check_writable(Path(out), force)
    if inputs_file:
        feeds = load_arrays(inputs_file, "inputs")
    else:
        feeds = Bundle.open(bundle).golden()[0]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", InputCastNote)
        outputs = es.run(bundle, feeds, threads=threads)
    for w in caught:
        if issubclass(w.category, InputCastNote):
            click.echo(f"note: {w.message}", err=True)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    if out:
        np.savez(out, **outputs)
    summary = {k: {"shape": list(v.shape), "dtype": str(v.dtype), "mean": float(np.mean(v)) if v.size else None,
                   "argmax": np.argmax(v, axis=-1).ravel()[:16].tolist() if v.ndim and v.size else None}
               for k, v in outputs.items()}  # an empty batch has neither
    if as_json:
        return emit_json(summary)
    for k, s in summary.items():
        mean = "-" if s["mean"] is None else f"{s['mean']:.4g}"
        click.echo(f"{k}: shape {s['shape']} {s['dtype']}, mean {mean}, argmax[:16] {s['argmax']}")
    if out:
        click.echo(f"wrote {out}")
    return None


def run_recipe_file(path, out, force, check, as_json):
    """``edgesmith run RECIPE.yaml``: validate, then (unless ``check``) run and show the results."""
    from edgesmith.pipeline.recipe import load_recipe, run_recipe

    recipe = load_recipe(path)
    if check:
        plan = {"model": recipe.model, "variants": [{"name": v.name, "passes": v.passes} for v in recipe.variants],
                "targets": recipe.targets, "devices": recipe.devices, "out": str(out or recipe.out)}
        if as_json:
            return emit_json(plan)
        click.echo(f"{path}: valid; {len(recipe.variants)} variant(s) x {len(recipe.targets)} target(s) "
                   f"on {', '.join(recipe.devices)} -> {plan['out']}")
        return None
    with progress("running the recipe") as status:
        results = run_recipe(recipe, out=out, force=force, step=lambda s: status.update(s))
    if as_json:
        return emit_json({"out": str(results["out"]), "bundles": [str(b) for b in results["bundles"]],
                           "parity": {k: v.to_dict() for k, v in results["parity"].items()},
                           "profile": str(results["profile"]), "report": [str(p) for p in results["report"]]})
    show_pipeline_results(results["parity"], results["doc"])
    for p in [results["profile"], *results["report"]]:
        say(f"wrote {p}")
    return None


def show_pipeline_results(parity: dict, doc: dict) -> None:
    """What a pipeline (a recipe, the demo) printed: the parity of each bundle, then the profile."""
    table = parity_table()
    for name, result in parity.items():
        parity_row(table, name, result)
    table.show()
    profile_table(doc).show()
    print_fpga_resources(doc)
    warn_not_predicted(doc)
