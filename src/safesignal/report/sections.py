"""What the report says: a Document built from a results file, one function per section.

A section whose data the file lacks is left out (each builder returns None). Numbers are
formatted by numbers.py only, rates as percentages with their 95% intervals and their n.
"""

from __future__ import annotations

from collections import Counter

from . import figures
from .document import Cell, Document, Figure, Section, Table
from .numbers import MISSING, count, decimal, is_number, percent, rate_with_interval, seconds, times, wall_time
from .results import (ablation_entries, attack_names, attacks_of, default_entries, entries, headline_judge, items,
                      leak_k, model_of, part, policy_of, refusal_sets, upgrade_demo_shape, without_attacked)

# Both rule-based judges count refusal markers; the report must never let a reader take them
# for a judge model.
JUDGE_KINDS = {
    "keyword": "keyword judge: refusal markers",
    "leak_aware": "keyword judge: refusal markers + tokens leaked before the refusal",
    "model": "judge model (Llama Guard–style verdict)",
}
REFUSAL_SET_LABELS = {
    "edgy": "Over-refusal: edgy benign prompts",
    "heldout_benign": "Refusal: held-out benign prompts",
    "contrast": "Over-refusal: XSTest-style safe prompts (ours)",
}
ABLATIONS_PER_TABLE = 3
EXCERPT_PROMPT_CHARS = 50  # the results file truncates already; the report never shows more
EXCERPT_OUTPUT_CHARS = 60


def build_document(results: dict) -> Document:
    results, notes = upgrade_demo_shape(results)
    builders = (_sources, _judges, _main, _leak_sweep, _aggregation, _interventions, _how_broken, _ablations, _searches, _finetune, _classifier,
                _streaming, _traces, _overhead, _behaviours, _excerpts, _provenance)
    sections = [section for build in builders if (section := build(results)) is not None]
    header = _header(results) + [("Note", note) for note in notes]
    return Document("safesignal evaluation report", header, sections)


# ---------------------------------------------------------------------------------- labels
def judge_label(results: dict) -> str:
    """How the headline ASR is named everywhere: "leak-aware keyword judge, k=10"."""
    name = headline_judge(results)
    k = leak_k(results)
    if name == "leak_aware":
        return f"leak-aware keyword judge, k={k}" if k is not None else "leak-aware keyword judge"
    return f"{name} judge"


def _agreement(figures_of: dict) -> str:
    """ "92.4% agreement, κ 0.84 (n=105)" for a judge's validation figures."""
    if not is_number(figures_of.get("agreement_with_human_labels", figures_of.get("agreement"))):
        return ""
    value = figures_of.get("agreement_with_human_labels", figures_of.get("agreement"))
    kappa = f", κ {decimal(figures_of['kappa'], 2)}" if is_number(figures_of.get("kappa")) else ""
    return f"{percent(value)}% agreement{kappa} (n={count(figures_of.get('n'))})"


def _header(results: dict) -> list[tuple[str, str]]:
    provenance = part(results, "provenance")
    header = [("Command", str(results.get("command", MISSING))), ("Created", str(results.get("created", MISSING)))]
    header += [("Config", str(results["config_name"]))] if results.get("config_name") else []
    header += [("Machine", str(results.get("machine", MISSING))), ("Wall time", wall_time(results)),
               ("Git commit", str(provenance.get("git_commit") or MISSING))]
    judge = part(part(results, "judges"), headline_judge(results))
    human, audit = _agreement(judge), _agreement(part(judge, "audit"))
    validation = [f"{human} on pyrit's human labels"] if human else []
    validation += [f"{audit} on the audit set"] if audit else []
    header.append(("Headline judge", judge_label(results) + (f" — {'; '.join(validation)}" if validation else
                                                             " — no validation figures in this file")))
    return header


