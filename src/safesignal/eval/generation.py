"""Attack cases through a model: strategic decoding, or plain `generate` for baselines.

Both paths take the same `AttackCase`s (messages, optional prefill, decoding settings) and
return the same `CaseRecord`s, so every model is judged on the same footing. Plain decoding is
transformers' `generate` on the wrapped LM with no [CLS]; rows that sample choose their token
with safesignal's per-row `Sampler` (its own seeded generator, exactly as strategic decoding
does), so a sampled row gives the same tokens whatever batch it is in, on either path.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from ..attacks import AttackCase
from ..decoding import Request
from ..decoding.engine import stop_token_ids
from ..decoding.policy import SafetyPolicy
from ..decoding.prompt_embeddings import check_prompt_embeddings, embeds_with
from ..decoding.sampler import Sampler, Sampling

PROMPT_TOO_LONG = "prompt too long"


@dataclass
class CaseRecord:
    """One case's output as a cell stores it (full text: cells are data files, never logs)."""

    attack: str
    variant: str
    behaviour_id: str
    prompt: str  # the last user message (what the judge is told the request was)
    response: str  # what the user saw after their own text: never the prefill
    prefill: str = ""
    intervened: bool = False
    tokens_before_intervention: int | None = None
    injected: str | None = None
    self_refusals: int = 0
    first_check_malicious: bool | None = None
    finish_reason: str = ""
    new_tokens: int = 0
    events: list[list] = field(default_factory=list)  # [step, P(malicious), label, outcome]
    error: str | None = None

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict) -> "CaseRecord":
        return cls(**obj)


def _last_user(messages: list[dict]) -> str:
    users = [m["content"] for m in messages if m.get("role") == "user"]
    return users[-1] if users else ""


def _sampling(case: AttackCase) -> Sampling:
    return Sampling(**(case.decoding or {}))


def prompt_lengths(sm, cases: list[AttackCase]) -> list[int]:
    return [len(sm.formatter.encode(c.messages, c.prefill or "", add_eos=False).input_ids) for c in cases]


def too_long(case: AttackCase, max_prompt_tokens: int) -> CaseRecord:
    return CaseRecord(case.attack, case.variant, case.behaviour_id, _last_user(case.messages), "",
                      prefill=case.prefill or "", error=f"{PROMPT_TOO_LONG} (> {max_prompt_tokens} tokens)")


@torch.inference_mode()
def strategic_records(sm, cases: list[AttackCase], policy: SafetyPolicy, max_new_tokens: int) -> list[CaseRecord]:
    """One batch of cases through the strategic decoder."""
    requests = [Request(c.messages, prefill=c.prefill, policy=policy, sampling=_sampling(c),
                        max_new_tokens=max_new_tokens, prompt_embeddings=c.prompt_embeddings) for c in cases]
    records = []
    for case, r in zip(cases, sm.generate_requests(requests)):
        text = r.text[len(r.prefill):] if r.prefill and r.text.startswith(r.prefill) else r.text
        records.append(CaseRecord(
            case.attack, case.variant, case.behaviour_id, _last_user(case.messages), text,
            prefill=case.prefill or "", intervened=r.intervened,
            tokens_before_intervention=r.tokens_before_intervention,
            injected=policy.refusal_prefix if r.intervened else None,
            self_refusals=len(r.self_refusals),
            first_check_malicious=(r.events[0].label == "malicious") if r.events else None,
            finish_reason=r.finish_reason, new_tokens=len(r.token_ids),
            events=[[e.step, round(float(e.probability), 4), e.label, e.outcome] for e in r.events],
            error=r.error))
    return records


