"""Write the base model's own greedy answers to the benign training prompts.

Plain SFT on someone else's answers (ShareGPT's are GPT-3.5's) would change what the small
model says to benign prompts and blur the comparison between recipes; answers the base model
writes itself keep benign behaviour where it was (self-distillation), so the three trained
models differ only in how they handle malicious prompts.

Incremental (safesignal.data.base_answers): answers already committed are kept, only benign
prompts without one are generated. The prompts are those of the default data build and of
each `--config` (DataBuildConfig YAML; default also the v1 build, recipes/smollm2/data_v1.yaml,
so it stays reproducible). Run after changing the prompt selection; commit the output:
    python scripts/distill_benign_responses.py
updates src/safesignal/resources/benign_responses.jsonl and benign_responses.meta.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from safesignal.config import load_config
from safesignal.data.base_answers import GenerationSettings, update_answers
from safesignal.data.build import RESPONSES_RESOURCE, DataBuildConfig, select_pools
from safesignal.demo import recipe_path

RESOURCES = Path(__file__).resolve().parents[1] / "src" / "safesignal" / "resources"


def build_configs(paths: list[str] | None) -> list[DataBuildConfig]:
    return [DataBuildConfig()] + [load_config(DataBuildConfig, p) for p in (paths or [str(recipe_path("data_v1"))])]


def generation_parser(doc: str, side: str, out: Path) -> argparse.ArgumentParser:
    """The options both base-answer scripts share."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", action="append", help=f"DataBuildConfig YAML whose {side} prompts need answers (repeatable)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repetition-penalty", type=float, default=1.1)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", type=Path, default=out)
    return parser


def main() -> int:
    args = generation_parser(__doc__, "benign", RESOURCES / RESPONSES_RESOURCE).parse_args()

    prompts = {b["prompt"] for config in build_configs(args.config)
               for split in select_pools(config).benign.values() for b in split}
    meta = update_answers(args.out, sorted(prompts), GenerationSettings(args.max_new_tokens, args.repetition_penalty, args.batch_size),
                          what="greedy answers of the base model to the benign training/validation prompts of `safesignal data build`",
                          command=" ".join(["python scripts/distill_benign_responses.py", *sys.argv[1:]]))
    print(f"{args.out}: {meta['responses']} responses ({meta['runs'][-1]['responses_kept']} new)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