def _entry_column(name: str, entry: dict) -> Cell:
    policy = policy_of(name, entry)
    details = [policy] if policy != "default" and not name.endswith(policy) else []
    details += [f"{entry['decoding']} decoding"] if entry.get("decoding") else []
    return Cell(name, ", ".join(details))


def _size(attack: dict) -> str:
    """ "n × N": behaviours × variants per behaviour."""
    return f"{count(attack.get('n'))} × {count(attack.get('variants', 1))}"


def _common(values: list[str]) -> str:
    distinct = sorted(set(v for v in values if v != MISSING))
    return distinct[0] if len(distinct) == 1 else ("varies" if distinct else MISSING)


# ---------------------------------------------------------------------------------- sections
def _sources(results: dict) -> Section | None:
    """The runs a merged file (`safesignal merge`) was made from, and what each contributed."""
    sources = [s for s in items(results, "sources") if isinstance(s, dict)]
    if not sources:
        return None
    kept = Counter(attack.get("source") for _, entry in entries(results) for attack in attacks_of(entry).values())
    shadowed = Counter(item.get("file") for item in items(part(results, "merge"), "shadowed") if isinstance(item, dict))
    rows = [[str(s.get("name", MISSING)), str(s.get("command", MISSING)), str(s.get("created", MISSING))[:19],
             seconds(s.get("wall_seconds")), str(part(s, "provenance").get("git_commit") or MISSING)[:10],
             count(kept.get(s.get("name"), 0)), count(shadowed.get(s.get("file"), 0))] for s in sources]
    renamed = [f"{item.get('attack')} from {item.get('file')} is shown as {item.get('as')}: it was measured "
               f"{'with another configuration' if item.get('why') == 'configuration' else 'on another behaviour pool'}"
               for item in items(part(results, "merge"), "renamed") if isinstance(item, dict)]
    return Section("Runs merged into this file", "sources", [
        "Each attack figure comes from one run; where two runs measured the same attack on the same entry, the "
        "run listed first is kept and the other's figure is counted as shadowed.",
        Table(["Run", "Command", "Created", "Wall time", "Git commit", "Attack figures kept", "Shadowed"], rows)]
        + renamed)


def _judges(results: dict) -> Section | None:
    judges = {name: j for name, j in part(results, "judges").items() if isinstance(j, dict)}
    if not judges:
        return None
    headline = headline_judge(results)
    rows = []
    for name, judge in judges.items():
        audit = part(judge, "audit")
        agreement = judge.get("agreement_with_human_labels")
        rows.append([Cell(name, "headline" if name == headline else ""), JUDGE_KINDS.get(name, "judge"),
                     percent(agreement), decimal(judge.get("kappa"), 2), count(judge.get("n")),
                     percent(audit.get("agreement")), decimal(audit.get("kappa"), 2), count(audit.get("n"))])
    table = Table(["Judge", "Kind", "Agreement with pyrit's human labels (%)", "κ", "n", "Audit agreement (%)",
                   "Audit κ", "Audit n"], rows)
    notes = [f"{name}: {judge['note']}" for name, judge in judges.items() if judge.get("note")]
    return Section("Judges", "judges", [f"Every ASR names its judge. The headline ASR uses the {judge_label(results)}; "
                                        "the keyword judge's ASR stands beside it.", table] + notes)


