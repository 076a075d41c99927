"""Attacks (DESIGN.md §Evaluation protocol): behaviours -> AttackCases, found by name."""

from . import simple  # noqa: F401  (registers the attacks)
from .base import Attack, AttackCase, attack_names, behaviour_id, get_attack

__all__ = ["Attack", "AttackCase", "attack_names", "behaviour_id", "get_attack"]
