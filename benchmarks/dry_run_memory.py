"""The dry run's memory figures against a real training step on this CPU.

SmolLM2-135M geometry (random init, fp32), one process: for each (batch, length, activation
checkpointing) a fresh process builds the model and a batch, resets its peak RSS (Linux
`/proc/self/clear_refs`) after a first step, runs a second forward + backward + AdamW step,
and reads the peak growth over what the weights held before the first. The dry run's figure
for the same step is gradients + AdamW state + peak activations (the weights are already
resident). The dry run adds the three as if all were held at once; activations are freed
during the backward while gradients fill, so the measured peak may fall below it. The ratio measured / estimated is printed
per setting; the last line is a JSON summary.

    python benchmarks/dry_run_memory.py [--out results/bench/dry_run_memory.json]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
from pathlib import Path

SETTINGS = [(2, 512, False), (2, 512, True), (4, 1024, False), (4, 1024, True)]
MiB = 2**20


def rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def one_step(batch: int, length: int, checkpointing: bool) -> dict:
    import gc

    import torch

    from common import benchmark_model
    from safesignal.batching import WindowSampler, collate
    from safesignal.formatting import PromptFormatter
    from safesignal.training.sizing import Geometry, ParameterCounts, strategy_memory

    torch.manual_seed(0)
    sm = benchmark_model(None, layers=30).train()
    if checkpointing:
        sm.activation_checkpointing_enable()
    # A response longer than `length` tokens, cut to it (the formatter cuts the response, never the prompt).
    formatter = PromptFormatter(sm.tokenizer, max_length=length)
    examples = [formatter.encode([{"role": "user", "content": "word " * 16}], "answer " * length, label=1)
                for _ in range(batch)]
    collated = collate(examples, cls_token_id=sm.cls_token_id, pad_token_id=sm.tokenizer.pad_token_id,
                       window_sampler=WindowSampler(dead_fraction=0.0), rng=[random.Random(i) for i in range(batch)])
    rows, tokens = collated["input_ids"].shape
    optimizer = torch.optim.AdamW(sm.parameters(), lr=1e-4)
    gc.collect()
    before = rss_kib("VmRSS")  # the weights (and the batch) only
    # The first step allocates AdamW's state; the peak of the second is what every later step reaches.
    for step in range(2):
        if step == 1:
            Path("/proc/self/clear_refs").write_text("5")  # peak RSS (VmHWM) starts again from now
        # As the Trainer does: only the loss outlives the forward (the output's logits are freed).
        loss = sm(**collated, cls_loss_weight=0.1).loss
        loss.backward()
        del loss
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)  # as the Trainer does
    peak = rss_kib("VmHWM")
    measured = (peak - before) * 1024

    params = sum(p.numel() for p in sm.parameters())
    largest = max(sum(p.numel() for p in layer.parameters()) for layer in sm.base.get_decoder().layers)
    counts = ParameterCounts(params, params, 2 * sm.config.hidden_size + 1, largest)
    row = strategy_memory(counts, Geometry.from_config(sm.base.config), "fp32", 1, rows, tokens)[0]  # ddp, 1 GPU
    activations = row.activations_checkpointed if checkpointing else row.activations
    estimated = row.gradients + row.optimizer + activations
    return {"batch": rows, "length": tokens, "checkpointing": checkpointing, "measured_mib": round(measured / MiB, 1),
            "estimated_mib": round(estimated / MiB, 1), "activations_estimated_mib": round(activations / MiB, 1),
            "gradients_and_optimizer_mib": round((row.gradients + row.optimizer) / MiB, 1),
            "measured_over_estimated": round(measured / estimated, 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="also write the summary (with command and date) here")
    parser.add_argument("--one", nargs=3, help=argparse.SUPPRESS)  # batch length checkpointing: run one step
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_step(int(args.one[0]), int(args.one[1]), args.one[2] == "1")))
        return 0
    from common import machine, write_record

    runs = []
    for batch, length, checkpointing in SETTINGS:
        done = subprocess.run([sys.executable, __file__, "--one", str(batch), str(length), str(int(checkpointing))],
                              capture_output=True, text=True, check=True, cwd=Path(__file__).parent)
        run = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"batch {run['batch']} x {run['length']} tokens, checkpointing {'on ' if checkpointing else 'off'}: "
              f"measured {run['measured_mib']:.0f} MiB, dry run {run['estimated_mib']:.0f} MiB "
              f"(x{run['measured_over_estimated']:.2f})", file=sys.stderr)
        runs.append(run)
    ratios = [run["measured_over_estimated"] for run in runs]
    write_record({"benchmark": "dry_run_memory", "model": "SmolLM2-135M geometry, random init, fp32, 1 process",
                  **machine(), "runs": runs, "ratio_min": min(ratios), "ratio_max": max(ratios)}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
