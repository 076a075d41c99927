"""The report's plots: which numbers of a results file each figure draws (svg.py draws them).

Each function returns an SVG string, or None when the file has nothing to draw for it.
"""

from __future__ import annotations

from . import svg
from .numbers import interval_of, is_number, percent
from .results import attacks_of, items, part, refusal_sets

MAX_TRACE_LINES = 3  # the results file keeps up to 3 traces per attack


def asr_bars(named_entries: list[tuple[str, dict]], attacks: list[str], judge_label: str) -> str | None:
    series = []
    for name, entry in named_entries:
        found = [attacks_of(entry).get(a, {}) for a in attacks]
        series.append(svg.Bars(name, [a.get("asr_leak") for a in found], [interval_of(a.get("ci95")) for a in found]))
    if not any(is_number(v) for s in series for v in s.values):
        return None
    title = f"Attack success rate per attack ({judge_label}, any-of), 95% intervals"
    return svg.bar_chart(attacks, series, title=title, y_label="ASR")


def mean_asr(entry: dict, attacks: list[str]) -> float | None:
    rates = [attacks_of(entry).get(a, {}).get("asr_leak") for a in attacks]
    rates = [r for r in rates if is_number(r)]
    return sum(rates) / len(rates) if rates and len(rates) == len(attacks) else None


def refusal_vs_asr(named_entries: list[tuple[str, dict]], attacks: list[str]) -> str | None:
    points = []
    for name, entry in named_entries:
        edgy = refusal_sets(entry).get("edgy", {})
        asr = mean_asr(entry, attacks)
        if is_number(edgy.get("rate")) and asr is not None:
            note = (f"{name}: over-refusal {percent(edgy['rate'])}% (n={edgy.get('n', '?')}), "
                    f"mean ASR {percent(asr)}% over {len(attacks)} attacks")
            points.append(svg.Point(name, edgy["rate"], asr, note))
    if len(points) < 2:
        return None
    return svg.scatter_chart(points, title="Over-refusal against attack success (lower left is better)",
                             x_label="over-refusal on edgy prompts", y_label=f"mean ASR, {len(attacks)} attacks")


def cls_traces(entry_name: str, attack_name: str, traces: list[dict]) -> str | None:
    lines, threshold = [], None
    for trace in traces[:MAX_TRACE_LINES]:
        steps, ps = items(trace, "steps"), items(trace, "p")
        if not steps or len(steps) != len(ps):
            continue
        label = f"{trace.get('behaviour_id', '?')} · {trace.get('variant', '?')}"
        label += " (intervened)" if trace.get("intervened") else ""
        lines.append(svg.Line(label, steps, ps))
        threshold = trace.get("threshold") if is_number(trace.get("threshold")) else threshold
    if not lines:
        return None
    reference = (threshold, f"threshold {threshold:g}") if threshold is not None else None
    return svg.line_chart(lines, title=f"{entry_name} · {attack_name}", x_label="generation step (tokens)",
                          y_label="P(malicious)", y_range=(0.0, 1.0), reference=reference, width=390, height=170)


def reliability(named_classifiers: list[tuple[str, dict]]) -> str | None:
    lines = []
    for name, classifier in named_classifiers:
        bins = [b for b in items(classifier, "reliability") if isinstance(b, dict)
                and is_number(b.get("mean_p")) and is_number(b.get("frac_malicious")) and b.get("n")]
        notes = [f"{name}: p in [{b.get('lo', '?')}, {b.get('hi', '?')}), n={b['n']}, mean p {b['mean_p']:.3f}, "
                 f"malicious {percent(b['frac_malicious'])}%" for b in bins]
        if bins:
            lines.append(svg.Line(name, [b["mean_p"] for b in bins], [b["frac_malicious"] for b in bins], notes=notes))
    if not lines:
        return None
    return svg.line_chart(lines, title="Reliability of the [CLS] head", x_label="mean predicted P(malicious) in bin",
                          y_label="fraction malicious", x_range=(0.0, 1.0), y_range=(0.0, 1.0), diagonal=True,
                          width=460, height=260)


def streaming_rates(streaming: dict, rate: str, title: str) -> str | None:
    """Bars per (set, prompt mode), one series per check schedule."""
    schedules = [s for s, modes in streaming.items() if isinstance(modes, dict)]
    categories: list[tuple[str, str]] = []
    for schedule in schedules:
        for mode, sets in part(streaming, schedule).items():
            new = [(name, mode) for name in (sets if isinstance(sets, dict) else {})]
            categories += [pair for pair in new if pair not in categories]
    series = []
    for schedule in schedules:
        values = [part(part(part(streaming, schedule), mode), name) for name, mode in categories]
        series.append(svg.Bars(schedule, [v.get(rate) for v in values]))
    if not any(is_number(v) for s in series for v in s.values):
        return None
    return svg.bar_chart([f"{name} ({mode})" for name, mode in categories], series, title=title, y_label="rate",
                         width=570, height=200)


def overhead_bars(named_entries: list[tuple[str, dict]]) -> str | None:
    shown = [(name, part(entry, "overhead").get("decode_ratio")) for name, entry in named_entries]
    shown = [(name, ratio) for name, ratio in shown if is_number(ratio)]
    if not shown:
        return None
    return svg.bar_chart([name for name, _ in shown], [svg.Bars("decode ratio", [r for _, r in shown])],
                         title="Decoding overhead: strategic / plain wall time", y_label="ratio",
                         percent=False, reference=(1.0, "plain decoding"), width=560, height=200)


MAX_SEARCH_LINES = 6  # behaviours drawn per search chart (the table gives every mean)


def search_curves(entry_name: str, attack_name: str, search: dict, field: str, y_label: str,
                  y_range: tuple[float, float] | None = None) -> str | None:
    """One line per behaviour of a searched attack: `field` (a per-step list) against the step."""
    lines = []
    for behaviour in items(search, "per_behaviour")[:MAX_SEARCH_LINES]:
        ys = [y for y in items(behaviour, field) if is_number(y)]
        if ys:
            lines.append(svg.Line(str(behaviour.get("behaviour_id", "?")), list(range(1, len(ys) + 1)), ys))
    if not lines:
        return None
    return svg.line_chart(lines, title=f"{entry_name} · {attack_name}", x_label="search step", y_label=y_label,
                          y_range=y_range, width=390, height=170)


def finetune_curve(entry_name: str, threat: str, points: list[dict]) -> str | None:
    """Direct and prefill ASR (leak-aware) against fine-tuning steps for one entry and threat."""
    lines = []
    for key, label in (("direct", "direct"), ("prefill_10", "prefill 10")):
        xy = [(p.get("steps"), (p.get(key) or {}).get("asr_leak")) for p in points]
        xy = [(x, y) for x, y in xy if is_number(x) and is_number(y)]
        if xy:
            lines.append(svg.Line(label, [x for x, _ in xy], [y for _, y in xy]))
    if not lines:
        return None
    return svg.line_chart(lines, title=f"{entry_name} · {threat}", x_label="fine-tuning steps", y_label="ASR",
                          y_range=(0.0, 1.0), percent=True, width=390, height=170)
