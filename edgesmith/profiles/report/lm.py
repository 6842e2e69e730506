"""The report's language-model section: time to first token and decode tokens/s per device and variant.

Generation bundles carry an ``lm`` record in each entry (:mod:`edgesmith.profiles.lm`): measured
on the host (with the host's prediction and its error beside it), predicted elsewhere. The section
is one table (a row per variant, device and prompt length) and two range plots, tokens/s and
TTFT, where a measured figure is a filled dot and a predicted one a hollow dot with its band.
"""

from __future__ import annotations

from typing import Any

from edgesmith.profiles.report import svg
from edgesmith.profiles.report.format import Cell, sig

COLUMNS = [("variant", False), ("device", False), ("mode", False), ("prompt tokens", True), ("TTFT ms", True),
           ("decode ms/token", True), ("tokens/s", True), ("predicted TTFT ms", True),
           ("predicted tokens/s", True), ("TTFT error", True), ("decode error", True)]


HEADING = "Language models: time to first token and tokens/s"


def lm_table(entries: list[dict[str, Any]]) -> tuple[list[str], list[list[Cell]], list[str]] | None:
    """(notes, rows under :data:`COLUMNS`, plots) of the section, or None when no entry is a generation bundle's.

    :func:`edgesmith.profiles.report.devices.device_sections` makes it the ``language-models`` section.
    """
    with_lm = [e for e in entries if e.get("lm")]
    if not with_lm:
        return None
    rows: list[list[Cell]] = []
    speed: list[svg.Point] = []
    ttft: list[svg.Point] = []
    for e in with_lm:
        lm, name, device = e["lm"], f"{e.get('name', '')}.{e.get('target', '')}", str(e.get("device", ""))
        predicted = {r["prompt_tokens"]: r for r in (lm.get("prediction") or {}).get("rows", [])}
        for row in lm.get("rows", []):
            length = row["prompt_tokens"]
            p = predicted.get(length)
            label = f"{name} @ {length} tokens"
            pred_ttft: Cell = (f"≈{sig(p['ttft_ms'])} ({sig(p['ttft_low_ms'])}–{sig(p['ttft_high_ms'])})",
                               "predicted") if p else "—"
            pred_tps: Cell = (f"≈{sig(p['tokens_per_s'])} ({sig(p['tokens_per_s_low'])}–"
                              f"{sig(p['tokens_per_s_high'])})", "predicted") if p else "—"
            if lm.get("mode") == "predicted":
                rows.append([name, device, ("predicted", "predicted"), str(length), "—", "—", "—", pred_ttft,
                             pred_tps, "—", "—"])
                continue
            mode = lm.get("mode", "measured")  # or emulated: the Core ML evaluator's time, not Core ML's
            group = f"{device} ({mode})"
            if row.get("tokens_per_s"):
                speed.append(svg.Point(label, row["tokens_per_s"], None, None, True, group))
            ttft.append(svg.Point(label, row["ttft_ms"], None, None, True, group))
            rows.append([name, device, (mode, mode), str(length), sig(row["ttft_ms"]),
                         sig(row["decode_ms_per_token"]), sig(row.get("tokens_per_s")), pred_ttft, pred_tps,
                         _error(p, "ttft_error"), _error(p, "decode_error")])
        for length, p in predicted.items():  # after the measured rows: the host's groups read measured, then predicted
            group, label = f"{device} (predicted)", f"{name} @ {length} tokens"
            speed.append(svg.Point(label, p["tokens_per_s"], p["tokens_per_s_low"], p["tokens_per_s_high"], False,
                                   group))
            ttft.append(svg.Point(label, p["ttft_ms"], p["ttft_low_ms"], p["ttft_high_ms"], False, group))
    decode_tokens = sorted({e["lm"].get("decode_tokens") for e in with_lm} - {None})
    plots = [svg.range_plot(speed, title="Decode tokens/s per device", log=_spread(speed),
                            x_label="decode tokens per second" + (" (log scale)" if _spread(speed) else ""),
                            css="es-lm", unit="tok/s"),
             svg.range_plot(ttft, title="Time to first token per device", log=_spread(ttft),
                            x_label="time to first token, ms" + (" (log scale)" if _spread(ttft) else ""),
                            css="es-lm")]
    notes = ["Time to first token (TTFT: the prefill of a prompt of the given length) and decode speed (tokens "
             f"per second over {', '.join(map(str, decode_tokens)) or 'the'} greedy decode steps after the first "
             "token). Measured: edgesmith's own generation loop ran here (medians of several runs). Predicted "
             "(≈, with its band): a roofline of the prefill and decode steps on the device's figures (decode: "
             "weight and KV-cache bytes per token over the memory bandwidth; prefill: the prompt's FLOPs over "
             "the peak; whichever is larger) plus the per-node dispatch of its kind; it was not measured there. "
             "Error: (predicted - measured) / measured, on the device that ran it."]
    if any(e["lm"].get("mode") == "emulated" for e in with_lm):
        notes.append("Emulated: the bundle ran through a stand-in for its runtime here (the Core ML evaluator off "
                     "macOS), which computes the right tokens; its times are not the target's latency.")
    return notes, rows, plots


def _error(p: dict[str, Any] | None, key: str) -> str:
    value = (p or {}).get(key)
    return f"{value:+.1%}" if isinstance(value, (int, float)) else "—"


def _spread(points: list[svg.Point]) -> bool:
    """Whether the values spread so far that a log axis reads better."""
    values = [v for p in points for v in (p.value, p.low, p.high) if v]
    return bool(values) and min(values) > 0 and max(values) / min(values) > 20
