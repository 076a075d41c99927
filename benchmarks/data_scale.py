"""Memory and recall of `safesignal data prepare` on a generated million-row file.

Generates an Alpaca-style file (instruction / input / output) of --rows rows, as JSONL and as
Parquet, with planted duplicates: near copies of earlier rows (one word replaced, dropped,
inserted or swapped, or a short phrase appended), exact copies (case and spacing changed)
and near copies of prompts of a separate evaluation file. Prompts are an opener ("How do I",
"Write a short story about", ...) and 6-24 words drawn from a Zipf-weighted vocabulary, so
unrelated prompts share frequent 3-grams the way real ones do.

Each run of `prepare` (first --small rows, then all rows; each format) is a fresh process that
reports its own peak RSS (VmHWM) and its RSS after imports, so the figures are the
pipeline's alone. Recall is measured against the plant list: a planted near copy counts as a
duplicate only if its word-3-gram Jaccard with its original, computed here independently of
safesignal, reaches 0.5. The last line is a JSON object.

    python benchmarks/data_scale.py                # 1,000,000 rows (about 10 minutes on 2 cores)
    python benchmarks/data_scale.py --rows 20000 --small 5000   # a quick look
"""

from __future__ import annotations

import argparse
import json
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OPENERS = ["How do I", "How can I", "What is the best way to", "Can you explain", "Write a short story about",
           "Give me a list of", "Explain why", "What are the steps to", "Describe", "Tell me about",
           "Summarise", "Compare", "Why does", "Is it true that", "Write a poem about", "Help me plan"]
APPENDED = ["please", "thanks a lot", "in detail", "step by step", "for a beginner"]
THRESHOLD = 0.5
_WORD = re.compile(r"[a-z0-9]+")


def _grams(text: str) -> set:
    """Word 3-grams of lower-cased alphanumeric words: the definition, written out again here."""
    words = _WORD.findall(text.lower())
    return {tuple(words)} if len(words) < 3 else {tuple(words[i:i + 3]) for i in range(len(words) - 2)}


def _jaccard(a: str, b: str) -> float:
    x, y = _grams(a), _grams(b)
    return len(x & y) / len(x | y) if x and y else 0.0


def _vocabulary(rng: random.Random, size: int = 30000) -> tuple[list[str], list[float]]:
    syllables = ["ka", "lo", "mi", "ren", "to", "sa", "vi", "dun", "pe", "ra", "gol", "ni", "ze", "fu", "bar", "qi"]
    words = sorted({"".join(rng.choice(syllables) for _ in range(rng.randint(2, 4))) for _ in range(size * 2)})[:size]
    rng.shuffle(words)
    weights = [1.0 / (rank + 10) for rank in range(len(words))]  # Zipf-like: frequent words recur
    cumulative, total = [], 0.0
    for w in weights:
        total += w
        cumulative.append(total)
    return words, cumulative


def _prompt(rng: random.Random, words: list[str], cumulative: list[float]) -> str:
    return rng.choice(OPENERS) + " " + " ".join(rng.choices(words, cum_weights=cumulative, k=rng.randint(6, 24)))


def _near_copy(prompt: str, rng: random.Random, words: list[str]) -> str:
    tokens = prompt.split()
    edit = rng.randrange(5)
    k = rng.randrange(len(tokens))
    if edit == 0:
        tokens[k] = rng.choice(words)
    elif edit == 1 and len(tokens) > 4:
        del tokens[k]
    elif edit == 2:
        tokens.insert(k, rng.choice(words))
    elif edit == 3 and k + 1 < len(tokens):
        tokens[k], tokens[k + 1] = tokens[k + 1], tokens[k]
    else:
        tokens.append(rng.choice(APPENDED))
    return " ".join(tokens)


