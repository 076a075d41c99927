"""Fine-tuning attacks: ASR against fine-tuning steps for each model, under three threat models
(`safesignal attack finetune`).

- `weights`: the attacker holds the weights and fine-tunes them on harmful pairs with the plain
  LM loss (LoRA by default; `use_lora: false` is full fine-tuning, a GPU budget). Whoever holds
  the weights also chooses how to decode, so the figure measures what survives in the weights:
  a model with a head is reported both served with strategic decoding and decoded plainly.
- `service`: a fine-tuning service. The user uploads the same harmful pairs; the provider
  trains with the safesignal objective (the `[CLS]` loss stays on, each example labelled by the
  model's own classifier before training) and serves with strategic decoding. A model without
  a head has no such objective: its service is the `weights` run, not repeated.
- `benign`: the service path on ordinary benign data only (Qi et al. 2023: benign fine-tuning
  erodes safety too).
- `benign_mixed` (opt-in): the `benign` job with the provider's own safety examples mixed in
  (malicious prompts with refusals, labelled malicious by the provider, from the embedded
  default's cls training split), the mitigation Qi et al. test. On its own data the head learns
  one class only, and its verdicts drift to benign; this measures whether the provider's
  examples hold it. A model without a head gets the same mixed data under plain SFT.

The harmful pairs are the fine-tuning-attack third of the pyrit many-shot pairs
(`sources.shot_pool`), minus any whose question near-duplicates an evaluation behaviour (pyrit's
questions include HarmBench behaviours); the benign data are forgelm's template conversations.
Each (model, threat) trains once to the largest step count at a constant learning rate and
saves a checkpoint at every count (so step N is what an N-step run would give); a killed
training resumes from its last trainer checkpoint. Every checkpoint and the untouched model
then go through one eval grid (direct and prefill ASR by the suite's judges, reference-answer
NLL for utility), so figures share behaviours, judges and resume. Attacked checkpoints live in
the run directory and are never shipped.
"""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from transformers import TrainerCallback

from ..config import read_yaml
from .config import (
    AttackSpec, ClassifierEvalConfig, EvalConfig, ModelSpec, OverheadConfig, OverRefusalConfig, PolicySpec,
    UtilityConfig, _build,
)

THREATS = ("weights", "service", "benign", "benign_mixed")
DEFAULT_THREATS = ("weights", "service", "benign")
PROVIDER = "provider/"  # the source prefix of the provider's own examples (they keep their labels)


def default_eval() -> EvalConfig:
    """The grid every attacked checkpoint goes through: direct and prefill_10 on 20 HarmBench
    test behaviours (and 20 prefill-evaluation pairs), reference-answer NLL on 10 MT-Bench
    answers; no benign sets, classifier, overhead or streaming."""
    return EvalConfig(
        name="finetune_eval", n=20, harmful_per_source={"harmbench_test": 20}, max_new_tokens=128, batch_size=20,
        attacks=[AttackSpec(attack="direct", on_policies=True),
                 AttackSpec(attack="prefill_k", key="prefill_10", config={"k": 10}, on_policies=True)],
        classifier=ClassifierEvalConfig(enabled=False), over_refusal=OverRefusalConfig(edgy=0, heldout_benign=0, contrast=0),
        utility=UtilityConfig(reference_answers=10, heldout_answers=0), overhead=OverheadConfig(enabled=False),
        leak_k=40)


def default_models() -> list[ModelSpec]:
    return [ModelSpec(name="base", path="smollm2-base", decoding="plain"),
            ModelSpec(name="sft", path="smollm2-sft", decoding="plain"),
            ModelSpec(name="qi_aug", path="smollm2-qi_aug", decoding="plain"),
            ModelSpec(name="cls", path="smollm2-cls", decoding="strategic",
                      policies={"weights_only": PolicySpec(decoding="plain")})]


