"""Map a row of a user's file (ALERT, LIMA, Alpaca or their own columns) to our record schema.

A style names the columns a kind of file has and how they become a conversation:

- `alert`:   prompt, response, category. ALERT wraps each prompt as
             "### Instruction:\\n...\\n### Response:\\n"; the wrapper is removed.
- `lima`:    conversations: alternating user / assistant turns, as plain strings (LIMA) or
             {"from"/"role", "value"/"content"} dicts (ShareGPT); a last assistant turn is
             the response.
- `alpaca`:  instruction, input, output; a non-empty input follows the instruction after a
             blank line (Alpaca's own template puts it under "### Input:").
- `columns`: the user's own columns, named in `columns` (prompt or messages; response;
             optional category and label).
- `records`: already our schema (data/schema.py).

`columns` renames any style's column: `{prompt: question}` reads the prompt from "question".
The role gives the label (malicious 1, benign 0, evaluation: the file's own label or 1); a
label the file carries must agree with it. A file of both labels (the trainer's `train_file`)
has no role: each row must carry its own label (`require_label`). Every record goes through `schema.parse_record`,
the same validation as a hand-written JSONL file, and every problem names file, row and
column.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from ..io import DataError
from .refusals import direct_refusal
from .schema import Record, parse_record
from .user_files import iter_rows

STYLES = ("alert", "lima", "alpaca", "columns", "records")
# style -> our field -> the column it reads by default
DEFAULT_COLUMNS = {
    "alert": {"prompt": "prompt", "response": "response", "category": "category"},
    "lima": {"conversations": "conversations"},
    "alpaca": {"instruction": "instruction", "input": "input", "response": "output"},
    "columns": {},
    "records": {},
}
# Fields a row may lack (the rest are required when the style reads them).
OPTIONAL_FIELDS = {"category", "input", "label"}
FIELDS = {"prompt", "response", "messages", "conversations", "instruction", "input", "category", "label"}
ALERT_WRAPPER = re.compile(r"^\s*### Instruction:\s*\n(?P<prompt>.*?)\n\s*### Response:\s*$", re.DOTALL)
SPEAKERS = {"user": "user", "human": "user", "system": "system", "assistant": "assistant", "gpt": "assistant",
            "bot": "assistant", "model": "assistant", "chatgpt": "assistant"}
LABELS = {0: 0, 1: 1, "0": 0, "1": 1, "false": 0, "true": 1, "benign": 0, "malicious": 1, "safe": 0, "unsafe": 1}
MAX_LISTED_PROBLEMS = 1000


@dataclass
class RowMapper:
    """Turns the rows of one file into validated schema records.

    `label`: the role's label (None for an evaluation file: the row's own label, else 1).
    `refusals`: "keep" the file's responses, or "always" write our own refusal (a file of
    malicious prompts without answers, or to train the injection prefix the decoder writes).
    `require_empty`: columns that must be empty for a row to be used (the paper took only
    Alpaca rows without an input); the caller counts the rows skipped for it.
    `require_label` (with label None): a row without a label is an error, not malicious.
    """

    style: str
    source: str
    label: int | None
    columns: dict[str, str] = field(default_factory=dict)
    refusals: str = "keep"
    require_empty: list[str] = field(default_factory=list)
    require_response: bool = True
    seed: int = 0
    require_label: bool = False

    def __post_init__(self):
        if self.style not in STYLES:
            raise ValueError(f"style: {self.style!r} is not one of {', '.join(STYLES)}")
        unknown = sorted(set(self.columns) - FIELDS)
        if unknown:
            raise ValueError(f"columns: unknown field {unknown[0]!r} (fields: {', '.join(sorted(FIELDS))})")
        if self.refusals not in ("keep", "always"):
            raise ValueError(f"refusals: {self.refusals!r} is not keep or always")
        if self.refusals == "always" and self.label != 1:
            raise ValueError("refusals: always writes refusals, which only malicious prompts get")
        self.mapping = {**DEFAULT_COLUMNS[self.style], **self.columns}
        if self.refusals == "always" or not self.require_response:
            self.mapping.pop("response", None)  # not read: no row needs one
        if self.style == "columns" and not ({"prompt", "messages"} & set(self.mapping)):
            raise ValueError("columns: name the column holding the prompt (prompt: <column>) or the messages")
        # One generator per file, seeded by its name: refusals do not depend on other files.
        self._rng = random.Random(f"refusals/{self.seed}/{self.source}")

    def needed_columns(self) -> tuple[list[str] | None, list[str]]:
        """(required, optional) columns of the file; (None, []) for records: all of them."""
        if self.style == "records":
            return None, []
        required = [c for f, c in self.mapping.items() if f not in OPTIONAL_FIELDS]
        optional = [c for f, c in self.mapping.items() if f in OPTIONAL_FIELDS]
        return required + [c for c in self.require_empty if c not in required], optional

    def skips(self, row: dict) -> bool:
        """True when a `require_empty` column holds something: the row is not used."""
        return any(row.get(c) not in (None, "") for c in self.require_empty)

    def record(self, row: dict, where: str) -> tuple[dict, Record]:
        """(the record as written, the validated Record); DataError naming where and the column."""
        obj = dict(row) if self.style == "records" else self._convert(row, where)
        obj["label"] = self._label(obj.get("label"), where)
        obj.setdefault("source", self.source)
        if self.refusals == "always":
            obj.pop("response", None)
        parsed = parse_record(obj, where, require_response=self.require_response and self.refusals == "keep")
        if self.refusals == "always":
            obj["response"] = direct_refusal(parsed.query, self._rng)
            parsed.response = obj["response"]
        return obj, parsed

    # ------------------------------------------------------------------ conversion
    def _value(self, row: dict, name: str, where: str, kind: type = str):
        column = self.mapping[name]
        if column not in row:
            if name in OPTIONAL_FIELDS:
                return None
            raise DataError([f"{where}: {column}: missing (the {self.style} style reads it as {name}; "
                             f"map another column with columns: {{{name}: <column>}})"])
        value = row[column]
        if value is None and name in OPTIONAL_FIELDS:
            return None
        if not isinstance(value, kind):
            raise DataError([f"{where}: {column}: expected {_kind_name(kind)}, got {type(value).__name__}"])
        return value

    def _convert(self, row: dict, where: str) -> dict:
        obj: dict = {}
        if "conversations" in self.mapping:
            obj["messages"] = _conversation(self._value(row, "conversations", where, list),
                                            self.mapping["conversations"], where)
        elif "instruction" in self.mapping:
            instruction = self._value(row, "instruction", where)
            extra = self._value(row, "input", where) if "input" in self.mapping else None
            obj["prompt"] = f"{instruction}\n\n{extra}" if extra and extra.strip() else instruction
        elif "messages" in self.mapping:
            obj["messages"] = self._value(row, "messages", where, list)
        else:
            prompt = self._value(row, "prompt", where)
            if self.style == "alert":
                match = ALERT_WRAPPER.match(prompt)
                prompt = match.group("prompt").strip() if match else prompt
            obj["prompt"] = prompt
        if "response" in self.mapping:
            obj["response"] = self._value(row, "response", where)
        if "label" in self.mapping:
            obj["label"] = self._value(row, "label", where, object)
        if "category" in self.mapping and (category := self._value(row, "category", where, object)) is not None:
            obj["meta"] = {"category": category}
        return obj

    def _label(self, value, where: str) -> int:
        """The role's label; a label in the file must agree with it."""
        column = self.mapping.get("label", "label")
        if value is None:
            if self.require_label and self.label is None:
                raise DataError([f"{where}: {column}: missing (expected 0 / 1, benign / malicious: "
                                 f"every row of a training file carries its label)"])
            return 1 if self.label is None else self.label
        key = value.strip().lower() if isinstance(value, str) else value
        if isinstance(key, bool) or key not in LABELS:
            raise DataError([f"{where}: {column}: expected 0 / 1 (benign / malicious), got {value!r}"])
        if self.label is not None and LABELS[key] != self.label:
            role = "malicious" if self.label == 1 else "benign"
            raise DataError([f"{where}: {column}: label {value!r} in a file listed as {role}"])
        return LABELS[key]