def generate(folder: Path, rows: int, small: int, seed: int, near_rate: float, exact_rate: float,
             eval_rows: int, eval_copies: int) -> dict:
    """Write data-{small,rows}.{jsonl,parquet} and evaluation.jsonl; return the plant list."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(seed)
    words, cumulative = _vocabulary(rng)
    evaluation = [_prompt(rng, words, cumulative) for _ in range(eval_rows)]
    with (folder / "evaluation.jsonl").open("w") as handle:
        for prompt in evaluation:
            handle.write(json.dumps({"prompt": prompt}) + "\n")
    eval_positions = set(rng.sample(range(rows), eval_copies))
    prompts: list[str] = []
    originals: list[int] = []  # rows that copy nothing: a planted copy copies one of these, which stays
    planted = {"near": [], "exact": [], "eval": []}  # (row, original row or eval index, true Jaccard)
    schema = pa.schema([("instruction", pa.string()), ("input", pa.string()), ("output", pa.string())])
    outputs = {size: (open(folder / f"data-{size}.jsonl", "w"), pq.ParquetWriter(folder / f"data-{size}.parquet", schema))
               for size in (small, rows)}
    batch: dict[int, list[dict]] = {small: [], rows: []}
    for row in range(rows):
        draw = rng.random()
        if row in eval_positions:
            source = rng.randrange(eval_rows)
            prompt = _near_copy(evaluation[source], rng, words)
            planted["eval"].append((row, source, _jaccard(prompt, evaluation[source])))
        elif originals and draw < near_rate:
            source = rng.choice(originals)
            prompt = _near_copy(prompts[source], rng, words)
            planted["near"].append((row, source, _jaccard(prompt, prompts[source])))
        elif originals and draw < near_rate + exact_rate:
            source = rng.choice(originals)
            prompt = "  " + prompts[source].upper() + " "
            planted["exact"].append((row, source, 1.0))
        else:
            prompt = _prompt(rng, words, cumulative)
            originals.append(row)
        prompts.append(prompt)
        record = {"instruction": prompt, "input": "", "output": "Sure. " + " ".join(rng.choices(words, k=8))}
        for size, (jsonl, parquet) in outputs.items():
            if row < size:
                jsonl.write(json.dumps(record) + "\n")
                batch[size].append(record)
                if len(batch[size]) == 50000:
                    parquet.write_table(pa.Table.from_pylist(batch[size], schema=schema))
                    batch[size] = []
    for size, (jsonl, parquet) in outputs.items():
        if batch[size]:
            parquet.write_table(pa.Table.from_pylist(batch[size], schema=schema))
        jsonl.close()
        parquet.close()
    return planted


def _memory_mb(field: str) -> float:
    """VmHWM (peak) or VmRSS (now) of this process, from /proc: getrusage's ru_maxrss would
    carry over the parent's peak, which Linux keeps across fork and exec."""
    status = Path("/proc/self/status")
    if not status.exists():  # not Linux: the best there is
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 1024)
    for line in status.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"{field} not in /proc/self/status")


def child(recipe: str) -> None:
    """One `prepare` run in this fresh process: its time and memory as JSON."""
    from safesignal.data.prepare import prepare
    from safesignal.data.prepare_config import load_prepare_config

    config = load_prepare_config(recipe)
    import pyarrow.parquet  # noqa: F401  (imported before the baseline, as prepare imports it for Parquet)

    baseline = _memory_mb("VmRSS")
    start = time.perf_counter()
    summary = prepare(config)
    print(json.dumps({"seconds": round(time.perf_counter() - start, 1), "peak_rss_mb": round(_memory_mb("VmHWM"), 1),
                      "rss_after_imports_mb": round(baseline, 1), "summary": summary}))


def _dropped_rows(path: Path) -> dict[str, set[int]]:
    """reason -> row indices (0-based) of dropped.jsonl, whatever the format's `where` says."""
    out: dict[str, set[int]] = {}
    for line in path.read_text().splitlines():
        entry = json.loads(line)
        where = entry["where"]
        row = int(where.rsplit("row ", 1)[1]) if ":row " in where else int(where.rsplit(":", 1)[1]) - 1
        out.setdefault(entry["reason"], set()).add(row)
    return out