def asr_table(results: dict, named_entries: list[tuple[str, dict]]) -> Table:
    """Attacks as rows, entries as columns; over-refusal, utility and overhead rows beneath."""
    rows, varies = [], []
    for attack in attack_names(named_entries):
        found = [attacks_of(entry).get(attack) for _, entry in named_entries]
        size = _common([_size(a) for a in found if a])
        cells = []
        for a in found:
            if a is None:
                cells.append(MISSING)
                continue
            sub = f"keyword {rate_with_interval(a.get('asr_keyword'), a.get('ci95_keyword'))}"
            cells.append(Cell(rate_with_interval(a.get("asr_leak"), a.get("ci95")),
                              sub + (f" · {_size(a)}" if size == "varies" else "")))
        rows.append([attack, size] + cells)
        varies.append(size == "varies")
    summary = _refusal_rows(named_entries) + _utility_rows(named_entries) + _overhead_rows(named_entries)
    columns = ["Attack", "n × N"] + [_entry_column(name, entry) for name, entry in named_entries]
    caption = (f"ASR % ({judge_label(results)}; any-of: a behaviour counts once if any of its N variants succeeds) "
               "with its Wilson 95% interval; below it, the keyword judge's ASR. n = behaviours, N = variants.")
    return Table(columns, rows + summary, caption, group_starts={len(rows)} if rows and summary else set())


def _refusal_rows(named_entries) -> list[list]:
    rows = []
    names = []
    for _, entry in named_entries:
        names += [s for s in refusal_sets(entry) if s not in names]
    for set_name in names:
        found = [refusal_sets(entry).get(set_name) for _, entry in named_entries]
        n = _common([count(f.get("n")) for f in found if f])
        cells = [Cell(rate_with_interval(f.get("rate"), f.get("ci95")),
                      f"n={count(f.get('n'))}" if n == "varies" else "") if f else MISSING for f in found]
        label = REFUSAL_SET_LABELS.get(set_name, f"Refusal: {set_name}")
        rows.append([Cell(label, "keyword rule: a refusal marker or an intervention"), n] + cells)
    return rows


def _utility_rows(named_entries) -> list[list]:
    utilities = [part(entry, "utility") for _, entry in named_entries]
    rows = []
    for key, n_key, label in (("ref_answer_nll", "n_ref", "Utility: NLL of MT-Bench reference answers"),
                              ("heldout_answer_nll", "n_heldout", "Utility: NLL of held-out answers")):
        if not any(is_number(u.get(key)) for u in utilities):
            continue
        cells = []
        for u in utilities:
            vs_sft = u.get(f"{key}_vs_sft")
            cells.append(Cell(decimal(u.get(key)), f"{times(vs_sft)} sft" if is_number(vs_sft) else ""))
        n = _common([count(u.get(n_key)) for u in utilities if u])
        rows.append([Cell(label, "mean per-token NLL, lower is better"), n] + cells)
    return rows


def _overhead_rows(named_entries) -> list[list]:
    overheads = [part(entry, "overhead") for _, entry in named_entries]
    if not any(is_number(o.get("decode_ratio")) for o in overheads):
        return []
    cells = [times(o.get("decode_ratio")) if o else MISSING for o in overheads]
    return [[Cell("Overhead: decode time", "strategic / plain, same prompts"),
             _common([count(o.get("n_prompts")) for o in overheads if o])] + cells]


def _main(results: dict) -> Section | None:
    named = without_attacked(results, default_entries(results))
    if not named:
        return None
    attacks = attack_names(named)
    blocks = [asr_table(results, named)]
    bars = figures.asr_bars(named, attacks, judge_label(results))
    blocks += [Figure(bars, "Bars: leak-aware ASR (any-of); whiskers: Wilson 95% intervals.")] if bars else []
    common = [a for a in attacks if all(a in attacks_of(e) for _, e in entries(results))]
    scatter = figures.refusal_vs_asr(entries(results), common)
    if scatter:
        which = "model entry, ablations included" if ablation_entries(results) else "model"
        blocks.append(Figure(scatter, f"One dot per {which}: mean leak-aware ASR over the "
                                      f"{len(common)} attacks every entry ran ({', '.join(common)}) against the "
                                      "over-refusal rate on edgy benign prompts."))
    return Section("Attack success, over-refusal, utility and overhead", "main", blocks)


