"""`safesignal <command>`: every command takes --config YAML plus --key value overrides."""

from __future__ import annotations

import argparse
import json
import sys


def _cmd_train(args, overrides: list[str]) -> int:
    from .config import load_config
    from .train import SafetyTrainingConfig, train

    config = load_config(SafetyTrainingConfig, args.config, overrides)
    final_dir = train(config, resume=args.resume)
    print(f"safesignal train: final model written to {final_dir}")
    return 0


def _cmd_classify(args, overrides: list[str]) -> int:
    if overrides:
        raise SystemExit(f"classify: unexpected arguments {overrides}")
    from .model import SafetyModel

    model = SafetyModel.from_pretrained(args.model)
    prompts = args.prompt or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    probabilities = model.classify_batch([[{"role": "user", "content": p}] for p in prompts])
    for prompt, p in zip(prompts, probabilities):
        label = "malicious" if p > args.threshold else "benign"
        print(json.dumps({"prompt": prompt[:80], "p_malicious": round(p, 4), "label": label}))
    return 0


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
    train.set_defaults(func=_cmd_train)

    classify = sub.add_parser("classify", help="print P(malicious) for prompts (arguments or stdin lines)")
    classify.add_argument("--model", required=True, help="checkpoint directory")
    classify.add_argument("--threshold", type=float, default=0.5)
    classify.add_argument("prompt", nargs="*")
    classify.set_defaults(func=_cmd_classify)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, overrides = parser.parse_known_args(argv)
    try:
        return args.func(args, overrides)
    except (FileNotFoundError, ValueError) as err:
        print(f"safesignal {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
