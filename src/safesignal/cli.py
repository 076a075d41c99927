"""`safesignal <command>`: every command takes --config YAML plus --key value overrides."""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from typing import Iterable, Iterator

from .registry import DEFAULT_MODEL

DEFAULT_BATCH_SIZE = 16


def _cmd_train(args, overrides: list[str]) -> int:
    from .config import load_config
    from .training import SafetyTrainingConfig, train

    config = load_config(SafetyTrainingConfig, args.config, overrides)
    if args.dry_run:
        from .training.sizing import dry_run, format_dry_run

        run = dry_run(config, num_gpus=args.num_gpus, gpu_memory_gb=args.gpu_memory_gb)
        print(json.dumps(run.as_dict(), indent=1) if args.json else format_dry_run(run))
        return 0
    final_dir = train(config, resume=args.resume)
    if config.should_save:  # one line from a distributed launch, not one per rank
        print(f"safesignal train: final model written to {final_dir}")
    from accelerate import PartialState

    PartialState().destroy_process_group()  # a distributed launch leaves its group in order (no-op alone)
    return 0


def _cmd_classify(args, overrides: list[str]) -> int:
    if overrides:
        raise SystemExit(f"classify: unexpected arguments {overrides}")
    from .model import SafetyModel

    model = SafetyModel.from_pretrained(args.model)
    threshold = model.default_policy().threshold if args.threshold is None else args.threshold
    for prompts in _batches(_prompts(args), args.batch_size):
        probabilities = model.classify_batch([[{"role": "user", "content": p}] for p in prompts])
        for prompt, p in zip(prompts, probabilities):
            label = "malicious" if p > threshold else "benign"
            print(json.dumps({"prompt": prompt[:80], "p_malicious": round(p, 4), "label": label}), flush=True)
    return 0


def _prompts(args) -> Iterator[str]:
    """The prompts given as arguments, else one per non-blank stdin line, read lazily."""
    if args.prompt:
        return iter(args.prompt)
    return (line.rstrip("\n") for line in sys.stdin if line.strip())


def _batches(items: Iterable, size: int) -> Iterator[list]:
    """Consecutive lists of at most `size` items, so a long input never becomes one batch."""
    iterator = iter(items)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _cmd_data(args, overrides: list[str]) -> int:
    from .config import load_config
    from .data.build import DataBuildConfig, build, format_summary

    if args.action == "prepare":
        from .data.prepare import prepare
        from .data.prepare_config import load_prepare_config

        config = load_prepare_config(args.config, overrides)
        summary = prepare(config)
    else:
        config = load_config(DataBuildConfig, args.config, overrides)
        summary = build(config)
    print(format_summary(summary))
    print(f"safesignal data: wrote {config.resolved_out_dir()} (summary.json beside the JSONL files)")
    return 0


def _cmd_demo(args, overrides: list[str]) -> int:
    from .config import load_config
    from .demo import DemoConfig, print_report, run_demo

    config = load_config(DemoConfig, args.config, overrides + (["--retrain", "true"] if args.retrain else []))
    print_report(run_demo(config, log=lambda message: print(message, file=sys.stderr)))
    return 0


def _cmd_eval(args, overrides: list[str]) -> int:
    from .eval.config import load_eval_config, select_models
    from .eval.grid import run_eval

    config = load_eval_config(args.config, overrides + (["--out", args.out] if args.out else []))
    selection = ["--models", args.models] if args.models else []
    if args.models:
        config = select_models(config, [name for name in args.models.split(",") if name])
    if args.plan:
        from .eval.grid import plan_eval

        rows = plan_eval(config)
        width = max(len(f"{r['entry']} {r['key']}") for r in rows)
        for r in rows:
            print(f"{r['entry'] + ' ' + r['key']:<{width}}  {r['cases']:>7} cases  {r['decoding']:<9}"
                  f"{'  started' if r['started'] else ''}")
        total = sum(r["cases"] for r in rows)
        todo = sum(r["cases"] for r in rows if not r["started"])
        print(f"safesignal eval --plan: {len(rows)} cells, {total} cases ({todo} in cells not started), "
              f"at most {config.max_new_tokens} new tokens each; nothing was run")
        return 0
    command = " ".join(["safesignal eval", "--config", args.config] + (["--out", args.out] if args.out else [])
                       + selection + overrides)
    results = run_eval(config, command=command, log=lambda message: print(message, file=sys.stderr))
    if int(os.environ.get("RANK", "0")) == 0:  # one line from a sharded launch, not one per process
        print(f"safesignal eval: wrote {results['_path']} ({len(results['models'])} entries, "
              f"{results['wall_seconds']:.0f} s)")
    return 0