class Problems:
    """Every malformed row: listed in the error (`rejected` None), or written to `rejected`
    (one JSON line each). Counted either way; never dropped unsaid."""

    def __init__(self, rejected: TextIO | None = None):
        self.rejected, self.listed, self.total = rejected, [], 0

    def add(self, problem: str) -> None:
        self.total += 1
        if self.rejected is not None:
            self.rejected.write(json.dumps({"problem": problem}, ensure_ascii=False) + "\n")
        elif len(self.listed) < MAX_LISTED_PROBLEMS:
            self.listed.append(problem)

    def raise_if_any(self) -> None:
        if self.total and self.rejected is None:
            more = self.total - len(self.listed)
            raise DataError(self.listed + ([f"... and {more} more malformed rows not listed here"] if more else []))


def mapped_rows(path: str | Path, mapper: RowMapper, problems: Problems, *, format: str = "auto",
                split: str | None = None, skipped: Counter | None = None) -> Iterator[tuple[str, tuple[dict, Record]]]:
    """(where, (record as written, Record)) for each good row of one file, streamed; every bad
    row goes to `problems`, every row `mapper.skips` is counted in `skipped[mapper.source]`."""
    required, optional = mapper.needed_columns()
    for where, row in iter_rows(path, format, columns=required, optional=optional, split=split):
        if isinstance(row, str):
            problems.add(f"{where}: {row}")
            continue
        if mapper.skips(row):
            if skipped is not None:
                skipped[mapper.source] += 1
            continue
        try:
            yield where, mapper.record(row, where)
        except DataError as err:
            for problem in err.problems:
                problems.add(problem)


def _kind_name(kind: type) -> str:
    return {str: "a string", list: "a list"}.get(kind, kind.__name__)


def _conversation(turns: list, column: str, where: str) -> list[dict]:
    """LIMA's alternating strings, or ShareGPT / chat dicts, as our messages."""
    messages = []
    for k, turn in enumerate(turns):
        if isinstance(turn, str):
            role, content = ("user" if k % 2 == 0 else "assistant"), turn
        elif isinstance(turn, dict):
            speaker = str(turn.get("from", turn.get("role", ""))).lower()
            role, content = SPEAKERS.get(speaker), turn.get("value", turn.get("content"))
            if role is None:
                raise DataError([f"{where}: {column}[{k}]: unknown speaker {speaker!r} "
                                 f"(known: {', '.join(sorted(SPEAKERS))})"])
        else:
            raise DataError([f"{where}: {column}[{k}]: expected a string or a dict, got {type(turn).__name__}"])
        messages.append({"role": role, "content": content})
    return messages