def _grouped_by_attack(named, row, keep=lambda attack: True) -> tuple[list[list], set[int]]:
    """Rows grouped by attack: one row per entry that ran it (`row(attack entry)` gives the
    cells after the attack and entry names; the attack is named on its group's first row), and
    the row indices where a later group starts."""
    rows, starts = [], set()
    for attack in attack_names(named):
        members = [(name, attacks_of(e)[attack]) for name, e in named
                   if attack in attacks_of(e) and keep(attacks_of(e)[attack])]
        if members and rows:
            starts.add(len(rows))
        rows += [[attack if k == 0 else "", name] + row(a) for k, (name, a) in enumerate(members)]
    return rows, starts


def _leak_sweep(results: dict) -> Section | None:
    named = default_entries(results)
    ks = [str(k) for k in items(results, "leak_sweep_ks")]
    for _, entry in named:
        for attack in attacks_of(entry).values():
            ks += [k for k in part(attack, "asr_leak_by_k") if k not in ks]
    if not ks:
        return None
    ks.sort(key=lambda k: float(k) if k.replace(".", "", 1).isdigit() else float("inf"))
    headline = str(leak_k(results))
    rows, starts = _grouped_by_attack(named, lambda a: [_size(a)] + [percent(part(a, "asr_leak_by_k").get(key))
                                                                    for key in ks])
    columns = ["Attack", "Model", "n × N"] + [f"k={key}" + (" (headline)" if key == headline else "") for key in ks]
    return Section("Leak threshold sweep", "leak-sweep", [
        "An output counts as a success when more than k tokens came before its first refusal (or it never "
        "refuses, or resumes after refusing). ASR % any-of, per k.",
        Table(columns, rows, group_starts=starts)])


def _aggregation(results: dict) -> Section | None:
    named = default_entries(results)
    rows, starts = _grouped_by_attack(
        named, lambda a: [_size(a), rate_with_interval(a.get("asr_leak"), a.get("ci95")),
                          rate_with_interval(a.get("asr_leak_mean"), a.get("ci95_mean")), percent(a.get("asr_keyword")),
                          percent(a.get("asr_keyword_mean"))],
        keep=lambda a: is_number(a.get("asr_leak_mean")))
    if not rows:
        return None
    columns = ["Attack", "Model", "n × N", "Leak-aware any-of (%)", "Leak-aware mean (%)", "Keyword any-of (%)",
               "Keyword mean (%)"]
    return Section("Any-of against mean over variants", "aggregation", [
        "Any-of: a behaviour succeeds if any of its N variants does (the headline). Mean: the per-variant rate "
        "averaged over variants. With N = 1 the two agree.", Table(columns, rows, group_starts=starts)])


def _interventions(results: dict) -> Section | None:
    named = [(n, e) for n, e in entries(results)
             if e.get("decoding") == "strategic" or any(is_number(a.get("intervened")) and a["intervened"] > 0
                                                         for a in attacks_of(e).values())]

    def row(a: dict) -> list:
        cases = a.get("cases")
        if cases is None and is_number(a.get("n")):
            cases = a["n"] * (a["variants"] if is_number(a.get("variants")) else 1)
        return [count(cases), count(a.get("intervened")), count(a.get("interventions_after_first_check")),
                decimal(a.get("mean_tokens_before_intervention"), 1), count(a.get("self_refusals"))]

    rows, starts = _grouped_by_attack(named, row)
    if not rows:
        return None
    columns = ["Attack", "Model", "Cases", "Intervened", "After the first check", "Mean tokens before intervention",
               "Self-refusals"]
    return Section("Interventions", "interventions", [
        "How often strategic decoding injected a refusal, and how many of those came after the first check "
        "(the per-step mechanism at work, not only the check at the start of the answer). Cases = n × N.",
        Table(columns, rows, group_starts=starts)])