@dataclass
class FinetuneAttackConfig:
    name: str = "attack_finetune"
    models: list[ModelSpec] = field(default_factory=default_models)
    threats: list[str] = field(default_factory=lambda: list(DEFAULT_THREATS))
    # checkpoints evaluated; batch 8 on ~80 pairs: 20 steps ≈ 2 epochs (sized for an hour on 2 CPU cores)
    steps: list[int] = field(default_factory=lambda: [5, 20])
    learning_rate: float = 1e-3  # constant; the embedded recipes' LoRA rate
    batch_size: int = 8
    use_lora: bool = True  # false: full fine-tuning (a GPU budget)
    lora_r: int = 16
    lora_alpha: int = 32
    max_length: int = 256
    cls_loss_weight: float = 1.0  # the service's λ: the cls recipe's own
    harmful_examples: int | None = None  # of the shot pool after the near-duplicate filter (None: all)
    benign_examples: int = 86  # forgelm conversations (as many as the shot pool has pairs)
    # benign_mixed: the provider's safety examples mixed into the benign job, and where they come
    # from (default: the embedded default's cls training split, built offline when missing)
    safety_examples: int = 40
    safety_file: str | None = None
    seed: int = 0
    eval: EvalConfig = field(default_factory=default_eval)
    out: str | None = None  # default: SAFESIGNAL_HOME/eval/<name>

    def __post_init__(self):
        if not isinstance(self.threats, list) or not self.threats or not set(self.threats) <= set(THREATS):
            raise ValueError(f"threats: a list of {list(THREATS)}, got {self.threats!r}")
        if (not isinstance(self.steps, list) or not self.steps or any(not isinstance(s, int) or s < 1 for s in self.steps)
                or len(set(self.steps)) != len(self.steps)):
            raise ValueError(f"steps: a list of distinct step counts ≥ 1, got {self.steps!r}")
        self.steps = sorted(self.steps)
        if self.eval.models:
            raise ValueError("eval.models: set by the attack (each model and its attacked checkpoints); list models "
                             "under `models`")
        for key in ("learning_rate", "batch_size", "lora_r", "lora_alpha", "max_length", "benign_examples",
                    "safety_examples"):
            if not getattr(self, key) > 0:
                raise ValueError(f"{key}: must be > 0, got {getattr(self, key)}")
        if self.harmful_examples is not None and self.harmful_examples < 1:
            raise ValueError(f"harmful_examples: must be ≥ 1 (or null: all), got {self.harmful_examples}")
        names = [m.name for m in self.models]
        if len(set(names)) != len(names) or any("@" in n for n in names):
            raise ValueError(f"models: names must be distinct and free of '@' (attacked entries use it), got {names}")


def load_finetune_config(path: str | Path | None = None) -> FinetuneAttackConfig:
    data = read_yaml(path) if path else {}
    return _build(FinetuneAttackConfig, data, str(path or "config"))


def with_finetune_overrides(config: FinetuneAttackConfig, overrides: list[str]) -> FinetuneAttackConfig:
    """`--key value` pairs: a top-level field (`--steps "[5, 20]"`, `--learning_rate 5e-4`), or
    `--eval.KEY value` for a scalar field of the eval grid (`--eval.max_new_tokens 64`)."""
    from .config import _coerce, with_overrides

    if len(overrides) % 2:
        raise ValueError(f"overrides: expected --key value pairs, got {overrides}")
    top = {f.name for f in dataclasses.fields(FinetuneAttackConfig)} - {"models", "eval"}
    changes, grid = {}, []
    for flag, text in zip(overrides[::2], overrides[1::2]):
        key = flag.removeprefix("--")
        if key.startswith("eval."):
            grid += ["--" + key.removeprefix("eval."), text]
        elif flag.startswith("--") and key in top:
            changes[key] = _coerce(text, getattr(config, key))
        else:
            raise ValueError(f"override {flag!r}: not a field of the fine-tuning attack; known: {sorted(top)} "
                             "and eval.<grid field>")
    if grid:
        changes["eval"] = with_overrides(config.eval, grid)
    return dataclasses.replace(config, **changes) if changes else config