def _cmd_finetune(args, overrides: list[str]) -> int:
    """`safesignal attack finetune`: train attacked checkpoints, then one eval grid over them."""
    import dataclasses

    from .eval.config import check_model_names
    from .eval.finetune import load_finetune_config, run_finetune_attack, with_finetune_overrides

    config = with_finetune_overrides(load_finetune_config(args.config), overrides)
    if args.out:
        config = dataclasses.replace(config, out=args.out)
    if args.models:
        names = [n for n in args.models.split(",") if n]
        check_model_names(config.models, names, "the attack")
        config = dataclasses.replace(config, models=[m for m in config.models if m.name in names])
    command = " ".join(["safesignal attack finetune"] + (["--config", args.config] if args.config else [])
                       + (["--out", args.out] if args.out else []) + (["--models", args.models] if args.models else [])
                       + overrides)
    results = run_finetune_attack(config, command=command, log=lambda message: print(message, file=sys.stderr))
    for entry, threats in results["finetune"]["curves"].items():
        for threat, curve in threats.items():
            points = ", ".join(f"{p['steps']}: {_rate(p.get('direct'))}" for p in curve["points"])
            print(f"{entry} {threat}: direct ASR by steps {points}")
    print(f"safesignal attack: wrote {results['_path']} ({results['wall_seconds']:.0f} s)")
    return 0


def _rate(figure: dict | None) -> str:
    value = (figure or {}).get("asr_leak")
    return "n/a" if value is None else f"{value:.0%}"


def _cmd_attack(args, overrides: list[str]) -> int:
    from .eval.config import attack_grid, load_eval_config, select_models, with_attack_knobs, with_overrides
    from .eval.grid import run_eval

    if args.name == "finetune":
        return _cmd_finetune(args, overrides)

    config = load_eval_config(args.config) if args.config else attack_grid(args.name)
    config, rest = with_attack_knobs(config, args.name, overrides)
    config = with_overrides(config, rest + (["--out", args.out] if args.out else []))
    if args.models:
        config = select_models(config, [name for name in args.models.split(",") if name])
    command = " ".join(["safesignal attack", args.name] + (["--config", args.config] if args.config else [])
                       + (["--out", args.out] if args.out else []) + (["--models", args.models] if args.models else [])
                       + overrides)
    results = run_eval(config, command=command, log=lambda message: print(message, file=sys.stderr))
    for name, entry in results["models"].items():
        attack = entry["attacks"].get(args.name) or {}
        search = attack.get("search") or {}
        line = f"{name}: ASR {attack.get('asr_leak', float('nan')):.1%} (leak-aware, n={attack.get('n')})"
        if search.get("mean_loss") is not None:
            line += f"; search loss {search['mean_loss']:.3f}"
        if search.get("mean_max_cls_probability") is not None:  # None: decoded plainly, no checks
            line += f", max P(malicious) {search['mean_max_cls_probability']:.3f}"
        print(line)
    print(f"safesignal attack: wrote {results['_path']} ({results['wall_seconds']:.0f} s)")
    return 0


def _cmd_audit(args, overrides: list[str]) -> int:
    if overrides:
        raise ValueError(f"audit: unexpected arguments {overrides}")
    import json

    from .io import finite_json
    from .judges.audit import audit_judges, audit_report, draw_sample

    if args.action == "sample":
        if not args.run:
            raise ValueError("audit sample: --run DIR (an eval output directory) is required")
        entries = [e.strip() for e in args.entries.split(",") if e.strip()] if args.entries else None
        info = draw_sample(args.run, args.dir, n=args.n, seed=args.seed, entries=entries)
        print(f"safesignal audit: wrote {info['n']} outputs from {info['strata']} strata to {args.dir}; label them "
              "against docs/audit_rubric.md into labels.jsonl before running `safesignal audit report`")
        return 0
    from transformers import AutoTokenizer

    from .registry import shipped_checkpoint

    try:
        source = shipped_checkpoint(args.tokenizer)
    except (FileNotFoundError, KeyError, ValueError):
        source = args.tokenizer
    report = audit_report(args.dir, audit_judges(AutoTokenizer.from_pretrained(str(source))))
    print(json.dumps(finite_json(report), indent=2))
    return 0


