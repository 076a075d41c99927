"""Decode overhead inside an eval run: strategic decoding vs plain `generate`, same model, same
prompts, same number of new tokens (EOS ignored), interleaved repeats, medians.

benchmarks/decode_overhead.py is the full benchmark (schedules, batch sizes, kernels); this is
the one ratio printed beside every ASR, measured on the run's own model and benign prompts.
"""

from __future__ import annotations

import statistics
import time

import torch

from ..decoding import Request
from .generation import left_padded


@torch.inference_mode()
def decode_ratio(sm, prompts: list[str], policy, *, new_tokens: int = 64, repeats: int = 2) -> dict:
    tok = sm.tokenizer
    ids, mask, _ = left_padded(sm, [sm.formatter.encode([{"role": "user", "content": p}], "", add_eos=False).input_ids
                                    for p in prompts])

    def plain():
        sm.base.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                         do_sample=False, pad_token_id=tok.pad_token_id)

    def strategic():
        sm.generate_requests([Request([{"role": "user", "content": p}], policy=policy, max_new_tokens=new_tokens,
                                      ignore_eos=True) for p in prompts])

    runs: dict[str, list[float]] = {"plain": [], "strategic": []}
    plain()  # warm-up: first-call allocations are not the method's cost
    for _ in range(repeats):
        for name, fn in (("plain", plain), ("strategic", strategic)):
            start = time.perf_counter()
            fn()
            runs[name].append(time.perf_counter() - start)
    plain_s, strategic_s = statistics.median(runs["plain"]), statistics.median(runs["strategic"])
    return {"decode_ratio": strategic_s / plain_s, "plain_s": plain_s, "strategic_s": strategic_s,
            "n_prompts": len(prompts), "new_tokens": new_tokens, "repeats": repeats}
