"""One interface for every attack: a behaviour (a dict with ``prompt`` and optionally
``target``, ``id``, ``source``) becomes a list of ``AttackCase``s. Attacks are found by name
(``get_attack``, ``attack_names``); each has a config dataclass whose every knob loads from YAML
with ``safesignal.config.load_config``.

Every attack names its behaviour ``pool``, the set the evaluation grid feeds it: "harmful"
(AdvBench + HarmBench test standard), "advbench" (rows with a ``target``) or "prefill_pairs"
(``sources.prefill_pairs()``: a prompt with a real harmful ``response``) or "contrast_unsafe"
(the unsafe side of the XSTest-style contrast set). The number of cases an
attack makes per behaviour is fixed by its config alone, so a grid's size is known in advance."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from ..data.sources import normalise
from ..decoding.prompt_embeddings import PromptEmbeddings
from ..plugins import Registry


@dataclass
class AttackCase:
    messages: list[dict]
    attack: str
    variant: str
    behaviour_id: str
    prefill: str | None = None  # text forced at the start of the assistant turn
    decoding: dict | None = None  # do_sample / temperature / top_p / top_k / seed; None: harness default
    # White-box: vectors in place of some prompt tokens' embeddings (the `embedding` attack)
    prompt_embeddings: PromptEmbeddings | None = None


def behaviour_id(behaviour: dict) -> str:
    """The behaviour's ``id``, else its source and a hash of its normalised prompt."""
    if behaviour.get("id"):
        return str(behaviour["id"])
    digest = hashlib.sha256(normalise(behaviour["prompt"]).encode()).hexdigest()[:12]
    return f"{behaviour.get('source', 'behaviour')}:{digest}"


POOLS = ("harmful", "advbench", "prefill_pairs", "contrast_unsafe")


def user_turn(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def stable_seed(*parts) -> int:
    """A 31-bit seed from the parts' text: the same on every machine and run (Python's hash()
    is salted per process), so a behaviour gets the same draw for every model."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:4], "big") >> 1


@dataclass
class PrepareContext:
    """What an attack whose cases depend on the model or the run gets before `cases`: the model
    and how this entry decodes it, the behaviours, a resumable file of its own (`store`) and the
    grid's output directory (`run_dir`: another entry's results, for transfer)."""

    sm: object
    behaviours: list[dict]
    decoding: str
    policy: object  # SafetyPolicy
    store: Path
    run_dir: Path
    progress: bool = False
    head: str | None = None  # the entry's forced head ("benign" / "malicious"), if any
    shard: object = None  # eval.sharding.Shard: the processes that share the searches (None: this one)


@dataclass
class AttackConfig:
    """Attacks without knobs use this empty config."""


class Attack:
    name: str = ""
    config_class: type = AttackConfig
    pool: str = "harmful"  # one of POOLS: where the grid draws behaviours from (eval/behaviours.py)

    # True: `cases` needs `prepare(context)` first (searched on the model under test, or read
    # from another entry of the run); the grid calls it per entry.
    prepared: bool = False

    def __init__(self, config=None, tokenizer=None):
        self.config = config if config is not None else self.config_class()
        self.tokenizer = tokenizer

    def prepare(self, context: PrepareContext) -> dict | None:
        """Make the cases depend on this entry; what it returns goes into the results file."""
        return None

    def cases(self, behaviour: dict) -> list[AttackCase]:
        raise NotImplementedError

    def n_cases(self, behaviour: dict) -> int:
        """How many cases `cases(behaviour)` makes (a searched attack knows before its search)."""
        return len(self.cases(behaviour))

    def case(self, behaviour: dict, messages: list[dict], variant: str | None = None, **kw) -> AttackCase:
        return AttackCase(messages=messages, attack=self.name, variant=variant or self.name,
                          behaviour_id=behaviour_id(behaviour), **kw)


_ATTACKS = Registry("attack")
register = _ATTACKS.register
attack_names = _ATTACKS.names


def attack_pool(name: str, **config) -> str:
    """The behaviour pool attack `name` draws from (its config is checked, no attack is built)."""
    cls, _ = _ATTACKS.build(name, config)
    return cls.pool


def get_attack(name: str, tokenizer=None, **config) -> Attack:
    cls, built = _ATTACKS.build(name, config)
    return cls(built, tokenizer=tokenizer)