def _cmd_report(args, overrides: list[str]) -> int:
    if overrides:
        raise SystemExit(f"report: unexpected arguments {overrides}")
    from pathlib import Path

    from .report import load_results, write_report

    results_path = Path(args.results)
    paths = write_report(load_results(results_path), args.out or results_path.parent, source=str(results_path))
    print(f"safesignal report: wrote {paths[0]} and {paths[1]}")
    return 0


def _cmd_merge(args, overrides: list[str]) -> int:
    if overrides:
        raise SystemExit(f"merge: unexpected arguments {overrides}")
    from .io import atomic_write_json
    from .report.merge import merge_results

    merged = merge_results(args.results, command=" ".join(["safesignal merge", *args.results, "--out", args.out]))
    atomic_write_json(args.out, merged)
    attacks = sum(len(entry["attacks"]) for entry in merged["models"].values())
    print(f"safesignal merge: wrote {args.out}: {len(merged['models'])} entries, {attacks} attack figures from "
          f"{len(args.results)} files; {len(merged['merge']['shadowed'])} figures shadowed by a file listed earlier, "
          f"{len(merged['merge']['renamed'])} attacks renamed for another behaviour pool or configuration")
    return 0


def _load_policy(args, overrides: list[str], model=None):
    """SafetyPolicy from --config YAML plus --field value overrides (any SafetyPolicy field),
    over the values calibrated for `model` (its default policy). Called once without the model
    too, so that a bad policy fails before the weights load."""
    from .config import load_config
    from .decoding.policy import SafetyPolicy

    return load_config(SafetyPolicy, args.config, overrides, defaults=model.config.calibration if model else None)


def _sampling(args) -> dict:
    return {
        "do_sample": args.temperature > 0,
        "temperature": args.temperature if args.temperature > 0 else 1.0,
        "top_p": args.top_p,
        "top_k": args.top_k,
        "repetition_penalty": args.repetition_penalty,
        "seed": args.seed,
    }


def _event_summary(event) -> dict:
    return {"step": event.step, "p": round(event.probability, 4), "label": event.label,
            "window": event.window, "rule": event.rule}


def _cmd_generate(args, overrides: list[str]) -> int:
    from .model import SafetyModel

    _load_policy(args, overrides)
    model = SafetyModel.from_pretrained(args.model)
    policy = _load_policy(args, overrides, model)
    sampling, done = _sampling(args), 0
    for prompts in _batches(_prompts(args), args.batch_size):
        # Line k of the input samples with seed + k, whatever the batch it lands in, so the
        # output does not depend on --batch_size and duplicate lines sample independently.
        if args.seed is not None:
            sampling["seed"] = [args.seed + done + k for k in range(len(prompts))]
        done += len(prompts)
        results = model.generate_batch(
            prompts,
            policy=policy,
            max_new_tokens=args.max_new_tokens,
            prefills=[args.prefill] * len(prompts),
            **sampling,
        )
        for prompt, r in zip(prompts, results):
            record = {
                "prompt": prompt[:80],
                "text": r.text,
                "intervened": r.intervened,
                "tokens_before_intervention": r.tokens_before_intervention,
                "finish_reason": r.finish_reason,
                "events": [_event_summary(e) for e in r.events],
            }
            if r.error:
                record["error"] = r.error
            print(json.dumps(record), flush=True)
    return 0


