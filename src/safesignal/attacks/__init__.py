"""Attacks (DESIGN.md §Evaluation protocol): behaviours -> AttackCases, found by name."""

from . import conversation, decoding, fake_refusal, gcg, prefill, reformulation, simple, templates  # noqa: F401  (register the attacks)
from .base import POOLS, Attack, AttackCase, attack_names, attack_pool, behaviour_id, get_attack

__all__ = ["POOLS", "Attack", "AttackCase", "attack_names", "attack_pool", "behaviour_id", "get_attack"]
