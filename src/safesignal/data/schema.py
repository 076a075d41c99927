"""The JSONL record schema and its validation.

One JSON object per line:

    {"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}],
     "label": 0 | 1, "source": "name", "prefill": "optional", "supervise_from": 0,
     "response_labels": [[0, 120, 1], [120, 300, 0]]}

or `prompt` + `response` instead of `messages`. A trailing assistant message is the response.
`label`: 1 malicious, 0 benign (a query-level label: a malicious request answered with a
refusal is still 1). `supervise_from` is the character offset in the response where the LM
loss starts (harmful-prefix recovery examples). `prefill` is assistant text placed before the
response at evaluation time; in training it counts as unsupervised response text.
`response_labels` (optional) labels parts of the response itself: `[start, end, label]`
character spans of `response`, sorted and non-overlapping, label 1 for harmful content and 0
for a refusal or benign text. They set the label of a `[CLS]` slot-B window (DESIGN.md §SFT
mask): 1 if the window holds a token of a harmful span, else 0 if every window token lies in
a span labelled 0, else the query label. Unlabelled text keeps the query label.

Every problem is reported with file, line and field; a bad record is never silently dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..formatting import validate_messages
from ..io import DataError
from ..io import read_jsonl as _read_jsonl_objects

KNOWN_FIELDS = {"messages", "prompt", "response", "label", "source", "prefill", "supervise_from", "response_labels",
                "meta", "id"}


@dataclass
class Record:
    messages: list[dict]  # the prompt: everything before the response
    response: str
    label: int
    source: str
    prefill: str | None = None
    supervise_from: int | None = None
    where: str = ""
    response_labels: list[tuple[int, int, int]] | None = None  # [start, end, label] spans of `response`

    @property
    def query(self) -> str:
        return "\n".join(m["content"] for m in self.messages if m["role"] == "user")

    def training_text(self) -> tuple[str, int | None]:
        """(response text, character offset where LM loss starts), prefill folded in."""
        if not self.prefill:
            return self.response, self.supervise_from
        start = len(self.prefill) + (self.supervise_from or 0)
        return self.prefill + self.response, start

    def training_spans(self) -> list[tuple[int, int, int]] | None:
        """`response_labels` as spans of the training text (shifted past a folded-in prefill)."""
        if not self.response_labels:
            return None
        shift = len(self.prefill or "")
        return [(start + shift, end + shift, label) for start, end, label in self.response_labels]


def parse_record(obj, where: str, *, require_response: bool = True) -> Record:
    """Validate one decoded JSON object; raises DataError naming `where` and the field."""

    def fail(field: str, message: str):
        raise DataError([f"{where}: {field}: {message}"])

    if not isinstance(obj, dict):
        fail("record", f"expected a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - KNOWN_FIELDS)
    if unknown:
        fail(unknown[0], f"unknown field (known: {', '.join(sorted(KNOWN_FIELDS))})")

    if "messages" in obj:
        if "prompt" in obj:
            fail("prompt", "give either 'messages' or 'prompt' + 'response', not both")
        messages = obj["messages"]
        try:
            validate_messages(messages, where="messages")
        except ValueError as err:  # already phrased as "messages[k].field: problem"
            raise DataError([f"{where}: {err}"]) from None
        messages = [dict(role=m["role"], content=m["content"]) for m in messages]
        response = ""
        if messages[-1]["role"] == "assistant":
            response = messages.pop()["content"]
        if "response" in obj:
            if response:
                fail("response", "given twice: as a field and as the last assistant message")
            response = obj["response"]
    elif "prompt" in obj:
        if not isinstance(obj["prompt"], str) or not obj["prompt"].strip():
            fail("prompt", "expected a non-empty string")
        messages = [{"role": "user", "content": obj["prompt"]}]
        response = obj.get("response", "")
    else:
        fail("messages", "missing: give 'messages' or 'prompt' (+ 'response')")

    if not isinstance(response, str):
        fail("response", f"expected a string, got {type(response).__name__}")
    if require_response and not response.strip():
        fail("response", "missing or empty (training records need an assistant response)")

    label = obj.get("label")
    if isinstance(label, bool) or label not in (0, 1):
        fail("label", f"expected 0 (benign) or 1 (malicious), got {label!r}")
    source = obj.get("source")
    if not isinstance(source, str) or not source:
        fail("source", "expected a non-empty string naming where the record came from")
    prefill = obj.get("prefill")
    if prefill is not None and not isinstance(prefill, str):
        fail("prefill", f"expected a string, got {type(prefill).__name__}")
    supervise_from = obj.get("supervise_from")
    if supervise_from is not None:
        if isinstance(supervise_from, bool) or not isinstance(supervise_from, int):
            fail("supervise_from", f"expected an integer character offset, got {supervise_from!r}")
        if not 0 <= supervise_from < max(len(response), 1):
            fail("supervise_from", f"{supervise_from} is outside the response (length {len(response)})")
    spans = _response_labels(obj.get("response_labels"), len(response), fail)
    return Record(messages, response, int(label), source, prefill, supervise_from, where, spans)


def _response_labels(value, length: int, fail) -> list[tuple[int, int, int]] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        fail("response_labels", f"expected a list of [start, end, label] spans, got {type(value).__name__}")
    spans, previous_end = [], 0
    for k, span in enumerate(value):
        field = f"response_labels[{k}]"
        if (not isinstance(span, list) or len(span) != 3
                or any(isinstance(x, bool) or not isinstance(x, int) for x in span)):
            fail(field, f"expected [start, end, label] with integer entries, got {span!r}")
        start, end, label = span
        if label not in (0, 1):
            fail(field, f"label must be 0 (refusal / benign) or 1 (harmful), got {label}")
        if not 0 <= start < end <= length:
            fail(field, f"[{start}, {end}) is not a non-empty span of the response (length {length})")
        if start < previous_end:
            fail(field, f"starts at {start}, before the previous span ends ({previous_end}): "
                        "spans must be sorted and must not overlap")
        spans.append((start, end, label))
        previous_end = end
    return spans


def read_jsonl(path: str | Path, *, require_response: bool = True) -> list[Record]:
    """Read and validate every line; raise one DataError listing every bad record."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: data file not found")
    records = _read_jsonl_objects(path, lambda obj, where: parse_record(obj, where, require_response=require_response))
    if not records:
        raise DataError([f"{path}: file: no records"])
    return records
