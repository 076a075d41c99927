"""Memory, disk and time of the trainer's data path on a generated million-row training file.

Generates a labelled training file (prompt / response / label / source; 30% malicious, so
balancing draws 400k extra examples at 1M rows) with data_scale.py's Zipf-weighted prompts,
as JSONL and / or Parquet, then, each in a fresh process that reports its own memory:

- encodes the first --small rows and then all rows exactly as `safesignal train` does
  (`encoded_file`: stream, validate, encode with the SmolLM2-135M tokenizer, max_length 512,
  write the memory-mapped store), reports the build's time and peak RSS (VmHWM);
- opens the store again (what a resumed run or another rank does: hash the file, map);
- serves one balanced epoch (`EncodedDataset[i]` for every i, what the data loader asks)
  and reports RSS split into private memory (RssAnon) and mapped store pages (RssFile:
  page cache, shared by every rank, given back under pressure);
- for comparison, the list-based path the store replaced (every record and encoded example
  in Python lists) on --list-rows rows: its peak RSS growth per row.

The tokenizer is the converted SmolLM2 (SAFESIGNAL_HOME/models/smollm2-base: run
`safesignal models convert` or anything that calls `ensure_smollm2_base` once). The last line
is a JSON object.

    python benchmarks/train_data_scale.py --formats jsonl --out results/bench/train_data_scale.json
    python benchmarks/train_data_scale.py --rows 20000 --small 5000 --list-rows 5000   # a quick look
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from data_scale import _memory_mb, _prompt, _vocabulary

MALICIOUS_FRACTION = 0.3
MAX_LENGTH = 512
REFUSALS = ["Sorry, I cannot help with that.", "I can't assist with this request because it could cause harm.",
            "I won't provide that. If you are in danger, please contact local emergency services."]


def generate(folder: Path, rows: int, small: int, formats: list[str], seed: int) -> None:
    """data-{small,rows}.{jsonl,parquet}: labelled records, the small file the first rows of the big one."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(seed)
    words, cumulative = _vocabulary(rng)
    schema = pa.schema([("prompt", pa.string()), ("response", pa.string()), ("label", pa.int64()),
                        ("source", pa.string())])
    jsonl = {size: open(folder / f"data-{size}.jsonl", "w") for size in (small, rows)} if "jsonl" in formats else {}
    parquet = ({size: pq.ParquetWriter(folder / f"data-{size}.parquet", schema) for size in (small, rows)}
               if "parquet" in formats else {})
    batch: list[dict] = []

    def write_parquet(upto: int) -> None:
        table = pa.Table.from_pylist(batch, schema=schema)
        for size, writer in parquet.items():
            if upto <= size:
                writer.write_table(table)

    for row in range(rows):
        malicious = rng.random() < MALICIOUS_FRACTION
        response = rng.choice(REFUSALS) if malicious else "Sure. " + " ".join(rng.choices(words, k=rng.randint(8, 60)))
        record = {"prompt": _prompt(rng, words, cumulative), "response": response, "label": int(malicious),
                  "source": "generated"}
        line = json.dumps(record) + "\n"
        for size, handle in jsonl.items():
            if row < size:
                handle.write(line)
        batch.append(record)
        if len(batch) == 50000 or row + 1 == small or row + 1 == rows:  # `small` ends on a batch edge
            write_parquet(row + 1)
            batch = []
    for handle in [*jsonl.values(), *parquet.values()]:
        handle.close()


def _rss() -> dict[str, float]:
    return {field: round(_memory_mb(field), 1) for field in ("VmRSS", "RssAnon", "RssFile", "VmHWM")}


def child(path: str, cache: str, tokenizer_dir: str) -> None:
    """The store path in this fresh process: build, reopen, one balanced epoch."""
    import pyarrow.parquet  # noqa: F401  (the Parquet reader's import, before the baseline)
    from transformers import AutoTokenizer

    from safesignal.data.dataset import EncodedDataset
    from safesignal.data.encoded_files import encoded_file
    from safesignal.formatting import PromptFormatter

    formatter = PromptFormatter(AutoTokenizer.from_pretrained(tokenizer_dir), max_length=MAX_LENGTH)
    baseline = _rss()
    start = time.perf_counter()
    store = encoded_file(path, formatter, cache)
    build_seconds = time.perf_counter() - start
    after_build = _rss()
    start = time.perf_counter()
    store = encoded_file(path, formatter, cache)
    reopen_seconds = time.perf_counter() - start
    dataset = EncodedDataset(store, balance=True, seed=0)
    start = time.perf_counter()
    tokens_served = sum(len(dataset[i].input_ids) for i in range(len(dataset)))
    epoch_seconds = time.perf_counter() - start
    after_epoch = _rss()
    print(json.dumps({
        "examples": len(store), "tokens": store.meta["tokens"], "served_per_epoch": len(dataset),
        "tokens_served": tokens_served, "label_counts": dataset.label_counts(),
        "build_seconds": round(build_seconds, 1), "rows_per_second": round(len(store) / build_seconds),
        "reopen_seconds": round(reopen_seconds, 2), "epoch_read_seconds": round(epoch_seconds, 1),
        "epoch_read_us_per_example": round(epoch_seconds / len(dataset) * 1e6, 1),
        "rss_mb": {"after_imports_and_tokenizer": baseline, "after_build": after_build, "after_epoch": after_epoch},
        "store_disk_bytes": store.disk_bytes(), "index_bytes": int(dataset.indices.nbytes),
        "input_ids_dtype": store.meta["input_ids_dtype"],
    }))


