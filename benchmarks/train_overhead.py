"""Time per optimiser step: joint [CLS] training vs plain SFT on the same model and batches.

SmolLM2-135M geometry (random init unless --model points at a converted checkpoint),
sequence lengths 128 and 512, a warm-up step each, then interleaved repeats (SFT, CLS, SFT,
CLS, CLS, SFT, ...) so drift and order effects hit both alike; medians per mode. Both modes run through the same trainer
loss (`SafetyModel.forward`); plain SFT has no [CLS] slot and uses transformers' own 2-D mask path.

    python benchmarks/train_overhead.py [--repeats 25] [--lengths 128 512]

The last line is a JSON object; `cls_vs_sft_step_time_ratio` is the worse of the lengths.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch

from safesignal.batching import WindowSampler, collate
from safesignal.formatting import EncodedExample

from common import benchmark_model, machine, write_record


def make_examples(batch: int, length: int, vocab: int, forbidden: int, seed: int) -> list[EncodedExample]:
    """Prompt = first quarter, response = the rest; labels alternate."""
    rng = random.Random(seed)
    examples = []
    prompt = max(4, length // 4)
    for row in range(batch):
        ids = [rng.randrange(vocab) for _ in range(length)]
        ids = [i if i != forbidden else i + 1 for i in ids]
        query = [2 <= i < prompt - 2 for i in range(length)]
        examples.append(EncodedExample(ids, query, prompt, prompt, label=row % 2))
    return examples


def optimiser_step(model, optimizer, batch, weight) -> None:
    model(**batch, cls_loss_weight=weight).loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="converted checkpoint dir (default: random SmolLM2-135M geometry)")
    parser.add_argument("--layers", type=int, default=30, help="decoder layers of the random model")
    parser.add_argument("--lengths", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--batch", type=int, nargs="+", default=[4, 2], help="batch size per length")
    parser.add_argument("--repeats", type=int, default=25)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", help="also write the summary JSON here (e.g. results/bench/train_overhead.json)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    sm = benchmark_model(args.model, args.layers)
    sm.train()
    optimizer = torch.optim.AdamW([p for p in sm.parameters() if p.requires_grad], lr=1e-5)
    vocab = sm.base.get_input_embeddings().num_embeddings
    sampler = WindowSampler(max_length=21, dead_fraction=0.0)  # a live slot B: the costlier case

    per_length = {}
    for length, batch_size in zip(args.lengths, args.batch * len(args.lengths)):
        examples = make_examples(batch_size, length, vocab, sm.cls_token_id, seed=length)
        pad = sm.tokenizer.pad_token_id
        batches = {
            "sft": collate(examples, cls_token_id=None, pad_token_id=pad),
            "cls": collate(
                examples,
                cls_token_id=sm.cls_token_id,
                pad_token_id=pad,
                window_sampler=sampler,
                rng=random.Random(0),
            ),
        }
        times = {"sft": [], "cls": []}
        for mode in ("sft", "cls"):  # warm-up
            optimiser_step(sm, optimizer, batches[mode], 0.1)
        for repeat in range(args.repeats):
            # Alternate which mode goes first, so allocator and cache state favour neither.
            for mode in ("sft", "cls") if repeat % 2 == 0 else ("cls", "sft"):
                start = time.perf_counter()
                optimiser_step(sm, optimizer, batches[mode], 0.1)
                times[mode].append(time.perf_counter() - start)
        sft, cls = statistics.median(times["sft"]), statistics.median(times["cls"])
        # Ratio of each interleaved pair: its spread shows how far to trust the median.
        pair_ratios = sorted(c / s for s, c in zip(times["sft"], times["cls"]))
        quartiles = statistics.quantiles(pair_ratios, n=4) if len(pair_ratios) > 1 else pair_ratios * 3
        per_length[str(length)] = {
            "batch": batch_size,
            "sft_step_s": round(sft, 4),
            "cls_step_s": round(cls, 4),
            "ratio": round(cls / sft, 4),
            "pair_ratio_iqr": [round(quartiles[0], 4), round(quartiles[2], 4)],
        }
        print(
            f"length {length:4d} batch {batch_size}: sft {sft:.3f}s  cls {cls:.3f}s  ratio {cls / sft:.3f} "
            f"(pairwise IQR {quartiles[0]:.3f}-{quartiles[2]:.3f})"
        )

    summary = {
        "benchmark": "train_overhead",
        "cls_vs_sft_step_time_ratio": max(v["ratio"] for v in per_length.values()),
        "per_length": per_length,
        "model": args.model or f"random SmolLM2-135M geometry ({args.layers} layers)",
        "repeats": args.repeats,
        **machine(),
    }
    write_record(summary, args.out)

if __name__ == "__main__":
    main()