def _cmd_chat(args, overrides: list[str]) -> int:
    """Interactive chat with a live safety indicator on stderr (one line per check)."""
    from .model import SafetyModel

    _load_policy(args, overrides)
    model = SafetyModel.from_pretrained(args.model)
    policy = _load_policy(args, overrides, model)
    history: list[dict] = []
    if args.system:
        history.append({"role": "system", "content": args.system})
    print("safesignal chat — empty line or Ctrl-D to quit", file=sys.stderr)
    for line in sys.stdin:
        user = line.strip()
        if not user:
            break
        history.append({"role": "user", "content": user})
        print("assistant> ", end="", flush=True)
        result = None
        for delta in model.stream(history, policy=policy, max_new_tokens=args.max_new_tokens, **_sampling(args)):
            for event in delta.events:
                mark = "!!" if event.label == "malicious" else "ok"
                print(f"\n  [{mark} p={event.probability:.2f} step {event.step} {event.rule}]", file=sys.stderr, flush=True)
            print(delta.text, end="", flush=True)
            result = delta.result or result
        print()
        if result.intervened:
            print(f"  [refusal injected after {result.tokens_before_intervention} generated tokens]", file=sys.stderr)
        history.append({"role": "assistant", "content": result.text})
    return 0


def _cmd_serve(args, overrides: list[str]) -> int:
    from .serve import load_serve_config, serve

    if overrides:
        raise ValueError(f"unrecognised arguments {overrides} (server settings go in --config YAML)")
    config = load_serve_config(args.config, model=args.model, host=args.host, port=args.port, api_key=args.api_key,
                               served_model_name=args.served_model_name)
    serve(config)
    return 0


def _add_model_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"checkpoint directory or shipped model name (default: {DEFAULT_MODEL})")


def _add_batch_size_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch_size", type=_positive_int, default=DEFAULT_BATCH_SIZE,
                        help=f"prompts per batched forward (default: {DEFAULT_BATCH_SIZE}); input is read batch by batch")


