"""Streaming detection: when the [CLS] verdict is confirmed over whole force-decoded answers
(harmful, spliced after benign preambles, benign), per check schedule, under the real prompt
and a neutral one (safesignal.eval.streaming; issue 18).

    python benchmarks/streaming_detection.py --model smollm2-cls [--n 40] [--answer-tokens 64]
        [--schedules annealing,periodic,each] [--preambles 30,60,150,300]
        [--out results/bench/streaming_detection.json]

Writes the benchmark's dict with machine, command, date and wall time (and prints it as the
last line). No answer text is written: ids, offsets and probabilities only.
"""

from __future__ import annotations

import argparse
import time

import torch

from safesignal.eval.streaming import StreamingBenchmarkConfig, run_streaming_benchmark
from safesignal.model import SafetyModel

from common import machine, write_record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-cls")
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--answer-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--schedules", default="annealing,periodic,each")
    parser.add_argument("--preambles", default="30,60,150,300", help="spliced preamble lengths, tokens")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--engine", default="forced", choices=("forced", "decoder"),
                        help="one forward per answer and state change (forced) or the production decode loop")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    started = time.perf_counter()
    sm = SafetyModel.from_pretrained(args.model, dtype=getattr(torch, args.dtype)).merge_lora().eval()
    config = StreamingBenchmarkConfig(n=args.n, answer_tokens=args.answer_tokens, batch_size=args.batch_size,
                                      schedules=tuple(args.schedules.split(",")),
                                      preamble_tokens=tuple(int(n) for n in args.preambles.split(",")),
                                      engine=args.engine)
    summary = run_streaming_benchmark(sm, config)
    summary.update(model=args.model, dtype=args.dtype, machine=machine(),
                   total_wall_s=round(time.perf_counter() - started, 1))
    write_record(summary, args.out)


if __name__ == "__main__":
    main()
