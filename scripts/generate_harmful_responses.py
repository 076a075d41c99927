"""Write the unaligned base model's greedy answers to the malicious training prompts.

Why (issue "Embedded default v2"): harmful answers are scarce (about 20 usable pyrit pairs),
and the recovery examples and slot-B window labels need harmful text the model itself could
write. The base model (SmolLM2-135M-Instruct, barely aligned) complies with most requests;
prefixes of its answers become "harmful prefix, then refusal" examples whose prefix windows
are labelled malicious (DESIGN.md §SFT mask). LM loss never falls on these prefixes.

Only training and validation prompts are answered (the build's malicious pools, original
prompts; surface forms reuse their original's answer): evaluation prompts never pass through
here. Answers that refuse (any refusal marker of the keyword judge) are not kept, since a
refusal is no harmful prefix. Harmful text stays in the data file; this prints counts only.
Incremental like the benign distillation:
    python scripts/generate_harmful_responses.py
updates src/safesignal/resources/harmful_responses.jsonl and harmful_responses.meta.json.
"""

from __future__ import annotations

import sys

from distill_benign_responses import RESOURCES, build_configs, generation_parser

from safesignal.data.base_answers import GenerationSettings, update_answers
from safesignal.data.build import HARMFUL_RESOURCE, harmful_prompts, select_pools
from safesignal.judges.keyword import first_refusal


def main() -> int:
    args = generation_parser(__doc__, "malicious", RESOURCES / HARMFUL_RESOURCE).parse_args()

    configs = [c for c in build_configs(args.config) if c.base_answer_prefixes > 0]
    prompts = sorted({p for config in configs for p in harmful_prompts(select_pools(config))})
    meta = update_answers(args.out, prompts, GenerationSettings(args.max_new_tokens, args.repetition_penalty, args.batch_size),
                          what="greedy answers of the unaligned base model to the malicious training/validation prompts "
                               "of `safesignal data build` (refusals dropped); harmful text, training use only",
                          command=" ".join(["python scripts/generate_harmful_responses.py", *sys.argv[1:]]),
                          keep=lambda response: first_refusal(response) is None)
    run = meta["runs"][-1]
    print(f"{args.out}: {meta['responses']} answers; this run generated {run['prompts_generated']}, "
          f"kept {run['responses_kept']} (the rest refused)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