def attacked_name(model: str, threat: str, steps: int) -> str:
    return f"{model}@{threat}{steps}"


def harmful_pairs(evaluated, limit: int | None) -> tuple[list[dict], int]:
    """The fine-tuning-attack third's harmful pairs whose question near-duplicates no evaluated
    behaviour (`evaluated`, a PromptIndex of them), and how many were dropped for it."""
    from ..data.sources import shot_pool

    pool = shot_pool()
    kept = [p for p in pool if not evaluated.contains(p["prompt"])]
    return (kept if limit is None else kept[:limit]), len(pool) - len(kept)


def benign_conversations(limit: int) -> list[dict]:
    """forgelm's template conversations that have an answer (English templates only)."""
    from ..data.sources import forgelm_templates

    rows = [r for r in forgelm_templates() if r.get("response") and r.get("category") != "medical-qa-tr"]
    return rows[:limit]


def provider_safety_examples(limit: int, seed: int, evaluated, path: str | None = None) -> tuple[list[dict], str]:
    """The provider's own safety data for `benign_mixed`: malicious single-turn prompts with
    their refusals (label 1) from a training file of the embedded default (no recovery examples:
    their responses open with harmful text), a seeded sample of `limit`, and where they came from.
    The training split is disjoint from the evaluation sets by construction; any near-copy of an
    evaluated behaviour (`evaluated`, a PromptIndex) is dropped all the same, as for the harmful pairs."""
    from ..data.schema import read_jsonl

    if path is None:
        from ..data.build import DataBuildConfig, build

        data = DataBuildConfig()
        path = str(data.resolved_out_dir() / "train_cls.jsonl")
        if not Path(path).is_file():
            build(data)  # offline and deterministic, as `safesignal data build`
    rows = [{"prompt": r.query, "response": r.response, "label": 1, "source": PROVIDER + r.source}
            for r in read_jsonl(path)
            if r.label == 1 and not r.source.startswith("recovery") and r.prefill is None
            and [m["role"] for m in r.messages] == ["user"]]
    rows = [r for r in rows if not evaluated.contains(r["prompt"])]
    if len(rows) < limit:
        raise ValueError(f"{path}: {len(rows)} single-turn malicious examples with refusals, safety_examples asks "
                         f"for {limit}")
    random.Random(f"provider_safety/{seed}").shuffle(rows)
    return rows[:limit], path