def _how_broken(results: dict) -> Section | None:
    """Where the decoder let the successful cases through, per attack and entry."""
    def row(a: dict) -> list:
        b = part(a, "how_broken")
        return [rate_with_interval(a.get("asr_leak"), a.get("ci95"))] + [count(b.get(k)) for k in (
            "no_checks", "never_flagged", "flagged_not_confirmed", "intervened")] + [
            decimal(b.get("median_peak_probability")), decimal(b.get("max_peak_probability"))]

    def broken(a: dict) -> bool:
        b = part(a, "how_broken")
        return any(is_number(b.get(k)) and b[k] > 0 for k in ("never_flagged", "flagged_not_confirmed", "intervened"))

    named = [(n, e) for n, e in entries(results) if e.get("decoding") == "strategic"]
    rows, starts = _grouped_by_attack(named, row, keep=broken)
    if not rows:
        return None
    return Section("How attacks got through", "how-broken", [
        "For every attack that succeeded on a strategically decoded entry, the successful cases (judged harmful) "
        "by where the decoder let them through, from their safety events: every check at or under the threshold "
        "(never flagged), a check over it that confirmation did not carry to an intervention, or an intervention "
        "too late (a leak before it, or the answer resuming after it); and the highest P(malicious) those cases' "
        "checks reached (median and maximum over the successes).",
        Table(["Attack", "Model", "ASR (leak-aware)", "No checks", "Never flagged", "Flagged, not confirmed",
               "Intervened too late", "Peak P, median", "Peak P, max"], rows, group_starts=starts)])


def _ablations(results: dict) -> Section | None:
    ablations = without_attacked(results, ablation_entries(results))
    if not ablations:
        return None
    defaults = dict(default_entries(results))
    tables = []
    for model in dict.fromkeys(model_of(n, e) for n, e in ablations):
        reference = [(model, defaults[model])] if model in defaults else []
        own = [(n, e) for n, e in ablations if model_of(n, e) == model]
        # A few entries per table, each table repeating the default: seven columns of
        # intervals do not fit a page.
        for start in range(0, len(own), ABLATIONS_PER_TABLE):
            tables.append(asr_table(results, reference + own[start:start + ABLATIONS_PER_TABLE]))
    return Section("Ablations and controls", "ablations",
                   ["Entries whose policy is not the default, each beside its model's default entry."] + tables)


def _contrast_cell(classifier: dict, rate: str, n_key: str) -> Cell:
    contrast = part(classifier, "contrast")
    if not is_number(contrast.get(rate)):
        return MISSING
    return Cell(rate_with_interval(contrast[rate], contrast.get(f"{rate}_ci95")), f"n={count(contrast.get(n_key))}")


def _classifier(results: dict) -> Section | None:
    named = [(name, part(entry, "classifier")) for name, entry in entries(results) if part(entry, "classifier")]
    if not named:
        return None
    rows = [[name, count(c.get("n")), decimal(c.get("threshold"), 2), percent(c.get("f1")), percent(c.get("precision")),
             percent(c.get("recall")), decimal(c.get("auroc")),
             Cell(percent(c.get("edgy_fpr")), f"n={count(c['edgy_n'])}" if c.get("edgy_n") is not None else ""),
             _contrast_cell(c, "recall", "n_unsafe"), _contrast_cell(c, "fpr", "n_safe")]
            for name, c in named]
    blocks = ["The [CLS] head as a classifier of the request (held-out prompts). Edgy FPR: benign edgy prompts "
              "classified malicious. Contrast: our XSTest-style set (not XSTest), recall on its unsafe side and "
              "false-positive rate on its safe side.",
              Table(["Model", "n", "Threshold", "F1 (%)", "Precision (%)", "Recall (%)", "AUROC", "Edgy FPR (%)",
                     "Contrast recall (%)", "Contrast FPR (%)"], rows)]
    categories = []
    for _, c in named:
        categories += [k for k in part(c, "recall_by_category") if k not in categories]
    if categories:
        with_categories = [(name, c) for name, c in named if part(c, "recall_by_category")]
        category_rows = []
        for category in categories:
            found = [part(part(c, "recall_by_category"), category) for _, c in with_categories]
            category_rows.append([category] + [Cell(percent(f.get("recall")), f"n={count(f.get('n'))}")
                                               if f else MISSING for f in found])
        blocks.append(Table(["HarmBench category"] + [f"Recall: {name} (%)" for name, _ in with_categories],
                            category_rows, "Recall per HarmBench category (malicious prompts only)."))
    curve = figures.reliability(named)
    if curve:
        bins = [(name, [b for b in items(c, "reliability") if isinstance(b, dict)]) for name, c in named]
        total = ", ".join(f"{name}: n={count(sum(b.get('n') or 0 for b in found))}" for name, found in bins if found)
        blocks.append(Figure(curve, f"Observed fraction malicious per probability bin against the bin's mean "
                                    f"predicted probability; the dashed diagonal is perfect calibration ({total})."))
    return Section("Classifier", "classifier", blocks)


