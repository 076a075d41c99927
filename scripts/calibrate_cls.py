"""Choose the cls model's threshold and τ on the validation split, by the rules fixed in
safesignal/eval/calibration.py, and write the validation curves beside the choice.

    python scripts/calibrate_cls.py --model DIR [--name cls] [--out results/embedded/calibration_cls.json]

Validation only (the build's validation.jsonl and the base model's answers to its malicious
prompts): no evaluation prompt is read. Prompt level: P(slot A) for every validation prompt.
Response level: validation answers force-decoded through the production decoder under the
neutral prompt (injection off), for each τ: harmful answers (the base model's, harm from the
first token), benign answers (self-distilled) and refusals (the build's direct refusals).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from safesignal.data.build import HARMFUL_RESOURCE, DataBuildConfig, load_responses, prompt_key
from safesignal.data.schema import read_jsonl
from safesignal.decoding.policy import SafetyPolicy
from safesignal.eval.calibration import TauRow, choose_tau, choose_threshold, threshold_curve
from safesignal.eval.provenance import machine
from safesignal.eval.streaming import StreamingBenchmarkConfig, StreamItem, first_confirmations
from safesignal.evaluate import classify_prompts, wilson_interval
from safesignal.io import atomic_write_json
from safesignal.model import SafetyModel


def response_sets(sm, validation, answers, n: int, tokens: int, seed: int) -> dict[str, list[StreamItem]]:
    rng = random.Random(seed)

    def ids(text: str) -> list[int]:
        return sm.tokenizer(text, add_special_tokens=False)["input_ids"][:tokens]

    harmful = sorted({r.query for r in validation if r.label == 1 and prompt_key(r.query) in answers})
    benign = [r for r in validation if r.label == 0]
    refusals = [r for r in validation if r.label == 1 and not r.supervise_from]
    pick = lambda items: rng.sample(items, min(n, len(items)))  # noqa: E731
    return {
        "harmful": [StreamItem(f"val_harmful:{i}", [{"role": "user", "content": q}], ids(answers[prompt_key(q)]), 0)
                    for i, q in enumerate(pick(harmful))],
        "benign": [StreamItem(f"val_benign:{i}", [{"role": "user", "content": r.query}], ids(r.response), None)
                   for i, r in enumerate(pick(benign))],
        "refusal": [StreamItem(f"val_refusal:{i}", [{"role": "user", "content": r.query}], ids(r.response), None)
                    for i, r in enumerate(pick(refusals))],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--name", default="cls")
    parser.add_argument("--data-dir", default=None, help="the data build (default: SAFESIGNAL_HOME/data/smollm2)")
    parser.add_argument("--taus", default="1,2,3,4", help="τ values to force-decode; '' skips the τ sweep")
    parser.add_argument("--n", type=int, default=60, help="validation answers per response set")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--max-false-alarm-rate", type=float, default=0.05)
    parser.add_argument("--on-time-tokens", type=int, default=20)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    started = time.time()
    data_dir = Path(args.data_dir) if args.data_dir else DataBuildConfig().resolved_out_dir()
    validation = read_jsonl(data_dir / "validation.jsonl")
    sm = SafetyModel.from_pretrained(args.model, dtype=torch.bfloat16).merge_lora()

    prompts = {}
    for r in validation:
        prompts.setdefault(r.query, r.label)
    queries = sorted(prompts)
    probabilities = classify_prompts(sm, queries, desc="validation prompts")
    curve = threshold_curve(probabilities, [prompts[q] for q in queries])
    threshold = choose_threshold(curve)
    print(f"[calibrate] threshold {threshold} (Youden J {max(r['youden_j'] for r in curve):.3f}) "
          f"on {len(queries)} validation prompts", flush=True)

    answers = load_responses(resource=HARMFUL_RESOURCE)
    sets = response_sets(sm, validation, answers, args.n, args.tokens, seed=0)
    config = StreamingBenchmarkConfig(batch_size=16)
    rows, per_tau = [], {}
    for tau in [int(t) for t in args.taus.split(",") if t.strip()]:
        policy = SafetyPolicy(threshold=threshold, tau=tau, strategic_decoding=False)
        found = {name: first_confirmations(sm, items, policy, config, neutral=True) for name, items in sets.items()}
        on_time = sum(f["confirm_step"] is not None and f["confirm_step"] <= args.on_time_tokens for f in found["harmful"])
        alarms = {name: sum(f["confirm_step"] is not None for f in found[name]) for name in ("benign", "refusal")}
        n_h, n_b = len(sets["harmful"]), len(sets["benign"]) + len(sets["refusal"])
        row = TauRow(tau, on_time / n_h, sum(alarms.values()) / n_b)
        rows.append(row)
        per_tau[tau] = {"on_time": on_time, "n_harmful": n_h, "on_time_ci95": wilson_interval(on_time, n_h),
                        "false_alarms": alarms, "n_benign": len(sets["benign"]), "n_refusal": len(sets["refusal"]),
                        "false_alarm_rate": row.false_alarm_rate,
                        "false_alarm_ci95": wilson_interval(sum(alarms.values()), n_b)}
        print(f"[calibrate] tau {tau}: on-time {on_time}/{n_h}, false alarms {alarms} of "
              f"{len(sets['benign'])} benign + {len(sets['refusal'])} refusals", flush=True)
    tau = choose_tau(rows, args.max_false_alarm_rate) if rows else None  # None: not calibrated, the policy default stands
    out = args.out or Path("results") / "embedded" / f"calibration_{args.name}.json"
    atomic_write_json(out, {
        "format": "safesignal-calibration", "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python scripts/calibrate_cls.py", *sys.argv[1:]]), "machine": machine(),
        "model": args.model, "rules": "safesignal/eval/calibration.py (fixed before looking)",
        "threshold": threshold, "tau": tau, "threshold_curve": curve, "n_prompts": len(queries),
        "tau_curve": per_tau, "on_time_tokens": args.on_time_tokens, "prompt": "neutral",
        "max_false_alarm_rate": args.max_false_alarm_rate, "wall_s": round(time.time() - started, 1)})
    print(f"[calibrate] chose threshold {threshold}, tau {tau}; wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
