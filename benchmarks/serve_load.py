"""Load on `safesignal serve` (loopback only, bounded in count and time) against two baselines.

A mixed workload (benign and harmful prompts from the embedded default's validation split,
so interventions happen mid-batch) is sent by 1, 4, 8 and 16 concurrent streaming clients to
the safesignal server on SmolLM2; then by 8 clients to a naive server (the same app, one
request at a time through plain HF `generate`, benchmarks/naive_hf_server.py); and the same
requests go through plain HF `generate` in static batches of 8 in this process (no server, no
safety: the honest upper reference for batching). Every setting runs once per round, on its
share of the requests, in an order rotated each round (`--rounds`), because this VM's speed
drifts by tens of percent over minutes. Greedy, the same max_tokens everywhere; throughput is
completion tokens over the summed wall time (the outputs differ: the baselines have no [CLS]
and never refuse). Time to first token is to the first non-empty content delta.
Finally a flood (more concurrent requests than rows + queue) checks 429s and the server's RSS.

    python benchmarks/serve_load.py [--model smollm2-cls] [--requests 48] [--rounds 3] [--max-tokens 64]
        [--out results/bench/serve_load.json]

The last line is a JSON object with `concurrent_vs_sequential_throughput` (8 clients),
`vs_naive_hf_throughput`, `vs_static_batch_hf_throughput`, `p95_latency_s`, `ttft_p50_s`
(8 clients) and `errors`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx2 as httpx
import torch

from safesignal.cpu_tuning import tune_glibc_malloc

from common import machine, write_record

HERE = Path(__file__).resolve().parent


def workload(n: int, harmful_share: float, seed: int) -> list[dict]:
    """`n` requests from the validation split (built if missing): prompts only, in a fixed order."""
    from safesignal.data.build import DataBuildConfig, build

    config = DataBuildConfig()
    path = config.resolved_out_dir() / "validation.jsonl"
    if not path.is_file():
        build(config)
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rng = random.Random(seed)
    harmful = rng.sample([r["prompt"] for r in rows if r["label"] == 1], round(n * harmful_share))
    benign = rng.sample([r["prompt"] for r in rows if r["label"] == 0], n - len(harmful))
    prompts = [(p, "harmful") for p in harmful] + [(p, "benign") for p in benign]
    rng.shuffle(prompts)
    return [{"messages": [{"role": "user", "content": p}], "kind": kind} for p, kind in prompts]


def start_server(argv: list[str], port: int, log: Path) -> subprocess.Popen:
    """Start a server whose output goes to `log` (a pipe nobody reads would fill and block it)."""
    with open(log, "w") as sink:
        process = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    process.kill()
    raise RuntimeError("server did not start in 300 s")


def stop_server(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def one_request(client, url: str, item: dict, max_tokens: int) -> dict:
    body = {"messages": item["messages"], "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    sent, first, tokens, intervened, status = time.perf_counter(), None, 0, None, None
    try:
        async with client.stream("POST", url, json=body) as response:
            status = response.status_code
            if status != 200:
                await response.aread()
                return {"ok": False, "status": status, "latency_s": time.perf_counter() - sent}
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    return {"ok": False, "status": "stream_error", "latency_s": time.perf_counter() - sent}
                if chunk.get("choices") and chunk["choices"][0]["delta"].get("content") and first is None:
                    first = time.perf_counter()
                if "safety" in chunk:
                    intervened = chunk["safety"]["intervened"]
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
    except httpx.HTTPError as err:
        return {"ok": False, "status": type(err).__name__, "latency_s": time.perf_counter() - sent}
    end = time.perf_counter()
    return {"ok": True, "latency_s": end - sent, "ttft_s": (first or end) - sent, "tokens": tokens,
            "intervened": intervened, "kind": item["kind"]}


async def load_outcomes(port: int, items: list[dict], clients: int, max_tokens: int) -> tuple[list[dict], float]:
    """`clients` closed-loop streaming clients share `items`; every request's outcome, and the wall time."""
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    queue = list(items)
    outcomes = []
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        async def worker():
            first = True  # a client's first request lands in the opening burst of all clients
            while queue:
                outcome = await one_request(client, url, queue.pop(0), max_tokens)
                outcomes.append({**outcome, "opening": first})
                first = False

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        wall = time.perf_counter() - start
    return outcomes, wall


