"""R-Sparse (``rsparse``): rank-aware activation sparsity for the linear layers of a language model.

R-Sparse (Zhang et al., 2025, arXiv 2504.19449) splits each linear layer's input per token into
the channels that matter, which go through the exact weights, and the rest, which share a
low-rank approximation of the weights (:mod:`edgesmith.optimize.rsparse.layers`)::

    before:  y = W x + b
    after:   y = W (x * m) + b + ((x * (1 - m)) V_r S_r) U_r^T,   m = 1[|x * ||W[:, i]||| > t]

Budget per layer at target sparsity ``s`` with sparse share ``rho``: ``c = floor(d_in (1 - s) rho)``
channels active on average and rank ``r = floor((d_in d_out (1 - s) - c d_out) / (d_in + d_out))``,
so the layer costs ``(1 - s)`` of its dense multiply-accumulates. ``t`` is the quantile of
``|x_i * ||W[:, i]|||`` over the calibration tokens at which ``c`` channels stay active. ``rho = 1``
is sparse-only (no low-rank part), ``rho = 0`` low-rank-only. The thresholds are calibrated on
the dense model, then again (``refine`` rounds) on the sparse model, whose later layers see smaller
inputs. The achieved sparsity is counted on the calibration text (skipped / dense
multiply-accumulates), not assumed; its cost is reported beside it as the next-token loss on the
same windows, dense and sparse (``calibration_nll``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from edgesmith.errors import UsageError
from edgesmith.models.modules import MODULE_KINDS, ModuleKind
from edgesmith.optimize.base import PASSES, Pass
from edgesmith.options import option

_VALUES_PER_LAYER = 1 << 16  # calibration values kept per layer for its quantiles


@dataclasses.dataclass
class RsparseOptions:
    """Options of the ``rsparse`` pass.

    Each field's help is its ``help`` metadata (:func:`edgesmith.options.option`).
    """

    sparsity: float = option(0.5, "Target share of each layer's multiply-accumulates skipped, in [0, 1).")
    rho: float = option(0.95, "Share of the remaining budget spent on exact (sparse) channels; the rest is rank. 1: "
                              "sparse-only; 0: low-rank-only; the paper's uniform baseline: 0.95.")
    text: str = option("devils-dictionary", "Calibration text: ``devils-dictionary`` (the evaluation text's train "
                                            "split), a UTF-8 file, or an ``.npz`` of ``input_ids`` windows.")
    seq_len: int = option(256, "Tokens per calibration window.")
    samples: int = option(16, "Calibration windows, spread evenly over the text.")
    skip: str = option("lm_head", "Linear layers left dense: names ending with any of these ``/``-separated suffixes.")
    search: int = option(0, "Generations of the evolutionary search for per-layer ``rho`` (0: uniform ``rho``).")
    population: int = option(8, "Candidates per generation.")
    search_samples: int = option(4, "Calibration windows the search scores each candidate on (next-token loss).")
    seed: int = option(0, "Seed of the search.")
    rho_file: str = option("", "A JSON of per-layer ``rho``: written by a search (``search=N``), read otherwise (a "
                               "search result reused without searching again).")
    refine: int = option(2, "Rounds of re-calibrating the thresholds on the sparse model itself: each layer then "
                            "sees the inputs its sparse predecessors produce (from the dense model's inputs alone, "
                            "the thresholds skip about 3 points more than the target on SmolLM2).")
    lowrank: str = option("data", "How the rank-``r`` part is made: ``svd`` (the paper's: top singular vectors of "
                                  "``W``) or ``data`` (fitted to the inactive channels of the calibration tokens: "
                                  "top singular vectors of ``W C^(1/2)``, ``C`` their second moment; see "
                                  "``RSparseLinear.fit_low_rank``).")

    def __post_init__(self):
        if not 0.0 <= self.sparsity < 1.0:
            raise UsageError(f"pass 'rsparse': sparsity={self.sparsity} is outside [0, 1)",
                             hint="sparsity is the share of multiply-accumulates skipped, e.g. sparsity=0.5")
        if not 0.0 <= self.rho <= 1.0:
            raise UsageError(f"pass 'rsparse': rho={self.rho} is outside [0, 1]",
                             hint="rho is the sparse share of the budget: 1 sparse-only, 0 low-rank-only")
        if self.lowrank not in ("svd", "data"):
            raise UsageError(f"pass 'rsparse': lowrank={self.lowrank!r} is not svd or data",
                             hint="svd: the weights' own singular vectors; data: fitted to the inactive inputs")
        if self.search < 0 or self.refine < 0:
            raise UsageError("pass 'rsparse': search and refine must be at least 0")
        for key in ("seq_len", "samples", "population", "search_samples"):
            if getattr(self, key) < 1:
                raise UsageError(f"pass 'rsparse': {key}={getattr(self, key)} must be at least 1")


def budget(d_in: int, d_out: int, sparsity: float, rho: float) -> tuple[int, int]:
    """``(c, r)``: active channels and rank for one layer (see the module docstring).

    What flooring the rank leaves of the budget goes to further channels (``0 < rho``), so small
    layers still spend their ``1 - sparsity``; ``rho = 0`` stays low-rank-only.
    """
    total = d_in * d_out * (1 - sparsity)
    c = math.floor(d_in * (1 - sparsity) * rho)
    r = max(0, min(math.floor((total - c * d_out) / (d_in + d_out)), d_in, d_out))
    if rho > 0:
        c = min(d_in, math.floor((total - r * (d_in + d_out)) / d_out))
    return c, r


def targets(module, skip: str) -> list[tuple[str, Any]]:
    """``[(name, nn.Linear)]`` the pass converts: every Linear but those whose name ends with a ``skip`` suffix."""
    from torch import nn

    suffixes = tuple(s for s in skip.split("/") if s)
    return [(n, m) for n, m in module.named_modules()
            if isinstance(m, nn.Linear) and not (suffixes and n.endswith(suffixes))]


def calibrate(module, variant, layers, windows, seed: int = 0) -> dict[str, Any]:
    """Per layer, a sorted sample of ``|x_i * ||W[:, i]|||`` over the calibration tokens (float32 tensor)."""
    import torch

    from edgesmith.eval.lm import run_windows

    generator = torch.Generator().manual_seed(seed)
    per_batch = max(1, _VALUES_PER_LAYER // max(1, len(windows)))
    values: dict[str, list] = {name: [] for name, _ in layers}

    def hook(name, scale):
        def record(_m, args):
            v = (args[0].detach() * scale).abs().reshape(-1).float()
            pick = torch.randint(0, v.numel(), (min(per_batch, v.numel()),), generator=generator)
            values[name].append(v[pick])
        return record

    handles = [m.register_forward_pre_hook(hook(n, m.weight.detach().norm(dim=0))) for n, m in layers]
    try:
        run_windows(module, variant, windows)
    finally:
        for h in handles:
            h.remove()
    return {name: torch.cat(v).sort().values for name, v in values.items()}


def inactive_moments(module, variant, layers, windows) -> dict[str, Any]:
    """Per R-Sparse layer, ``E[x_in x_in^T]`` of its inactive inputs ``x * (1 - m)`` over ``windows`` (float64)."""
    import torch

    from edgesmith.eval.lm import run_windows

    sums = {name: torch.zeros(m.in_features, m.in_features, dtype=torch.float64) for name, m in layers}
    counts = dict.fromkeys(sums, 0)

    def hook(name):
        def record(m, args):
            x = args[0].detach().reshape(-1, m.in_features)
            rest = torch.where((x * m.scale).abs() > m.threshold, torch.zeros_like(x), x).double()
            sums[name] += rest.T @ rest
            counts[name] += x.shape[0]
        return record

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in layers]
    try:
        run_windows(module, variant, windows)
    finally:
        for h in handles:
            h.remove()
    return {name: sums[name] / max(1, counts[name]) for name in sums}


def threshold(sorted_values, keep: float) -> float:
    """The ``t`` at which a share ``keep`` of the calibration values is above it (0 keeps all).

    ``t`` lies halfway between two distinct calibration values, never on one: an input that
    recurs exactly (layer 0 sees the same embedding rows in calibration and in use) would
    otherwise sit on the threshold, where another runtime's last-bit rounding flips it.
    """
    import torch

    if keep >= 1.0:
        return 0.0
    if keep <= 0.0:
        return math.inf
    index = min(len(sorted_values) - 1, int(round((1.0 - keep) * len(sorted_values))))
    low = sorted_values[index]
    above = int(torch.searchsorted(sorted_values, low, right=True))
    if above >= len(sorted_values):
        return float(low)
    return float((low.double() + sorted_values[above].double()) / 2)


@PASSES.register
class Rsparse(Pass):
    """Replace Linear layers with R-Sparse sparse-plus-low-rank layers calibrated on text."""

    name = "rsparse"
    Options = RsparseOptions
    tasks = ("lm",)
    task_hint = "rsparse calibrates on text; load a Hugging Face decoder LM"
    copies_module = True

    def _apply_impl(self, variant, module):
        from edgesmith.eval.lm import spread_windows
        from edgesmith.optimize.rsparse.layers import RSparseLinear
        from edgesmith.training.loop import feeds_from

        o = self.options
        module = module.eval()
        layers = targets(module, o.skip)
        if not layers:
            raise self.refuse(f"{variant.name} has no Linear layer to convert (skip={o.skip!r})")
        windows = feeds_from(variant, o.text, self.owner, o.seq_len, None, "calibration")["input_ids"]
        if len(windows) < o.samples:
            raise self.refuse(
                f"the calibration text gives {len(windows)} window(s) of {o.seq_len} tokens "
                f"({len(windows) * o.seq_len:,} tokens); the thresholds need samples={o.samples} x seq_len={o.seq_len} "
                f"= {o.samples * o.seq_len:,} tokens", hint="give a longer text, or fewer samples / a shorter seq_len")
        windows = spread_windows(windows, o.samples)
        dense_nll = _loss(module, variant, windows)  # the quality cost is reported against the dense model
        if self.progress:
            self.progress("rsparse: calibrating thresholds", 0, len(layers))
        stats = calibrate(module, variant, layers, windows)
        built = []
        for i, (name, linear) in enumerate(layers):
            built.append((name, RSparseLinear(linear, 0.0, 0)))
            module.set_submodule(name, built[-1][1])
            if self.progress:
                self.progress("rsparse: SVD of every layer", i + 1, len(layers))

        def configure(rhos: list[float], factors: bool = True) -> list[dict[str, Any]]:
            rows = []
            for (name, layer), rho in zip(built, rhos):
                c, r = budget(layer.in_features, layer.out_features, o.sparsity, rho)
                t = threshold(stats[name], c / layer.in_features)
                if factors:
                    layer.configure(t, r)
                else:  # keep fitted factors, move the threshold only
                    layer.threshold.fill_(t)
                rows.append({"layer": name, "rho": rho, "channels": c, "rank": r, "threshold": t})
            return rows

        report: dict[str, Any] = {"layers": len(built), "target_sparsity": o.sparsity,
                                  "calibration_tokens": int(windows.size)}
        names, model = [n for n, _ in built], variant.source.get("sha256") or variant.name
        if o.search:
            from edgesmith.optimize.rsparse import search as rsparse_search

            configure([o.rho] * len(built))
            stats.update(calibrate(module, variant, built, windows))  # the search scores with settled thresholds
            scoring = windows[:o.search_samples]

            def score(rhos: list[float]) -> float:
                configure(rhos)
                return _loss(module, variant, scoring)

            found = rsparse_search.evolve(score, len(built), o.rho, o.search, o.population, o.seed, self.progress)
            if o.rho_file:
                rsparse_search.save(o.rho_file, model, o.sparsity, names, found)
            rhos = found["rho"]
            report["search"] = {k: found[k] for k in ("loss", "uniform_loss", "history", "scored")}
        elif o.rho_file:
            from edgesmith.optimize.rsparse import search as rsparse_search

            rhos = rsparse_search.load(o.rho_file, model, o.sparsity, names)
            report["rho_file"] = o.rho_file
        else:
            rhos = [o.rho] * len(built)
        configure(rhos)
        for _ in range(o.refine):  # thresholds from the inputs the sparse model itself produces
            stats.update(calibrate(module, variant, built, windows))
            configure(rhos)
        rows = configure(rhos)
        if o.lowrank == "data":
            self._fit(module, variant, built, windows)
            # the fitted part moves the later layers' inputs: settle the thresholds on them, then refit
            stats.update(calibrate(module, variant, built, windows))
            rows = configure(rhos, factors=False)
            self._fit(module, variant, built, windows)
        for _, layer in built:
            layer.freeze()
        report["achieved_sparsity"] = round(measure_sparsity(module, variant, windows), 4)
        self.notes.append(speed_note(report["achieved_sparsity"]))
        # next-token loss on the calibration windows (nats/token), dense and sparse: what the sparsity cost
        report["calibration_nll"] = {"dense": round(dense_nll, 4), "sparse": round(_loss(module, variant, windows), 4)}
        report["rho"] = {"mean": round(sum(rhos) / len(rhos), 4), "min": min(rhos), "max": max(rhos)}
        report["per_layer"] = rows
        return module, report

    def _fit(self, module, variant, built, windows) -> None:
        """Fit every layer's rank-r part to its inactive inputs on ``windows`` (``lowrank=data``)."""
        if self.progress:
            self.progress("rsparse: fitting the low-rank parts", 0, len(built))
        moments = inactive_moments(module, variant, built, windows)
        for name, layer in built:
            layer.fit_low_rank(moments[name])