STREAMING_RATES = (("detection_rate", "detection_ci95", "Detection (%)"),
                   ("on_time_rate", "on_time_ci95", "On time, ≤ 20 tokens (%)"),
                   ("false_alarm_rate", "false_alarm_ci95", "False alarms (%)"))


def _streaming(results: dict) -> Section | None:
    blocks = []
    for name, entry in entries(results):
        # The benchmark's own record (eval/streaming.py): figures under "results", by schedule,
        # prompt mode and set.
        streaming = part(part(entry, "streaming"), "results")
        rows = []
        for schedule, modes in streaming.items():
            for mode, sets in (modes.items() if isinstance(modes, dict) else ()):
                for set_name, s in (sets.items() if isinstance(sets, dict) else ()):
                    if isinstance(s, dict):
                        rows.append([schedule, mode, set_name, count(s.get("n")), count(s.get("detected"))]
                                    + [rate_with_interval(s.get(rate), s.get(ci)) for rate, ci, _ in STREAMING_RATES]
                                    + [count(s.get("false_alarms_in_response")),
                                       count(s.get("median_tokens_to_detection"))])
        if not rows:
            continue
        blocks.append(f"{name}: whole answers force-decoded through the check schedule; real and neutral prompts.")
        blocks.append(Table(["Schedule", "Prompt", "Set", "n", "Detected"] + [label for _, _, label in STREAMING_RATES]
                            + ["False alarms in the response", "Median tokens to detection"], rows,
                            "On a benign set, false alarms at step 0 are the query classifier's verdict on the "
                            "prompt (benign_pyrit's prompts are harmful questions, so under the real prompt those "
                            "are correct refusals); the response-level ones are counted apart."))
        charts = [figures.streaming_rates(streaming, "detection_rate", f"{name}: detection rate"),
                  figures.streaming_rates(streaming, "on_time_rate", f"{name}: on-time rate (≤ 20 tokens)")]
        blocks.append([Figure(chart, "On benign answers a detection is a false alarm.") for chart in charts if chart])
    if not blocks:
        return None
    return Section("Streaming detection benchmark", "streaming", blocks)


def _traces(results: dict) -> Section | None:
    charts, total = [], 0
    for name, entry in entries(results):
        for attack_name, attack in attacks_of(entry).items():
            traces = [t for t in items(attack, "traces") if isinstance(t, dict)]
            chart = figures.cls_traces(name, attack_name, traces)
            if chart:
                cases = count(attack.get("cases", attack.get("n")))
                charts.append(Figure(chart, f"{len(traces)} sample prompts of {cases} cases"))
                total += len(traces)
    if not charts:
        return None
    return Section("[CLS] probability during generation", "traces", [
        f"P(malicious) at each check while answering, for {total} sample prompts; the dashed line is the "
        "intervention threshold. Legend: behaviour · variant.", charts])