def summarise(outcomes: list[dict], wall: float, clients: int) -> dict:
    """Throughput over the summed wall time of every round; latencies over every request."""
    ok = [o for o in outcomes if o["ok"]]
    latencies = sorted(o["latency_s"] for o in ok)
    ttfts = sorted(o["ttft_s"] for o in ok)
    steady = sorted(o["ttft_s"] for o in ok if not o.get("opening"))
    tokens = sum(o["tokens"] for o in ok)

    def pct(values, q):
        return round(values[min(len(values) - 1, int(q * len(values)))], 3) if values else None

    return {"clients": clients, "requests": len(outcomes), "errors": len(outcomes) - len(ok),
            "wall_s": round(wall, 2), "completion_tokens": tokens, "tokens_per_s": round(tokens / wall, 2),
            "requests_per_s": round(len(ok) / wall, 3), "p50_latency_s": pct(latencies, 0.5),
            "p95_latency_s": pct(latencies, 0.95), "ttft_p50_s": pct(ttfts, 0.5), "ttft_p95_s": pct(ttfts, 0.95),
            "ttft_p50_after_opening_s": pct(steady, 0.5),
            "intervened": sum(bool(o.get("intervened")) for o in ok)}


async def flood(port: int, pid: int, n: int) -> dict:
    """`n` simultaneous short requests: the overflow must get 429 and the RSS must not grow with it."""
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    body = {"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 4, "temperature": 0}
    figures = {"rss_before_mb": round(rss_mb(pid), 1)}
    limits = httpx.Limits(max_connections=n + 4, max_keepalive_connections=n + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        for round_ in (1, 2):
            responses = await asyncio.gather(*(client.post(url, json=body) for _ in range(n)),
                                             return_exceptions=True)
            codes = [str(r.status_code) if not isinstance(r, Exception) else type(r).__name__ for r in responses]
            figures[f"round{round_}"] = {c: codes.count(c) for c in sorted(set(codes))}
            figures[f"rss_after_round{round_}_mb"] = round(rss_mb(pid), 1)
    return figures


class StaticBatchHF:
    """Plain HF `generate` in this process, greedy, static batches, left padded; a row's tokens
    count up to its EOS (the padding rows a batch keeps computing after theirs are its cost)."""

    def __init__(self, model_name: str):
        from safesignal.model import SafetyModel

        self.sm = SafetyModel.from_pretrained(model_name).merge_lora().eval()
        self.sm.base.set_attn_implementation("sdpa")

    def run(self, items: list[dict], batch: int, max_tokens: int) -> tuple[int, float]:
        sm, tok = self.sm, self.sm.tokenizer
        eos, tokens, start = tok.eos_token_id, 0, time.perf_counter()
        for i in range(0, len(items), batch):
            encoded = [sm.formatter.encode(item["messages"]).input_ids for item in items[i:i + batch]]
            width = max(map(len, encoded))
            ids = torch.tensor([[tok.pad_token_id] * (width - len(e)) + e for e in encoded])
            mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded])
            with torch.inference_mode():
                out = sm.base.generate(ids, attention_mask=mask, max_new_tokens=max_tokens, do_sample=False,
                                       pad_token_id=tok.pad_token_id)
            for row in out[:, width:].tolist():
                tokens += row.index(eos) if eos in row else len(row)
        return tokens, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-cls")
    parser.add_argument("--requests", type=int, default=48, help="requests per load level")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--clients", default="1,4,8,16")
    parser.add_argument("--harmful-share", type=float, default=0.33)
    parser.add_argument("--flood", type=int, default=120, help="simultaneous requests in the flood")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--prefill-budget", type=int, default=None, help="the server's prefill_token_budget")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds over the requests")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    items = workload(args.requests, args.harmful_share, args.seed)
    levels = [int(c) for c in args.clients.split(",")]
    # This VM's speed drifts by ±20% over minutes: every setting runs once per round on its
    # share of the requests, in an order rotated each round, so a slow spell hits all alike.
    parts = [items[r::args.rounds] for r in range(args.rounds)]
    started = time.perf_counter()
    tune_glibc_malloc()  # the servers tune their allocator; plain generate here gets the same
    static = StaticBatchHF(args.model)
    naive_port = args.port + 1
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "serve.yaml"
        config.write_text(f"model: {args.model}\nport: {args.port}\ndefault_temperature: 0.0\n"
                          f"max_batch_rows: 16\nmax_queued: 64\nlog_level: warning\n"
                          + (f"prefill_token_budget: {args.prefill_budget}\n" if args.prefill_budget else ""))
        server = start_server([sys.executable, "-m", "safesignal", "serve", "--config", str(config)], args.port,
                              Path(tmp) / "server.log")
        naive = start_server([sys.executable, str(HERE / "naive_hf_server.py"), "--model", args.model,
                              "--port", str(naive_port)], naive_port, Path(tmp) / "naive.log")
        try:
            for port in (args.port, naive_port):  # warm-up
                asyncio.run(load_outcomes(port, items[:2], 2, 8))
            static.run(items[:2], 2, 8)
            settings = [("safesignal", c) for c in levels] + [("naive_hf", 8), ("static_batch_hf", 8)]
            collected = {setting: ([], 0.0) for setting in settings}
            for r, part in enumerate(parts):
                for name, clients in settings[r % len(settings):] + settings[: r % len(settings)]:
                    if name == "static_batch_hf":
                        tokens, wall = static.run(part, clients, args.max_tokens)
                        outcomes = [{"ok": True, "tokens": tokens}]
                    else:
                        port = args.port if name == "safesignal" else naive_port
                        outcomes, wall = asyncio.run(load_outcomes(port, part, clients, args.max_tokens))
                    done, spent = collected[(name, clients)]
                    collected[(name, clients)] = (done + outcomes, spent + wall)
                    print(json.dumps({"round": r, "setting": name, "clients": clients, "wall_s": round(wall, 2)}),
                          flush=True)
            metrics = httpx.get(f"http://127.0.0.1:{args.port}/metrics").json()
            flooded = asyncio.run(flood(args.port, server.pid, args.flood))
            print(json.dumps({"flood": flooded}), flush=True)
        finally:
            stop_server(server)
            stop_server(naive)

    safesignal = {c: summarise(*collected[("safesignal", c)], c) for c in levels}
    naive_8 = summarise(*collected[("naive_hf", 8)], 8)
    static_outcomes, static_wall = collected[("static_batch_hf", 8)]
    static_tokens = sum(o["tokens"] for o in static_outcomes)
    static = {"batch": 8, "requests": len(items), "wall_s": round(static_wall, 2), "completion_tokens": static_tokens,
              "tokens_per_s": round(static_tokens / static_wall, 2)}
    eight, one = safesignal.get(8), safesignal.get(1)
    summary = {
        "benchmark": "serve_load", "model": args.model, "max_tokens": args.max_tokens, "requests": args.requests,
        "harmful_share": args.harmful_share, "rounds": args.rounds, "machine": machine(), "cpu_count": os.cpu_count(),
        "safesignal": {str(k): v for k, v in safesignal.items()}, "naive_hf_8_clients": naive_8,
        "static_batch_hf_8": static, "flood": flooded,
        "max_requests_in_forward": metrics["max_requests_in_forward"],
        "shared_step_forwards": metrics["shared_step_forwards"],
        "concurrent_vs_sequential_throughput": round(eight["tokens_per_s"] / one["tokens_per_s"], 3)
        if eight and one else None,
        "vs_naive_hf_throughput": round(eight["tokens_per_s"] / naive_8["tokens_per_s"], 3) if eight else None,
        "vs_static_batch_hf_throughput": round(eight["tokens_per_s"] / static["tokens_per_s"], 3) if eight else None,
        "p95_latency_s": eight["p95_latency_s"] if eight else None,
        "ttft_p50_s": eight["ttft_p50_s"] if eight else None,
        "ttft_8_vs_1": round(eight["ttft_p50_s"] / one["ttft_p50_s"], 3) if eight and one else None,
        # the same without each client's first request (all eight arrive at once at the start)
        "ttft_8_vs_1_after_opening": round(eight["ttft_p50_after_opening_s"] / one["ttft_p50_s"], 3)
        if eight and one else None,
        "errors": sum(v["errors"] for v in safesignal.values()) + naive_8["errors"],
        "total_wall_s": round(time.perf_counter() - started, 1),
    }
    write_record(summary, args.out)


if __name__ == "__main__":
    main()