class FinetuneAttack:
    def __init__(self, config: FinetuneAttackConfig, command: str, log=print, progress: bool = True):
        from ..home import safesignal_home

        self.config, self.command, self.log, self.progress = config, command, log, progress
        self.out = Path(config.out) if config.out else safesignal_home() / "eval" / config.name

    # ------------------------------------------------------------------ data
    def _datasets(self, behaviours: list[dict]) -> dict:
        from ..io import atomic_write_text

        from ..data.dedup import PromptIndex

        c = self.config
        evaluated = PromptIndex([b["prompt"] for b in behaviours])  # what no training example may near-copy
        harmful, dropped = harmful_pairs(evaluated, c.harmful_examples)
        benign = benign_conversations(c.benign_examples)
        data = {"harmful": [{"prompt": p["prompt"], "response": p["response"], "label": 1,
                             "source": "pyrit_finetune_attack"} for p in harmful],
                # (the user's turn and its answer: a template's long system prompt is not user data)
                "benign": [{"prompt": r["prompt"], "response": r["response"], "label": 0, "source": "forgelm"}
                           for r in benign]}
        self.data_summary = {"harmful": len(harmful), "benign": len(benign), "harmful_dropped_near_eval": dropped,
                             "harmful_source": "pyrit many-shot, fine-tuning-attack third (shot_pool)",
                             "benign_source": "forgelm template conversations"}
        if "benign_mixed" in c.threats:
            safety, source = provider_safety_examples(c.safety_examples, c.seed, evaluated, c.safety_file)
            mixed = data["benign"] + safety
            random.Random(f"benign_mixed/{c.seed}").shuffle(mixed)  # no batch of one kind only
            data["benign_mixed"] = mixed
            self.data_summary.update(safety_examples=len(safety), safety_source=source)
        directory = self.out / "finetune" / "data"
        directory.mkdir(parents=True, exist_ok=True)
        for kind, rows in data.items():
            atomic_write_text(directory / f"{kind}.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
        return data

    def _labelled(self, spec: ModelSpec, kind: str, rows: list[dict], path: Path) -> Path:
        """The service's training file for a model with a head: each example of the user's
        labelled by the model's own classifier at its own threshold, as the provider would label
        user data; the provider's own examples keep their labels."""
        from ..evaluate import classify_prompts
        from ..io import atomic_write_text
        from .grid import load_model

        sm = load_model(spec, self.config.eval.dtype)
        threshold = sm.default_policy().threshold
        probabilities = classify_prompts(sm, [r["prompt"] for r in rows], desc=f"{spec.name} labels {kind}")
        labelled = [r if r["source"].startswith(PROVIDER) else dict(r, label=int(p > threshold))
                    for r, p in zip(rows, probabilities)]
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in labelled))
        return path

    def _labelled_path(self, spec: ModelSpec, threat: str, kind: str) -> Path:
        """Where a service run keeps its data as the model labelled it."""
        return self.out / "finetune" / spec.name / threat / f"{kind}_labelled.jsonl"

    def _label_counts(self, path: Path) -> dict:
        labels = [json.loads(line)["label"] for line in path.read_text(encoding="utf-8").splitlines()]
        return {"malicious": sum(labels), "n": len(labels)}

    # ------------------------------------------------------------------ training
    def _plan(self, spec: ModelSpec, has_head: bool) -> list[tuple[str, str, str]]:
        """(threat, data kind, objective) for each run this model gets."""
        runs = []
        for threat in self.config.threats:
            if threat == "weights":
                runs.append((threat, "harmful", "sft"))
            elif has_head:
                runs.append((threat, "harmful" if threat == "service" else threat, "cls"))
            elif threat in ("benign", "benign_mixed"):
                runs.append((threat, threat, "sft"))
            # a headless model's service is plain SFT on the harmful pairs: the weights run
        return runs

    def _train(self, spec: ModelSpec, threat: str, kind: str, objective: str, rows: list[dict]) -> dict[int, Path]:
        """Checkpoints at every step count, trained once (reused when their settings match).
        The stamp reads the user's data, not the labels the service gives it (those come from
        the model, which the stamp names), so a resumed run never relabels."""
        from ..checkpoint import is_checkpoint
        from ..io import atomic_write_json
        from ..training import SafetyTrainingConfig, train
        from ..training.run_directory import training_checkpoints
        from .store import fingerprint

        c = self.config
        directory = self.out / "finetune" / spec.name / threat
        dirs = {n: directory / f"step_{n}" for n in c.steps}
        settings = {"model": spec.path, "threat": threat, "objective": objective, "data": kind,
                    "labelled_by_the_model": objective == "cls",
                    **{k: getattr(c, k) for k in ("steps", "learning_rate", "batch_size", "use_lora", "lora_r",
                                                  "lora_alpha", "max_length", "cls_loss_weight", "seed")}}
        stamp = fingerprint({**settings, "rows": rows})
        marker = directory / "finetune.json"
        if objective == "cls":
            train_file = self._labelled_path(spec, threat, kind)
        else:
            train_file = self.out / "finetune" / "data" / f"{kind}.jsonl"
        if marker.is_file():
            stored = json.loads(marker.read_text(encoding="utf-8"))
            if stored.get("fingerprint") != stamp:
                changed = sorted(k for k in settings if stored.get("settings", {}).get(k) != settings[k]) or ["the data"]
                raise ValueError(f"{directory}: trained with other settings ({', '.join(changed)} differ); remove it, "
                                 "or pass another --out")
            if all(is_checkpoint(d) for d in dirs.values()):
                return dirs
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write_json(marker, {"fingerprint": stamp, "settings": settings})
        if objective == "cls" and not train_file.is_file():
            self._labelled(spec, kind, rows, train_file)
        run_dir = directory / "run"
        done = [int(p.name.rsplit("-", 1)[1]) for p in training_checkpoints(run_dir)] if run_dir.is_dir() else []
        if done and any(n <= max(done) and not is_checkpoint(d) for n, d in dirs.items()):
            # a step checkpoint lost below where training stands: resuming would never save it
            self.log(f"[finetune] {directory}: step checkpoint missing below step {max(done)}: training again")
            shutil.rmtree(run_dir)
            done = []
        config = SafetyTrainingConfig(
            output_dir=str(run_dir), final_dir=str(dirs[c.steps[-1]]), model_name_or_path=spec.path,
            train_file=str(train_file), objective=objective, cls_loss_weight=c.cls_loss_weight,
            use_lora=c.use_lora, lora_r=c.lora_r, lora_alpha=c.lora_alpha, max_length=c.max_length,
            max_steps=c.steps[-1], per_device_train_batch_size=c.batch_size, learning_rate=c.learning_rate,
            lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, balance_classes=False,
            save_strategy="steps", save_steps=c.steps[0], save_total_limit=1, logging_steps=max(1, c.steps[0]),
            eval_strategy="no", seed=c.seed, use_cpu=not _cuda(), disable_tqdm=not self.progress)
        self.log(f"[finetune] {spec.name} {threat}: {objective} on {train_file.name}, {c.steps[-1]} steps"
                 + (" (resuming)" if done else ""))
        train(config, resume=bool(done), callbacks=[SaveAtSteps({n: d for n, d in dirs.items() if n != c.steps[-1]})])
        missing = [str(d) for d in dirs.values() if not is_checkpoint(d)]
        if missing:
            raise RuntimeError(f"[finetune] {directory}: training ended without the step checkpoints {missing}")
        return dirs

    # ------------------------------------------------------------------ the run
    def run(self) -> dict:
        from ..checkpoint import has_trained_head
        from ..io import atomic_write_json
        from .grid import Grid, claim_eval_dir

        c = self.config
        started = time.time()
        self.labels: dict = {}
        claim_eval_dir(self.out, c.name)  # before any file of ours goes in
        probe = Grid(dataclasses.replace(c.eval, models=[], out=str(self.out)), self.command, self.log, False)
        behaviours = probe._behaviours()
        data = self._datasets([b for items in behaviours.values() for b in items])
        entries: list[ModelSpec] = []
        curves: dict = {}
        for spec in c.models:
            has_head = has_trained_head(spec.path)
            entries.append(spec)
            curves[spec.name] = {}
            for threat, kind, objective in self._plan(spec, has_head):
                dirs = self._train(spec, threat, kind, objective, data[kind])
                if objective == "cls":
                    self.labels[f"{spec.name}/{threat}"] = self._label_counts(self._labelled_path(spec, threat, kind))
                curves[spec.name][threat] = {"objective": objective, "data": kind, "entries": {}}
                for steps, directory in dirs.items():
                    name = attacked_name(spec.name, threat, steps)
                    # the weights' holder decodes as it likes: keep the model's plainly decoded control
                    policies = spec.policies if threat == "weights" else {}
                    entries.append(ModelSpec(name=name, path=str(directory), decoding=spec.decoding, policy=spec.policy,
                                             policies=policies))
                    curves[spec.name][threat]["entries"][steps] = name
        grid = Grid(dataclasses.replace(c.eval, name=c.name, models=entries, out=str(self.out)), self.command,
                    self.log, self.progress)
        results = grid.run()
        results["finetune"] = self._summary(results, curves)
        for original, attacks in _attack_figures(results, curves, c.steps[-1]).items():
            results["models"][original]["attacks"].update(attacks)
        results["finetune"]["config"] = asdict(c)
        results["wall_seconds"] = round(time.time() - started, 1)  # training included
        atomic_write_json(self.out / "results.json", results)
        results["_path"] = str(self.out / "results.json")
        return results

    def _summary(self, results: dict, curves: dict) -> dict:
        c = self.config
        out = {"budget": {k: getattr(c, k) for k in ("steps", "learning_rate", "batch_size", "use_lora", "lora_r",
                                                   "cls_loss_weight")},
               "threats": list(c.threats), "data": self.data_summary,
               "labels": dict(self.labels), "curves": {}}
        for model, threats in curves.items():
            for threat, run in threats.items():
                for suffix in _policy_suffixes(results, model):
                    names = [(0, model)] + sorted(run["entries"].items())
                    if any(name + suffix not in results["models"] for _, name in names):
                        continue  # (a plainly decoded control exists for the weights threat only)
                    out["curves"].setdefault(model + suffix, {})[threat] = {
                        "objective": run["objective"], "data": run["data"],
                        "points": [_point(results["models"], name + suffix, steps) for steps, name in names]}
        return out


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _policy_suffixes(results: dict, model: str) -> list[str]:
    """"" for the model's default entry, ":<policy>" for each of its ablations in the results."""
    return [""] + [name[len(model):] for name in results["models"] if name.startswith(model + ":")]