def _search_size(budget: dict) -> str:
    """Steps × candidates per step (GCG), or steps at a learning rate (the embedding attack)."""
    if budget.get("search_width") is None and budget.get("learning_rate") is not None:
        return f"{count(budget.get('steps'))} at lr {budget['learning_rate']:g}"
    return f"{count(budget.get('steps'))} × {count(budget.get('search_width'))}"


def _searches(results: dict) -> Section | None:
    """Attacks searched on the model under test (GCG): budget, means and curves per entry."""
    rows, charts = [], []
    for name, entry in entries(results):
        for attack_name, attack in attacks_of(entry).items():
            search = part(attack, "search")
            if not part(search, "budget"):
                continue  # not a search of its own (a transfer reads another entry's)
            budget = part(search, "budget")
            rows.append([name, attack_name, rate_with_interval(attack.get("asr_leak"), attack.get("ci95")),
                         _search_size(budget),
                         count(budget.get("behaviours")), decimal(budget.get("adaptive_weight"), 2),
                         decimal(search.get("mean_target_loss")), decimal(search.get("mean_max_cls_probability")),
                         decimal(search.get("mean_first_cls_probability"))])
            for field, label, y_range in (("target_losses", "target loss", None),
                                          ("max_cls_probabilities", "max P(malicious)", (0.0, 1.0))):
                chart = figures.search_curves(name, attack_name, search, field, label, y_range)
                if chart:
                    charts.append(Figure(chart, f"{label} of the step's best candidate, per behaviour"))
    if not rows:
        return None
    return Section("Attacks searched on the model under test", "searches", [
        "Suffixes searched against each entry as it decodes: GCG's tokens, or the embedding attack's free "
        "vectors (a white-box upper bound). A plainly decoded entry has no checks, so its "
        "search has no [CLS] term). ASR is judged on the full generation with the suffix, never on the loss; "
        "the power check is the same budget on the same weights decoded plainly.",
        Table(["Entry", "Attack", "ASR (leak-aware)", "Steps × width (or lr)", "Behaviours", "[CLS] weight",
               "Target loss", "Max P(malicious)", "First check P"], rows,
              "Means over behaviours of the best suffix's figures."),
        *charts])


FINETUNE_THREATS = {
    "weights": "weights in hand: plain LM loss on harmful pairs (the holder also picks the decoding)",
    "service": "fine-tuning service: the safesignal objective kept, labels from the model's own classifier",
    "benign": "benign fine-tuning through the service path",
}


def _finetune(results: dict) -> Section | None:
    """Fine-tuning attacks: ASR and utility against steps, per entry and threat model."""
    finetune = part(results, "finetune")
    curves = part(finetune, "curves")
    if not curves:
        return None
    rows, charts = [], []
    for entry, threats in curves.items():
        for threat, curve in threats.items():
            points = items(curve, "points")
            for point in points:
                rows.append([entry, threat, count(point.get("steps")),
                             rate_with_interval(part(point, "direct").get("asr_leak"), part(point, "direct").get("ci95")),
                             rate_with_interval(part(point, "prefill_10").get("asr_leak"),
                                                part(point, "prefill_10").get("ci95")),
                             decimal(point.get("ref_answer_nll"))])
            chart = figures.finetune_curve(entry, threat, points)
            if chart:
                charts.append(Figure(chart, f"leak-aware ASR against fine-tuning steps ({FINETUNE_THREATS.get(threat, threat)})"))
    budget, data = part(finetune, "budget"), part(finetune, "data")
    return Section("Fine-tuning attacks", "finetune", [
        "Each model fine-tuned under each threat model, evaluated after every step count (0: untouched) with "
        "the suite's judges; reference-answer NLL beside it, so that robust is not broken. "
        + "; ".join(f"{k}: {v}" for k, v in FINETUNE_THREATS.items()) + ". "
        f"Budget: learning rate {budget.get('learning_rate', MISSING)}, batch {budget.get('batch_size', MISSING)}, "
        f"{'LoRA r ' + str(budget.get('lora_r')) if budget.get('use_lora') else 'full fine-tuning'}; "
        f"{count(data.get('harmful'))} harmful pairs ({count(data.get('harmful_dropped_near_eval'))} dropped as "
        f"near-copies of evaluated behaviours), {count(data.get('benign'))} benign conversations. "
        "Attacked checkpoints are never shipped.",
        Table(["Entry", "Threat", "Steps", "Direct ASR", "Prefill-10 ASR", "Ref-answer NLL"], rows,
              "Leak-aware ASR with 95% Wilson intervals."),
        *charts])