def speed_note(sparsity: float) -> str:
    """What the sparsity buys where the model runs: counted multiply-accumulates, not speed, outside torch."""
    return (f"rsparse: {sparsity:.0%} of the converted layers' multiply-accumulates are skipped by count "
            "(counted on the calibration text, not measured); an exported graph (ONNX Runtime, or any runtime "
            "without a sparse kernel) computes the masked matmuls at dense cost plus the low-rank part, so the "
            "sparsity gives no speed there; only the torch decode kernel (rsparse_matvec) skips inactive channels")


def _loss(module, variant, windows) -> float:
    """Mean next-token cross-entropy of ``module`` over ``windows`` (the search's score)."""
    from edgesmith.eval.lm import perplexity

    return perplexity(variant, windows, batch=len(windows), module=module)["nll"]


def measure_sparsity(module, variant, windows) -> float:
    """Skipped / dense multiply-accumulates of the R-Sparse layers over ``windows``."""
    from edgesmith.eval.lm import run_windows
    from edgesmith.optimize.rsparse.layers import RSparseLinear

    layers = [m for m in module.modules() if isinstance(m, RSparseLinear)]
    for m in layers:
        m.counting, m.macs = True, [0, 0]
    try:
        run_windows(module, variant, windows)
    finally:
        for m in layers:
            m.counting = False
    used, dense = sum(m.macs[0] for m in layers), sum(m.macs[1] for m in layers)
    return 1.0 - used / max(dense, 1)


@MODULE_KINDS.register("rsparse.Linear")
def _saved_layer() -> ModuleKind:
    """R-Sparse's layer as a variant folder names it (:mod:`edgesmith.models.modules`)."""
    from edgesmith.optimize.rsparse.layers import RSparseLinear

    return ModuleKind(RSparseLinear, RSparseLinear.arguments, RSparseLinear.from_arguments)
