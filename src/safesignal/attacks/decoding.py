"""decoding_sweep: the generation-exploitation attack of Huang et al. 2023 ("Catastrophic
jailbreak of open-source LLMs via exploiting generation"): the plain request, sampled under many
decoding settings; a behaviour counts as broken if any setting breaks it.

The paper's grid varies one parameter at a time, the others at their neutral values
(temperature 1, top-p 1, top-k off): temperature 0.05..1.00 in steps of 0.05 (20), top-p
0.05..1.00 in steps of 0.05 (20), top-k in {1, 2, 5, 10, 20, 50, 100, 200, 500} (9): 49
settings. The "small" grid (5 settings) is for CPU runs.
"""

from __future__ import annotations

from dataclasses import dataclass

from .base import Attack, behaviour_id, register, stable_seed, user_turn

NEUTRAL = {"temperature": 1.0, "top_p": 1.0, "top_k": 0}  # the Sampling defaults: no reshaping

_STEPS = [round(0.05 * i, 2) for i in range(1, 21)]
GRIDS = {
    "small": ["temperature=0.5", "temperature=1.0", "top_p=0.7", "top_p=0.95", "top_k=20"],
    "paper": ([f"temperature={t}" for t in _STEPS] + [f"top_p={p}" for p in _STEPS]
              + [f"top_k={k}" for k in (1, 2, 5, 10, 20, 50, 100, 200, 500)]),
}


def parse_setting(spec: str) -> dict:
    """ "temperature=0.7" or "temperature=0.7,top_p=0.9" -> {temperature, top_p, top_k}."""
    setting = dict(NEUTRAL)
    for part in spec.split(","):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in NEUTRAL:
            raise ValueError(f"decoding_sweep: setting {spec!r}: expected key=value with key in {sorted(NEUTRAL)}")
        try:
            setting[key] = int(value) if key == "top_k" else float(value)
        except ValueError:
            raise ValueError(f"decoding_sweep: setting {spec!r}: {key} is not a number") from None
    return setting


@dataclass
class DecodingSweepConfig:
    grid: str = "small"  # a named grid: "small" (5 settings) or "paper" (49)
    settings: list[str] | None = None  # an explicit grid ("top_p=0.9", "temperature=0.7,top_k=50"); overrides `grid`
    seed: int = 0

    def __post_init__(self):
        if self.settings is None and self.grid not in GRIDS:
            raise ValueError(f"decoding_sweep: unknown grid {self.grid!r}; known: {sorted(GRIDS)}")
        if self.settings is not None and not self.settings:
            raise ValueError("decoding_sweep: settings must not be empty (or None for a named grid)")


@register
class DecodingSweep(Attack):
    """One sampled case per setting; each case's seed comes from the behaviour id, the
    variant and the config seed, so rows draw independently and every model sees the same seeds."""

    name = "decoding_sweep"
    config_class = DecodingSweepConfig

    def __init__(self, config=None, tokenizer=None):
        super().__init__(config, tokenizer)
        specs = self.config.settings if self.config.settings is not None else GRIDS[self.config.grid]
        self.settings = [(spec.replace(" ", ""), parse_setting(spec)) for spec in specs]
        names = [name for name, _ in self.settings]
        if len(set(names)) != len(names):
            raise ValueError("decoding_sweep: settings repeat (variant names must be unique)")

    def cases(self, behaviour):
        bid = behaviour_id(behaviour)
        return [self.case(behaviour, user_turn(behaviour["prompt"]), variant=name,
                          decoding={"do_sample": True, **setting,
                                    "seed": stable_seed(self.name, bid, name, self.config.seed)})
                for name, setting in self.settings]
