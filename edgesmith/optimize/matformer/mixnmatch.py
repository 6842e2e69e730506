"""Mix'n'Match: per-layer FFN widths that lose the least within a parameter or latency budget.

MatFormer (Devvrit, Kudugunta et al., 2023) observes that a nested model holds far more
usable sub-models than its trained granularities: each layer may take its own width.
This search picks, from a few levels per layer (``levels``, shares of the layer's units),
the mix with the lowest calibration loss whose size or latency fits the budget::

    1. sensitivity:  loss when only layer l drops to level k (one masked forward each)
    2. greedy path:  from full width, repeatedly drop the layer step that adds the least
                     loss per parameter removed, down to every layer at its lowest level
    3. candidates:   the path's models that fit the budget, a spread of the path, and the
                     uniform levels; each scored by its real calibration loss (masked)
    4. choice:       the lowest loss within the budget; a latency budget is then checked
                     on the sliced model itself (measured on the host, or predicted)

Latency is interpolated by parameters between profiled models: first the two anchors
(full width, every layer at its lowest level), then every candidate checked, each
exported to ONNX and profiled on the device by the probe the API hands the pass
(:class:`edgesmith.optimize.base.PassContext`); a check over the budget refines the
estimate and the next best candidate is checked.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, Callable

from edgesmith.errors import BadInputError, UsageError

_SUFFIX = {"k": 10**3, "m": 10**6, "g": 10**9}


def parse_count(text: str) -> int:
    """``95M`` / ``95_000_000`` / ``1.5G`` -> an integer count (empty: 0).

    Raises:
        UsageError: Not a positive count.
    """
    text = text.strip().replace("_", "").replace(",", "")
    if not text:
        return 0
    scale = _SUFFIX.get(text[-1].lower(), 1)
    number = text[:-1] if scale > 1 else text
    try:
        value = float(number) * scale
    except ValueError:
        value = -1.0
    if value < 1:
        raise UsageError(f"pass 'matformer': budget_params={text!r} is not a positive count",
                         hint="e.g. budget_params=100M or budget_params=100000000")
    return int(value)


@dataclasses.dataclass
class Candidate:
    """One per-layer width choice the search looked at.

    Attributes:
        how: Where it came from (``greedy step 12``, ``uniform 0.5``).
        widths: Hidden units per FFN layer.
        params: Parameters of the sliced model.
        loss: Calibration loss (None until evaluated).
        latency_ms: Latency (estimated from the anchors until checked).
        latency_mode: ``estimated``, ``measured`` or ``predicted``.
    """

    how: str
    widths: list[int]
    params: int
    loss: float | None = None
    latency_ms: float | None = None
    latency_mode: str = ""

    def row(self, budget_ok: bool) -> dict[str, Any]:
        """The candidate as a report row."""
        row = {"how": self.how, "params": self.params, "loss": None if self.loss is None else round(self.loss, 4),
               "within_budget": budget_ok, "widths": self.widths}
        if self.latency_ms is not None:
            row.update(latency_ms=round(self.latency_ms, 3), latency_mode=self.latency_mode)
        return row


def ffn_params(ffns, widths: list[int]) -> int:
    """Parameters of the FFNs' layers when each FFN keeps ``widths[i]`` units.

    Each layer counts once: in a run of Linear-act-Linear-act-Linear one Linear is both
    the first FFN's down projection and the second's up projection.
    """
    layers: dict[int, list] = {}  # id -> [layer, FFN setting its outputs, FFN setting its inputs]
    for i, f in enumerate(ffns):
        for key in [*f.ups, *f.mids, *f.norms]:
            layers.setdefault(id(f.layer(key)), [f.layer(key), None, None])[1] = i
        layers.setdefault(id(f.layer(f.down)), [f.layer(f.down), None, None])[2] = i
    total = 0
    for layer, out_from, in_from in layers.values():
        if hasattr(layer, "affine"):  # a BatchNorm over the units: weight and bias
            total += 2 * widths[out_from] if layer.affine else 0
            continue
        rows = widths[out_from] if out_from is not None else layer.weight.shape[0]
        per_row = layer.weight[0].numel()
        if in_from is not None:  # the down projection: its columns are the units
            per_row = per_row // layer.weight.shape[1] * widths[in_from]
        total += rows * per_row + (rows if layer.bias is not None else 0)
    return total


def level_widths(ffns, levels: list[float]) -> list[list[int]]:
    """Per layer, the widths the levels give (ascending, the full width last)."""
    return [sorted({max(1, round(lv * f.hidden)) for lv in levels} | {f.hidden}) for f in ffns]


def sliced_copy(module, widths: list[int]):
    """A copy of ``module`` (units already ordered) with every FFN cut to its first ``widths`` units."""
    import torch

    from edgesmith.optimize.matformer.ffns import find_ffns, reorder_and_slice

    small = copy.deepcopy(module)
    for f, w in zip(find_ffns(small), widths):
        reorder_and_slice(f, torch.arange(w))
    return small.eval()


class Search:
    """One Mix'n'Match search over a full-width model whose FFN units are ordered.

    Args:
        module: The full-width model.
        ffns: Its FFNs.
        levels: Shares of each layer's units a layer may keep.
        loss: ``loss(widths) -> float``: calibration loss of the model masked to ``widths``.
        progress: Called as ``progress(description, done, total)``.
    """

    def __init__(self, module, ffns, levels: list[float], loss: Callable[[list[int]], float],
                 progress: Callable[[str, int, int], None] | None = None):
        self.module, self.ffns, self.loss = module, ffns, loss
        self.options = level_widths(ffns, levels)
        self.full = [f.hidden for f in ffns]
        self.smallest = [o[0] for o in self.options]
        from edgesmith.models.complexity import count_params

        self.rest = count_params(module) - ffn_params(ffns, self.full)
        self.progress = progress
        self.measured: dict[int, float] = {}  # parameters -> profiled latency (the anchors, then every check)

    def params(self, widths: list[int]) -> int:
        """Parameters of the model sliced to ``widths``."""
        return self.rest + ffn_params(self.ffns, widths)

    def estimate_ms(self, widths: list[int]) -> float:
        """Latency interpolated between the profiled models, by parameters (an FFN's cost is linear in its width)."""
        import numpy as np

        xs = sorted(self.measured)
        return float(np.interp(self.params(widths), xs, [self.measured[x] for x in xs]))

    def profile(self, candidate: Candidate, probe) -> None:
        """Profile the sliced model of ``candidate``; the estimate learns from it."""
        candidate.latency_ms, candidate.latency_mode = probe(sliced_copy(self.module, candidate.widths))
        self.measured[candidate.params] = candidate.latency_ms

    def within_latency(self, found: list[Candidate], path: list[list[int]], limit: float, probe,
                       tries: int = 6) -> Candidate:
        """The lowest-loss candidate whose sliced model meets ``limit`` when profiled.

        Every profile refines the estimate; the path's largest model the refined estimate fits
        joins the candidates, so a first estimate that was off costs a few more profiles.

        Raises:
            BadInputError: ``tries`` profiles found none within the limit.
        """
        over: list[Candidate] = []
        for _ in range(tries):
            for c in found:
                if c.latency_mode == "estimated":
                    c.latency_ms = self.estimate_ms(c.widths)
            fitting = next((w for w in path if self.estimate_ms(w) <= limit), None)
            if fitting is not None and fitting not in [c.widths for c in found]:
                c = Candidate(f"greedy step {path.index(fitting)}", fitting, self.params(fitting),
                              latency_ms=self.estimate_ms(fitting), latency_mode="estimated")
                c.loss = self.loss(c.widths)
                found.append(c)
            ranked = sorted((c for c in found if c.latency_ms <= limit), key=lambda c: c.loss)
            if not ranked:
                break
            best = ranked[0]
            if best.latency_mode == "estimated":
                self.profile(best, probe)
            if best.latency_ms <= limit:
                return best
            over.append(best)
        took = ", ".join(f"{c.latency_ms:.3f}" for c in over)
        raise BadInputError(f"pass 'matformer': {len(over)} width choices the estimate put within {limit:g} ms "
                            f"took {took} ms when profiled", hint="the budget is within this device's noise: raise it a little")

    def path(self) -> list[list[int]]:
        """The greedy path from full width to the smallest widths, one layer step at a time."""
        steps = sum(len(o) - 1 for o in self.options)
        base = self.loss(self.full)
        damage: dict[tuple[int, int], float] = {}
        done = 0
        for layer, options in enumerate(self.options):
            for w in options[:-1]:
                widths = list(self.full)
                widths[layer] = w
                damage[layer, w] = self.loss(widths) - base
                done += 1
                if self.progress:
                    self.progress("mix'n'match: loss of each layer at each level", done, steps)
        current, path = list(self.full), [list(self.full)]
        while current != self.smallest:
            best, best_cost = None, None
            for layer, options in enumerate(self.options):
                at = options.index(current[layer])
                if at == 0:
                    continue
                lower = options[at - 1]
                before = damage.get((layer, current[layer]), 0.0)
                step = list(current)
                step[layer] = lower
                cost = (damage[layer, lower] - before) / max(1, self.params(current) - self.params(step))
                if best_cost is None or cost < best_cost:
                    best, best_cost = (layer, lower), cost
            current[best[0]] = best[1]
            path.append(list(current))
        return path

    def candidates(self, path: list[list[int]], fits: Callable[[Candidate], bool], levels: list[float],
                   spread: int = 4, near: int = 3) -> list[Candidate]:
        """The path's ``near`` largest models that fit, ``spread`` more along the path, and the uniform levels."""
        def make(how, widths):
            c = Candidate(how, widths, self.params(widths))
            if self.measured:
                c.latency_ms, c.latency_mode = self.estimate_ms(widths), "estimated"
            return c

        chosen: dict[tuple[int, ...], Candidate] = {}
        on_path = [make(f"greedy step {i}", w) for i, w in enumerate(path)]
        fitting = [c for c in on_path if fits(c)]
        picks = fitting[:near] + [on_path[round(i * (len(on_path) - 1) / max(1, spread - 1))] for i in range(spread)]
        uniform = [make(f"uniform {lv:g}", [max(1, round(lv * f.hidden)) for f in self.ffns]) for lv in levels]
        for c in picks + uniform:
            chosen.setdefault(tuple(c.widths), c)
        found = list(chosen.values())
        for i, c in enumerate(found):
            c.loss = self.loss(c.widths)
            if self.progress:
                self.progress("mix'n'match: scoring candidates", i + 1, len(found))
        return found


def front(candidates: list[Candidate], cost: Callable[[Candidate], float]) -> list[Candidate]:
    """The candidates no other beats on both cost and loss, cheapest first."""
    ordered = sorted(candidates, key=lambda c: (cost(c), c.loss))
    kept, best = [], float("inf")
    for c in ordered:
        if c.loss < best:
            kept.append(c)
            best = c.loss
    return kept


def refuse(budget: str, smallest: str, levels: list[float]) -> BadInputError:
    """The error for a budget no width choice meets, saying the smallest achievable."""
    return BadInputError(f"pass 'matformer': no width choice meets {budget}; the smallest (every FFN at "
                         f"{min(levels):g} of its units) has {smallest}",
                         hint="raise the budget, or add a lower level (levels=0.125/0.25/0.5/0.75/1)")