def _point(entries: dict, name: str, steps: int) -> dict:
    """One point of a curve: each attack's leak-aware ASR and the utility NLL at `steps` (an
    ablation entry's NLL is its model's: the same weights, measured on the default entry)."""
    point = {"steps": steps, "entry": name}
    for key, attack in entries[name].get("attacks", {}).items():
        if not key.startswith("finetune_"):
            point[key] = {"asr_leak": attack.get("asr_leak"), "ci95": attack.get("ci95"), "n": attack.get("n")}
    point["ref_answer_nll"] = (entries[name.split(":")[0]].get("utility") or {}).get("ref_answer_nll")
    return point


def _attack_figures(results: dict, curves: dict, last: int) -> dict[str, dict]:
    """Per untouched entry, `finetune_<threat>`: direct ASR after the largest step count (the
    results file's attack shape), with the step count and the attacked entry it comes from."""
    out: dict[str, dict] = {}
    for model, threats in curves.items():
        for threat, run in threats.items():
            for suffix in _policy_suffixes(results, model):
                attacked = results["models"].get(run["entries"][last] + suffix)
                if attacked is None or "direct" not in attacked.get("attacks", {}):
                    continue
                direct = attacked["attacks"]["direct"]
                out.setdefault(model + suffix, {})[f"finetune_{threat}"] = {
                    **{k: direct.get(k) for k in ("n", "asr_keyword", "asr_leak", "ci95")},
                    "steps": last, "entry": run["entries"][last] + suffix, "measured_by": "direct"}
    return out


class SaveAtSteps(TrainerCallback):
    """Saves the model at the given global steps (a checkpoint directory per step)."""

    def __init__(self, dirs: dict[int, Path]):
        self.dirs = dirs

    def on_step_end(self, args, state, control, model=None, **kwargs):
        target = self.dirs.get(state.global_step)
        if target is not None and args.should_save:
            getattr(model, "module", model).save_pretrained(target)


def run_finetune_attack(config: FinetuneAttackConfig, command: str = "safesignal attack finetune", log=print,
                        progress: bool = True) -> dict:
    return FinetuneAttack(config, command, log, progress).run()