def _add_decoding_arguments(parser: argparse.ArgumentParser) -> None:
    _add_model_argument(parser)
    parser.add_argument("--config", help="SafetyPolicy YAML; any policy field can also be given as --field value")
    parser.add_argument("--max_new_tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--top_p", type=float, default=1.0)
    parser.add_argument("--top_k", type=int, default=0)
    parser.add_argument("--repetition_penalty", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=None)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="safesignal", description=__doc__, allow_abbrev=False)
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a model (joint [CLS] + LM, or plain SFT)")
    train.add_argument("--config", required=True, help="YAML recipe, e.g. configs/tiny.yaml")
    train.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=False,
        help="resume from the newest checkpoint in output_dir (or from the given checkpoint)",
    )
    train.add_argument("--dry-run", action="store_true",
                       help="validate the config, size the job on the meta device (no weights) and exit")
    train.add_argument("--num_gpus", type=_positive_int, default=1, help="--dry-run: GPUs to size the job for")
    train.add_argument("--gpu_memory_gb", type=float, default=80.0, help="--dry-run: memory of one GPU")
    train.add_argument("--json", action="store_true", help="--dry-run: print the figures as JSON")
    train.set_defaults(func=_cmd_train)

    data = sub.add_parser("data", help="build the embedded default's train / validation / evaluation JSONL, or "
                                       "prepare train / validation from your own files")
    data.add_argument("action", choices=["build", "prepare"],
                      help="build: the embedded default from the data packages; prepare: a recipe naming your "
                           "files (e.g. configs/paper/data.yaml)")
    data.add_argument("--config", default=None, help="YAML with DataBuildConfig fields (build, optional) or a "
                                                     "DataPrepareConfig recipe (prepare)")
    data.set_defaults(func=_cmd_data)

    demo = sub.add_parser("demo", help="build data, train or reuse the embedded models, print the comparison table")
    demo.add_argument("--retrain", action="store_true", help="train the three models even if trained ones exist")
    demo.add_argument("--config", default=None, help="YAML with DemoConfig fields (optional)")
    demo.set_defaults(func=_cmd_demo)

    evaluate = sub.add_parser("eval", help="the models x policies x attacks grid -> results.json (resumable)")
    evaluate.add_argument("--config", required=True, help="grid YAML, e.g. configs/eval/tiny.yaml")
    evaluate.add_argument("--out", default=None, help="output directory (default: SAFESIGNAL_HOME/eval/<name>)")
    evaluate.add_argument("--models", default=None,
                          help="comma-separated model names: run only these entries of the grid (default: all)")
    evaluate.add_argument("--plan", action="store_true",
                          help="list every cell, its number of cases and whether it is started; run nothing")
    evaluate.set_defaults(func=_cmd_eval)

    attack = sub.add_parser("attack", help="one attack against the embedded models (or a grid YAML) -> results.json")
    attack.add_argument("name", help="the attack, e.g. gcg, gcg_adaptive (any registered attack), or finetune "
                        "(fine-tuning attacks under three threat models)")
    attack.add_argument("--config", default=None, help="a grid YAML that runs this attack, or for finetune a "
                        "fine-tuning-attack YAML (configs/attacks/finetune.yaml) (default: 20 HarmBench "
                                                       "test behaviours on cls, its weights decoded plainly, and sft)")
    attack.add_argument("--out", default=None, help="output directory (default: SAFESIGNAL_HOME/eval/attack_<name>)")
    attack.add_argument("--models", default=None, help="comma-separated model names of the grid to run")
    attack.set_defaults(func=_cmd_attack)

    audit = sub.add_parser("audit", help="draw the blind audit sample from an eval run, or score judges on its labels")
    audit.add_argument("action", choices=["sample", "report"])
    audit.add_argument("--dir", default="data/audit", help="audit folder (sample.jsonl, key.jsonl, labels.jsonl)")
    audit.add_argument("--run", default=None, help="eval output directory to sample from (sample)")
    audit.add_argument("--n", type=int, default=160)
    audit.add_argument("--seed", type=int, default=0)
    audit.add_argument("--entries", default=None,
                       help="comma-separated grid entries to sample (default: all), e.g. base,sft,qi_aug,cls")
    audit.add_argument("--tokenizer", default="smollm2-cls",
                       help="shipped model name or tokenizer dir: leak-aware counts its tokens (report)")
    audit.set_defaults(func=_cmd_audit)

    report = sub.add_parser("report", help="report.html and report.md (tables and plots) from a results.json")
    report.add_argument("results", help="results.json written by `safesignal eval` or `safesignal demo`")
    report.add_argument("--out", default=None, help="output folder (default: the results file's folder)")
    report.set_defaults(func=_cmd_report)

    merge = sub.add_parser("merge", help="one results.json from several runs of the same models (listed first wins)")
    merge.add_argument("results", nargs="+", help="results.json files; an attack measured twice keeps the first")
    merge.add_argument("--out", required=True, help="the merged results.json")
    merge.set_defaults(func=_cmd_merge)

    classify = sub.add_parser("classify", help="print P(malicious) for prompts (arguments or stdin lines)")
    _add_model_argument(classify)
    _add_batch_size_argument(classify)
    classify.add_argument("--threshold", type=float, default=None,
                          help="default: the model's calibrated threshold (safesignal.json), else 0.5")
    classify.add_argument("prompt", nargs="*")
    classify.set_defaults(func=_cmd_classify)

    generate = sub.add_parser("generate", help="strategic decoding; one JSON line per prompt (--prompt or stdin lines)")
    _add_decoding_arguments(generate)
    _add_batch_size_argument(generate)
    generate.add_argument("--prefill", default=None, help="assistant text placed before the model's answer")
    generate.add_argument("--prompt", action="append", help="a prompt (repeatable); default: one per stdin line")
    generate.set_defaults(func=_cmd_generate)

    chat = sub.add_parser("chat", help="interactive chat with a live safety indicator")
    _add_decoding_arguments(chat)
    chat.add_argument("--system", default=None, help="system prompt")
    chat.set_defaults(func=_cmd_chat)

    serve = sub.add_parser("serve", help="OpenAI-compatible server (/v1/chat/completions) with continuous batching "
                                         "and safety metadata")
    serve.add_argument("--model", default=None, help=f"checkpoint directory or shipped model name (default: "
                                                     f"{DEFAULT_MODEL})")
    serve.add_argument("--host", default=None, help="address to bind (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="default: 8000")
    serve.add_argument("--config", default=None, help="YAML with ServeConfig fields, e.g. configs/serve.yaml")
    serve.add_argument("--api-key", dest="api_key", default=None,
                       help="require 'Authorization: Bearer KEY' (default: $SAFESIGNAL_API_KEY, else none)")
    serve.add_argument("--served-model-name", dest="served_model_name", default=None,
                       help="the model id clients send (default: --model)")
    serve.set_defaults(func=_cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, overrides = parser.parse_known_args(argv)
    try:
        return args.func(args, overrides)
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"safesignal {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