def left_padded(sm, encoded: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """(input ids, attention mask, pad count per row) of token lists padded on the left, as
    transformers' `generate` expects."""
    width = max(len(e) for e in encoded)
    pads = [width - len(e) for e in encoded]
    ids = torch.tensor([[sm.tokenizer.pad_token_id] * p + e for p, e in zip(pads, encoded)], device=sm.device)
    mask = torch.tensor([[0] * p + [1] * len(e) for p, e in zip(pads, encoded)], device=sm.device)
    return ids, mask, pads


class PerRowSampling(LogitsProcessor):
    """Each row picks its token with its own `Sampler`; the scores become a one-hot so that
    `generate`'s greedy selection returns exactly that choice."""

    def __init__(self, samplers: list[Sampler], pad_lengths: list[int]):
        self.samplers, self.pads = samplers, pad_lengths

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        chosen = torch.full_like(scores, float("-inf"))
        for row, sampler in enumerate(self.samplers):
            seen = input_ids[row, self.pads[row]:].tolist()
            chosen[row, sampler.choose(scores[row].float(), seen)] = 0.0
        return chosen


@torch.inference_mode()
def plain_records(sm, cases: list[AttackCase], max_new_tokens: int) -> list[CaseRecord]:
    """One batch of cases through transformers' `generate` on the LM alone (no [CLS])."""
    tok = sm.tokenizer
    examples = [sm.formatter.encode(c.messages, c.prefill or "", add_eos=False) for c in cases]
    check_prompt_embeddings(sm, ((c.prompt_embeddings, e, f"case {c.attack}/{c.behaviour_id}")
                                 for c, e in zip(cases, examples)))
    ids, mask, pads = left_padded(sm, [e.input_ids for e in examples])
    width = ids.shape[1]
    samplings = [_sampling(c) for c in cases]
    processors = None
    # Greedy rows need no processor (argmax is generate's own choice): only sampled or
    # penalised batches pay for the per-row loop.
    if any(s.do_sample or s.repetition_penalty != 1.0 for s in samplings):
        processors = LogitsProcessorList([PerRowSampling([Sampler(s, sm.device) for s in samplings], pads)])
    # an embedding attack's vectors replace its placeholder tokens' embeddings in the prompt pass
    embeds = embeds_with(sm, ids, [(i, pads[i], c.prompt_embeddings) for i, c in enumerate(cases)
                                   if c.prompt_embeddings is not None])
    extra = {} if embeds is None else {"inputs_embeds": embeds}
    out = sm.base.generate(ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                           logits_processor=processors, pad_token_id=tok.pad_token_id, **extra)
    eos = stop_token_ids(sm) | {tok.pad_token_id}  # generate pads a finished row
    records = []
    for case, row in zip(cases, out[:, width:].tolist()):
        length = next((i for i, t in enumerate(row) if t in eos), len(row))
        records.append(CaseRecord(
            case.attack, case.variant, case.behaviour_id, _last_user(case.messages),
            tok.decode(row[:length], skip_special_tokens=True), prefill=case.prefill or "",
            finish_reason="eos" if length < len(row) else "length", new_tokens=length))
    return records


def length_batches(sm, cases: list[AttackCase], batch_size: int) -> tuple[list[list[int]], list[int]]:
    """Case indices in batches of similar prompt length (less padding), and the prompt lengths.
    The cut depends only on the cases, so a resumed run rebuilds the same batches."""
    lengths = prompt_lengths(sm, cases)
    order = sorted(range(len(cases)), key=lambda i: (lengths[i], i))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)], lengths


def run_batch(sm, cases: list[AttackCase], lengths: list[int], decoding: str, policy: SafetyPolicy,
              max_new_tokens: int) -> list[CaseRecord]:
    """One batch on either path; a case whose prompt is over the policy's max_prompt_tokens is
    recorded as skipped instead of failing the batch."""
    fits = [c for c, n in zip(cases, lengths) if n <= policy.max_prompt_tokens]
    made = iter(([] if not fits else strategic_records(sm, fits, policy, max_new_tokens) if decoding == "strategic"
                 else plain_records(sm, fits, max_new_tokens)))
    return [next(made) if n <= policy.max_prompt_tokens else too_long(c, policy.max_prompt_tokens)
            for c, n in zip(cases, lengths)]


def run_cases(sm, cases: list[AttackCase], decoding: str, policy: SafetyPolicy, *, max_new_tokens: int,
              batch_size: int, desc: str = "generate", progress: bool = True) -> list[CaseRecord]:
    """Every case, batched by prompt length, records back in case order (no storage: the demo;
    the grid stores each batch, store.py)."""
    from tqdm import tqdm

    batches, lengths = length_batches(sm, cases, batch_size)
    records: list[CaseRecord | None] = [None] * len(cases)
    for batch in tqdm(batches, desc=desc, unit="batch", leave=False, disable=not progress):
        for i, r in zip(batch, run_batch(sm, [cases[i] for i in batch], [lengths[i] for i in batch], decoding,
                                         policy, max_new_tokens)):
            records[i] = r
    return records


def user_cases(kind: str, records: list[dict], with_prefill: bool = False) -> list[AttackCase]:
    """A case per record: its prompt as the only user turn (benign sets, the demo's requests).
    The behaviour id is the record's `id`, else `<kind>:<position>`; `with_prefill` forces the
    record's `meta.prefill`."""
    return [AttackCase([{"role": "user", "content": r["prompt"]}], kind, kind, r.get("id") or f"{kind}:{i}",
                       prefill=r["meta"]["prefill"] if with_prefill else None) for i, r in enumerate(records)]