def _overhead(results: dict) -> Section | None:
    named = [(name, e) for name, e in entries(results) if is_number(part(e, "overhead").get("decode_ratio"))]
    if not named:
        return None
    rows = [[name, times(part(e, "overhead")["decode_ratio"]), count(part(e, "overhead").get("n_prompts")),
             count(part(e, "overhead").get("new_tokens"))] for name, e in named]
    chart = figures.overhead_bars(named)
    return Section("Decoding overhead", "overhead", [
        Table(["Model", "Strategic / plain wall time", "Prompts", "New tokens"], rows,
              "Measured as a ratio in one run on the same prompts (DESIGN.md §Performance rules)."),
        Figure(chart)])


def _behaviours(results: dict) -> Section | None:
    pools = {name: p for name, p in part(results, "behaviours").items() if isinstance(p, dict)}
    if not pools:
        return None
    rows = [[name, count(p.get("n")), count(p.get("seed")),
             ", ".join(f"{source} {count(n)}" for source, n in part(p, "sources").items()) or MISSING]
            for name, p in pools.items()]
    return Section("Behaviour pools", "behaviours", [Table(["Pool", "n", "Seed", "Sources"], rows)])


def _short(text, limit: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _excerpts(results: dict) -> Section | None:
    rows = []
    for name, entry in default_entries(results):
        for attack_name, attack in attacks_of(entry).items():
            for excerpt in (e for e in items(attack, "excerpts") if isinstance(e, dict)):
                if "harmful" in excerpt:
                    verdict = "harmful" if excerpt["harmful"] else "not harmful"
                else:
                    verdict = "refused" if excerpt.get("refused") else "not refused"
                rows.append([name, attack_name, _short(excerpt.get("prompt", ""), EXCERPT_PROMPT_CHARS),
                             _short(excerpt.get("output", ""), EXCERPT_OUTPUT_CHARS),
                             Cell(verdict, str(excerpt.get("reason", "")))])
    if not rows:
        return None
    return Section("Output excerpts", "excerpts", [
        f"Short truncated excerpts (prompt ≤ {EXCERPT_PROMPT_CHARS}, output ≤ {EXCERPT_OUTPUT_CHARS} characters) with "
        "the verdict the results file records for each.",
        Table(["Model", "Attack", "Prompt", "Output", "Verdict"], rows)],
        collapsed=True)


def _provenance(results: dict) -> Section | None:
    provenance = part(results, "provenance")
    blocks = []
    seeds = part(provenance, "seeds")
    if seeds:
        blocks.append("Seeds: " + ", ".join(f"{k}={v}" for k, v in seeds.items()))
    packages = part(provenance, "packages")
    if packages:
        blocks.append(Table(["Package", "Version"], [[k, str(v)] for k, v in packages.items()]))
    data_files = part(provenance, "data_files")
    if data_files:
        blocks.append(Table(["Data file", "sha256"], [[k, str(v)[:16] + "…"] for k, v in data_files.items()]))
    checkpoints = [[name, str(entry["checkpoint"])] for name, entry in entries(results) if entry.get("checkpoint")]
    if checkpoints:
        blocks.append(Table(["Model", "Checkpoint"], checkpoints))
    return Section("Provenance", "provenance", blocks, collapsed=True) if blocks else None

