"""Wall-clock cost of strategic decoding vs plain `generate` on the same model and prompts.

SmolLM2-135M geometry (random init unless --model gives a converted checkpoint). The baseline
is transformers' `generate` (greedy, KV cache, stock sdpa). safesignal runs its own decode loop
with each check schedule; the head is forced benign so every run checks on its schedule and
none ends early in an injection (the common, benign case; a confirmation adds every-step
checks, an injection stops them). EOS is ignored so every run makes exactly the asked number
of tokens. Warm-up, then interleaved repeats (plain, plain with our attention kernel,
annealing, periodic, each, rotated each repeat), medians. Also reports model calls per
generated token.

    python benchmarks/decode_overhead.py [--repeats 3] [--out results/bench/decode_overhead.json]

The last line is a JSON object with `annealing_ratio` (the default, with its tail),
`annealing_no_tail_ratio`, `periodic10_ratio`, `each_ratio` (256 new tokens, batch 1) and the
same at batch 8 (`*_b8`), and `levers_off_ratio` (both levers off, one check after the prefill;
`levers_off_plain_paths_ratio`: the same with the few-row matmul paths off too).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from safesignal.decoding import Request, StrategicDecoder
from safesignal.decoding.fast_linear import FastLinearConfig
from safesignal.decoding.policy import SafetyPolicy

from common import benchmark_model, machine, write_record

PROMPTS = [
    "Explain how a refrigerator keeps food cold.",
    "Write a short story about a lighthouse keeper.",
    "What are the main causes of inflation?",
    "Describe the water cycle for a ten-year-old.",
    "How do vaccines train the immune system?",
    "Give three tips for learning a new language.",
    "Summarise the plot of a heist movie you invent.",
    "Why is the sky blue during the day?",
]
# annealing is the default (with its 32-step tail); annealing_no_tail is DESIGN.md's schedule
LEVERS_OFF = SafetyPolicy(schedule="first", strategic_attention=False, strategic_decoding=False)
# name -> (policy, decode-step linears). Both levers off (no refreshed [CLS] for generated
# tokens, no injection) and only the prefill pass's verdict: what safesignal's own decode loop
# costs beside plain generate, with its few-row matmul paths and without them.
SCHEDULES = {"annealing": (SafetyPolicy(), FastLinearConfig()),
             "annealing_no_tail": (SafetyPolicy(annealing_tail_period=0), FastLinearConfig()),
             "periodic10": (SafetyPolicy(schedule="periodic"), FastLinearConfig()),
             "each": (SafetyPolicy(schedule="each"), FastLinearConfig()),
             "levers_off": (LEVERS_OFF, FastLinearConfig()),
             "levers_off_plain_paths": (LEVERS_OFF, FastLinearConfig(enabled=False))}


def plain_generate(sm, prompts: list[str], new_tokens: int, kernel: str = "sdpa") -> tuple[float, int]:
    """transformers' generate on the same model, left padded like ours.

    kernel="sdpa" is what a user of plain `generate` gets; kernel="safesignal_sdpa" gives it
    our CPU attention (no key/value copy under a padding mask), so the difference between the
    two ratios separates the kernel from the method.
    """
    tok = sm.tokenizer
    encoded = [sm.formatter.encode([{"role": "user", "content": p}]).input_ids for p in prompts]
    width = max(len(e) for e in encoded)
    ids = torch.tensor([[tok.pad_token_id] * (width - len(e)) + e for e in encoded])
    mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded])
    calls = {"n": 0}
    handle = sm.base.get_decoder().register_forward_pre_hook(lambda *_: calls.__setitem__("n", calls["n"] + 1))
    sm.base.set_attn_implementation(kernel)
    try:
        start = time.perf_counter()
        with torch.inference_mode():
            out = sm.base.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                   do_sample=False, pad_token_id=tok.pad_token_id)
        elapsed = time.perf_counter() - start
    finally:
        sm.base.set_attn_implementation("safesignal_sdpa")
        handle.remove()
    assert out.shape[1] - width == new_tokens
    return elapsed, calls["n"]


def strategic_generate(sm, prompts: list[str], new_tokens: int, policy: SafetyPolicy,
                       fast_linear: FastLinearConfig = FastLinearConfig()) -> tuple[float, int]:
    decoder = StrategicDecoder(sm, fast_linear=fast_linear)
    requests = [Request([{"role": "user", "content": p}], policy=policy, max_new_tokens=new_tokens, ignore_eos=True)
                for p in prompts]
    start = time.perf_counter()
    results = decoder.generate(requests)
    elapsed = time.perf_counter() - start
    assert all(len(r.token_ids) == new_tokens and not r.intervened for r in results)
    return elapsed, decoder.model_calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="converted checkpoint dir (default: random SmolLM2-135M geometry)")
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--new-tokens", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out")
    args = parser.parse_args()

    sm = benchmark_model(args.model, args.layers).eval()
    with torch.no_grad():  # benign verdicts throughout: checks run on schedule, nothing injects
        sm.head.weight.zero_()
        sm.head.bias.fill_(-20.0)

    runners = {
        "plain": lambda p, n: plain_generate(sm, p, n),
        "plain_same_kernel": lambda p, n: plain_generate(sm, p, n, kernel="safesignal_sdpa"),
    }
    for name, (policy, fast_linear) in SCHEDULES.items():
        runners[name] = lambda p, n, policy=policy, f=fast_linear: strategic_generate(sm, p, n, policy, f)

    table = {}
    for batch in args.batches:
        prompts = PROMPTS[:batch] if batch <= len(PROMPTS) else (PROMPTS * batch)[:batch]
        for new_tokens in args.new_tokens:
            for run in runners.values():  # warm-up
                run(prompts, min(new_tokens, 8))
            times = {name: [] for name in runners}
            calls = {}
            order = list(runners)
            for repeat in range(args.repeats):
                rotated = order[repeat % len(order):] + order[: repeat % len(order)]
                for name in rotated:
                    elapsed, n_calls = runners[name](prompts, new_tokens)
                    times[name].append(elapsed)
                    calls[name] = n_calls
            plain = statistics.median(times["plain"])
            key = f"b{batch}_n{new_tokens}"
            table[key] = {"plain_s": round(plain, 4)}
            same_kernel = statistics.median(times["plain_same_kernel"])
            table[key]["plain_same_kernel_s"] = round(same_kernel, 4)
            for name in SCHEDULES:
                ratio = statistics.median(times[name]) / plain
                table[key][f"{name}_ratio"] = round(ratio, 4)
                table[key][f"{name}_ratio_same_kernel"] = round(statistics.median(times[name]) / same_kernel, 4)
            table[key]["calls_per_token"] = {name: round(c / new_tokens, 4) for name, c in calls.items()}
            print(f"batch {batch} new {new_tokens}: plain {plain:.2f}s  " + "  ".join(
                f"{name} ×{table[key][f'{name}_ratio']:.3f}" for name in SCHEDULES))

    summary = {"benchmark": "decode_overhead"}
    longest = max(args.new_tokens)
    for batch, suffix in ((1, ""), (8, "_b8")):
        key = f"b{batch}_n{longest}"
        if key in table:
            for name in SCHEDULES:
                summary[f"{name}_ratio{suffix}"] = table[key][f"{name}_ratio"]
    summary.update(per_setting=table, model=args.model or f"random SmolLM2-135M geometry ({args.layers} layers)",
                   repeats=args.repeats, **machine())
    write_record(summary, args.out)


if __name__ == "__main__":
    main()
