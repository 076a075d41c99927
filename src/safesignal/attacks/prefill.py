"""prefill_k: the first k tokens of a real harmful answer forced as the start of the reply.

Behaviours come from ``sources.prefill_pairs()`` (pool "prefill_pairs": a prompt with the
harmful ``response`` pyrit ships for it). The answer is cut in the attacked model's own tokens,
so the attack needs that model's tokenizer. The evaluation grid lists it once per k, under the
results keys prefill_5 / prefill_10 / prefill_20 / prefill_40 (the case's variant name).
"""

from __future__ import annotations

from dataclasses import dataclass

from .base import Attack, register, user_turn


@dataclass
class PrefillKConfig:
    k: int = 10  # tokens of the answer to force

    def __post_init__(self):
        if self.k < 1:
            raise ValueError(f"prefill_k: k must be ≥ 1, got {self.k}")


@register
class PrefillK(Attack):
    """One case: the request, with the answer's first k tokens (decoded to text) as prefill.

    An answer shorter than k tokens gives no case: it cannot supply k tokens, and forcing the
    whole answer would be a different attack (SmolLM2 measured: 0 / 0 / 5 / 9 of the 100 pairs
    are short for k = 5 / 10 / 20 / 40). Re-encoded alone, the prefill is exactly k tokens except
    where the k-th token ends inside a blank line: the tokenizer then merges the trailing
    "\\n\\n" into one token (3 of 386 pair × k cuts measured), as it will in the prompt too.
    """

    name = "prefill_k"
    config_class = PrefillKConfig
    pool = "prefill_pairs"

    def __init__(self, config=None, tokenizer=None):
        super().__init__(config, tokenizer)
        if tokenizer is None:
            raise ValueError("prefill_k needs the attacked model's tokenizer (get_attack('prefill_k', tokenizer=...)): "
                             "k counts that model's tokens")

    def cases(self, behaviour):
        if not behaviour.get("response"):
            raise ValueError(f"prefill_k: behaviour {behaviour.get('id')!r} has no 'response' "
                             "(use the prefill_pairs pool: sources.prefill_pairs())")
        k = self.config.k
        ids = self.tokenizer.encode(behaviour["response"], add_special_tokens=False)
        if len(ids) < k:
            return []
        prefill = self.tokenizer.decode(ids[:k])
        return [self.case(behaviour, user_turn(behaviour["prompt"]), variant=f"prefill_{k}", prefill=prefill)]