def list_child(path: str, tokenizer_dir: str) -> None:
    """The list-based path the store replaced: every Record and EncodedExample held in lists."""
    from transformers import AutoTokenizer

    from safesignal.data.dataset import encode_records
    from safesignal.data.schema import read_jsonl
    from safesignal.formatting import PromptFormatter

    formatter = PromptFormatter(AutoTokenizer.from_pretrained(tokenizer_dir), max_length=MAX_LENGTH)
    baseline = _memory_mb("VmRSS")
    records = read_jsonl(path)
    examples = encode_records(records, formatter)
    print(json.dumps({"examples": len(examples), "tokens": sum(len(e.input_ids) for e in examples),
                      "peak_rss_growth_mb": round(_memory_mb("VmHWM") - baseline, 1)}))


def _run(*args: str) -> dict:
    run = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if run.returncode:
        raise SystemExit(run.stderr)
    return json.loads(run.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--small", type=int, default=100_000, help="rows of the smaller run (memory at two sizes)")
    parser.add_argument("--list-rows", type=int, default=20_000, help="rows for the list-based comparison (0: skip)")
    parser.add_argument("--formats", nargs="+", default=["jsonl", "parquet"], choices=["jsonl", "parquet"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dir", help="work folder (default: a temporary one, removed after)")
    parser.add_argument("--out", help="also write the summary JSON here (e.g. results/bench/train_data_scale.json)")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--list-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(*args.child)
    if args.list_child:
        return list_child(*args.list_child)
    from common import write_record  # imports torch: not in the measured child processes

    from safesignal.base_models import smollm2_base_dir

    tokenizer_dir = smollm2_base_dir()
    if not (tokenizer_dir / "tokenizer.json").is_file():
        raise SystemExit(f"{tokenizer_dir}: no converted SmolLM2 (run `safesignal models convert` once)")
    with tempfile.TemporaryDirectory(dir=args.dir) as work:
        folder = Path(work)
        start = time.perf_counter()
        generate(folder, args.rows, args.small, args.formats, args.seed)
        generated = round(time.perf_counter() - start, 1)
        runs = []
        for fmt in args.formats:
            for size in (args.small, args.rows):
                data = folder / f"data-{size}.{fmt}"
                result = _run("--child", str(data), str(folder / f"cache-{fmt}-{size}"), str(tokenizer_dir))
                runs.append({"format": fmt, "rows": size, "file_mb": round(data.stat().st_size / 2**20, 1), **result,
                             "disk_bytes_per_token": round(result["store_disk_bytes"] / result["tokens"], 3),
                             "disk_bytes_per_row": round(result["store_disk_bytes"] / result["examples"], 1)})
                print(json.dumps(runs[-1]), file=sys.stderr)
        summary = {}
        for fmt in args.formats:
            small, big = (next(r for r in runs if r["format"] == fmt and r["rows"] == n) for n in (args.small, args.rows))

            def growth(stage: str, field: str) -> float:
                return round((big["rss_mb"][stage][field] - small["rss_mb"][stage][field]) * 2**20 / (args.rows - args.small), 1)

            summary[fmt] = {
                "peak_rss_mb_small_vs_rows": [small["rss_mb"]["after_epoch"]["VmHWM"], big["rss_mb"]["after_epoch"]["VmHWM"]],
                "build_peak_rss_mb_small_vs_rows": [small["rss_mb"]["after_build"]["VmHWM"],
                                                    big["rss_mb"]["after_build"]["VmHWM"]],
                "build_peak_rss_growth_bytes_per_row": growth("after_build", "VmHWM"),
                "private_rss_growth_bytes_per_row_after_epoch": growth("after_epoch", "RssAnon"),
                "mapped_rss_growth_bytes_per_row_after_epoch": growth("after_epoch", "RssFile"),
                "index_bytes_per_served_example": round(big["index_bytes"] / big["served_per_epoch"], 1),
            }
        record = {"benchmark": "train_data_scale", "tokenizer": "SmolLM2-135M (49,152 ids)", "max_length": MAX_LENGTH,
                  "rows": args.rows, "small": args.small, "generate_seconds": generated, "summary": summary, "runs": runs}
        if args.list_rows and "jsonl" in args.formats:
            head = folder / f"data-head-{args.list_rows}.jsonl"
            with open(folder / f"data-{args.rows}.jsonl") as source, open(head, "w") as target:
                target.writelines(line for _, line in zip(range(args.list_rows), source))
            lists = _run("--list-child", str(head), str(tokenizer_dir))
            record["list_based_path"] = {**lists, "peak_rss_growth_bytes_per_row": round(
                lists["peak_rss_growth_mb"] * 2**20 / lists["examples"], 1)}
        write_record(record, args.out)


if __name__ == "__main__":
    main()
