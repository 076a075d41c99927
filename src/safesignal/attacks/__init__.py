"""Attacks (DESIGN.md §Evaluation protocol): behaviours -> AttackCases, found by name."""

# importing a family's module registers its attacks
from . import conversation, decoding, embedding, fake_refusal, gcg, late_harm, prefill, reformulation  # noqa: F401
from . import simple, templates  # noqa: F401
from .base import POOLS, Attack, AttackCase, attack_names, attack_pool, behaviour_id, get_attack

__all__ = ["POOLS", "Attack", "AttackCase", "attack_names", "attack_pool", "behaviour_id", "get_attack"]
