"""One interface for every attack: a behaviour (a dict with ``prompt`` and optionally
``target``, ``id``, ``source``) becomes a list of ``AttackCase``s. Attacks are found by name
(``get_attack``, ``attack_names``); each has a config dataclass whose every knob loads from YAML
with ``safesignal.config.load_config``."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from ..data.sources import normalise


@dataclass
class AttackCase:
    messages: list[dict]
    attack: str
    variant: str
    behaviour_id: str
    prefill: str | None = None  # text forced at the start of the assistant turn
    decoding: dict | None = None  # do_sample / temperature / top_p / top_k / seed; None: harness default


def behaviour_id(behaviour: dict) -> str:
    """The behaviour's ``id``, else its source and a hash of its normalised prompt."""
    if behaviour.get("id"):
        return str(behaviour["id"])
    digest = hashlib.sha256(normalise(behaviour["prompt"]).encode()).hexdigest()[:12]
    return f"{behaviour.get('source', 'behaviour')}:{digest}"


@dataclass
class AttackConfig:
    """Attacks without knobs use this empty config."""


class Attack:
    name: str = ""
    config_class: type = AttackConfig

    def __init__(self, config=None, tokenizer=None):
        self.config = config if config is not None else self.config_class()
        self.tokenizer = tokenizer

    def cases(self, behaviour: dict) -> list[AttackCase]:
        raise NotImplementedError

    def case(self, behaviour: dict, messages: list[dict], variant: str | None = None, **kw) -> AttackCase:
        return AttackCase(messages=messages, attack=self.name, variant=variant or self.name,
                          behaviour_id=behaviour_id(behaviour), **kw)


_REGISTRY: dict[str, type[Attack]] = {}


def register(cls: type[Attack]) -> type[Attack]:
    if cls.name in _REGISTRY:
        raise ValueError(f"attack {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def attack_names() -> list[str]:
    return sorted(_REGISTRY)


def get_attack(name: str, tokenizer=None, **config) -> Attack:
    if name not in _REGISTRY:
        raise KeyError(f"unknown attack {name!r}; known: {', '.join(attack_names())}")
    cls = _REGISTRY[name]
    return cls(cls.config_class(**config), tokenizer=tokenizer)