def measure(folder: Path, size: int, fmt: str, planted: dict) -> dict:
    out_dir = folder / f"out-{fmt}-{size}"
    recipe = folder / f"recipe-{fmt}-{size}.yaml"
    recipe.write_text(json.dumps({
        "out_dir": str(out_dir), "reserve_suite_evaluation": False, "validation_fraction": 0.05,
        "benign": {"sources": [{"data_file": str(folder / f"data-{size}.{fmt}"), "style": "alpaca"}]},
        "evaluation": [{"data_file": str(folder / "evaluation.jsonl"), "style": "columns", "columns": {"prompt": "prompt"}}],
    }))
    run = subprocess.run([sys.executable, __file__, "--child", str(recipe)], capture_output=True, text=True)
    if run.returncode:
        raise SystemExit(run.stderr)
    result = json.loads(run.stdout.strip().splitlines()[-1])
    summary = result.pop("summary")
    dropped = _dropped_rows(out_dir / "dropped.jsonl")
    copies = dropped.get("near copy of an earlier training prompt", set()) | dropped.get("exact copy of an earlier training prompt", set())
    eval_dropped = dropped.get("matches an evaluation prompt", set())
    anything = copies | eval_dropped  # a copy of a row that also copies an evaluation prompt goes for that

    def recall(kind: str, found: set[int]) -> dict:
        true = [row for row, _, similarity in planted[kind] if row < size and similarity >= THRESHOLD]
        below = sum(1 for row, _, similarity in planted[kind] if row < size and similarity < THRESHOLD)
        return {"planted": len(true), "found": sum(row in found for row in true),
                "recall": round(sum(row in found for row in true) / max(len(true), 1), 4),
                "planted_below_threshold": below}

    planted_rows = {row for kind in ("near", "exact") for row, _, _ in planted[kind] if row < size}
    return {
        "format": fmt, "rows": size, **result,
        "state_bytes_per_row": summary["state_bytes_per_row"],
        "train": summary["files"]["train.jsonl"]["records"], "validation": summary["files"]["validation.jsonl"]["records"],
        "near_copies": recall("near", anything), "exact_copies": recall("exact", anything),
        "evaluation_copies": recall("eval", eval_dropped),
        # Dropped as copies but not planted: a coincidental real near copy (checked by exact
        # Jaccard) or a wrong drop; precision against the plant list.
        "dropped_not_planted": len(copies - planted_rows),
        "precision_vs_planted": round(len(copies & planted_rows) / max(len(copies), 1), 4),
        "lsh": summary["near_duplicates"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--small", type=int, default=100_000, help="rows of the smaller run (RSS at two sizes)")
    parser.add_argument("--near-rate", type=float, default=0.01, help="fraction of rows that nearly copy an earlier row")
    parser.add_argument("--exact-rate", type=float, default=0.005)
    parser.add_argument("--eval-rows", type=int, default=2000)
    parser.add_argument("--eval-copies", type=int, default=1000, help="rows that nearly copy an evaluation prompt")
    parser.add_argument("--formats", nargs="+", default=["jsonl", "parquet"], choices=["jsonl", "parquet"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dir", help="work folder (default: a temporary one, removed after)")
    parser.add_argument("--out", help="also write the summary JSON here (e.g. results/bench/data_scale.json)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child)
    from common import write_record  # imports torch: not in the measured child processes

    with tempfile.TemporaryDirectory(dir=args.dir) as work:
        folder = Path(work)
        start = time.perf_counter()
        planted = generate(folder, args.rows, args.small, args.seed, args.near_rate, args.exact_rate,
                           args.eval_rows, args.eval_copies)
        generated = round(time.perf_counter() - start, 1)
        runs = []
        for fmt in args.formats:
            for size in (args.small, args.rows):
                runs.append(measure(folder, size, fmt, planted))
                print(json.dumps(runs[-1]), file=sys.stderr)
        sizes = {fmt: {r["rows"]: r for r in runs if r["format"] == fmt} for fmt in args.formats}
        growth = {fmt: round((by[args.rows]["peak_rss_mb"] - by[args.small]["peak_rss_mb"]) * 2**20
                             / (args.rows - args.small), 1) for fmt, by in sizes.items()}
        write_record({"benchmark": "data_scale", "rows": args.rows, "small": args.small, "generate_seconds": generated,
                      "file_mb": {fmt: round((folder / f"data-{args.rows}.{fmt}").stat().st_size / 2**20, 1)
                                  for fmt in args.formats},
                      "peak_rss_growth_bytes_per_row": growth, "runs": runs}, args.out)


if __name__ == "__main__":
    main()
