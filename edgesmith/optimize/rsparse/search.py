"""R-Sparse's evolutionary search of per-layer ``rho``, and the JSON file that keeps its result.

Every layer keeps the same multiply-accumulate budget (the target sparsity), so any choice
of ``rho`` meets the global target; what changes is how each layer spends it: exact channels
or rank. Layers differ (some have a few dominant channels, some a fast-decaying spectrum), and
the search finds the split that loses the least, scored by next-token loss on calibration text::

    generation 0: uniform rho (the paper's 0.95 baseline), uniform 1 / 0.9 / 0.8 (sparse-only and
                  near it), and mutations of the start
    each generation: keep the best quarter; children = per-layer crossover of two kept
                     parents + mutation (a few layers move one or two steps on a 0.05 grid)
    result: the best candidate seen (never worse than uniform, which is scored first)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgesmith.errors import BadInputError

GRID = np.round(np.arange(0.0, 1.0001, 0.05), 2)  # the values a layer's rho may take
FORMAT = "edgesmith-rsparse-rho-1"


def evolve(score: Callable[[list[float]], float], layers: int, start: float, generations: int, population: int,
           seed: int = 0, progress: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
    """Search per-layer rho minimising ``score`` (lower is better).

    Args:
        score: ``score(rhos) -> loss`` of the model configured with those per-layer values.
        layers: Number of layers.
        start: The uniform rho candidates start from.
        generations, population: Search size (``generations * population`` scores at most).
        seed: Seed of the mutations.
        progress: Called as ``progress(description, done, total)``.

    Returns:
        ``{"rho": best per-layer values, "loss": its score, "uniform_loss": the start's score, "history": best per generation}``.
    """
    rng = np.random.default_rng(seed)
    home = int(np.abs(GRID - start).argmin())
    total, done = generations * population, 0
    cache: dict[tuple, float] = {}

    def scored(genes: np.ndarray) -> float:
        nonlocal done
        key = tuple(int(g) for g in genes)
        if key not in cache:
            cache[key] = score([float(GRID[g]) for g in genes])
        done += 1
        if progress:
            progress(f"rsparse: searching rho, best loss {min(cache.values()):.4f}", done, total)
        return cache[key]

    def mutate(genes: np.ndarray) -> np.ndarray:
        child = genes.copy()
        moves = rng.random(layers) < max(2.0 / layers, 0.05)
        child[moves] += rng.choice([-2, -1, 1, 2], size=int(moves.sum()))
        return np.clip(child, 0, len(GRID) - 1)

    uniform = np.full(layers, home)
    uniform_loss = scored(uniform)
    others = [np.full(layers, int(np.abs(GRID - v).argmin())) for v in (1.0, 0.9, 0.8) if abs(v - start) > 1e-9]
    seeds = others[:max(0, population - 2)] + [mutate(uniform) for _ in range(population)]
    pool = [(uniform_loss, uniform)] + [(scored(g), g) for g in seeds[:population - 1]]
    history = [min(p[0] for p in pool)]
    for _ in range(1, generations):
        pool.sort(key=lambda p: p[0])
        parents = [g for _, g in pool[:max(2, population // 4)]]
        children = []
        for _ in range(population):
            a, b = rng.choice(len(parents), 2, replace=False)
            children.append(mutate(np.where(rng.random(layers) < 0.5, parents[a], parents[b])))
        pool = pool[:len(parents)] + [(scored(g), g) for g in children]
        history.append(min(p[0] for p in pool))
    best_loss, best = min(pool, key=lambda p: p[0])
    return {"rho": [float(GRID[g]) for g in best], "loss": best_loss, "uniform_loss": uniform_loss,
            "history": [round(h, 5) for h in history], "scored": len(cache)}


def save(path: str, model: str, sparsity: float, names: list[str], result: dict[str, Any]) -> None:
    """Write a search result atomically (a killed run leaves any earlier file intact)."""
    doc = {"format": FORMAT, "model": model, "sparsity": sparsity, "layers": names, **result}
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(target.suffix + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    os.replace(tmp, target)


def load(path: str, model: str, sparsity: float, names: list[str]) -> list[float]:
    """Per-layer rho from a saved search, checked against this model, sparsity and layers.

    Raises:
        BadInputError: A missing or unreadable file, or one from another model, sparsity or layer list.
    """
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise BadInputError(f"pass 'rsparse': cannot read rho_file {path}: {exc}",
                            hint="give a file written by a search (search=N,rho_file=FILE)") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise BadInputError(f"pass 'rsparse': {path} is not an R-Sparse search result")
    for key, want in (("model", model), ("sparsity", sparsity), ("layers", names)):
        if doc.get(key) != want:
            got = doc.get(key)
            shown = f"{len(got)} layers" if key == "layers" and isinstance(got, list) else repr(got)
            expected = f"{len(want)} layers" if key == "layers" else repr(want)
            raise BadInputError(f"pass 'rsparse': {path} was searched for {key} {shown}, not {expected}",
                                hint="search again for this model and sparsity (search=N)")
    return [float(r) for r in doc["rho"]]
