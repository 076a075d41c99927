"""Turn a conversation into token ids plus the spans the attention masks need.

The query span (the user-visible text the `[CLS]` slot reads) is computed from the fast
tokenizer's offset mapping over the rendered chat template, so template tokens, the system
prompt, BOS and padding are excluded exactly, whatever the template looks like.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

# Used when a tokenizer ships without a chat template. Documented in the README; the
# checkpoint saves it with the tokenizer so a reloaded model renders prompts identically.
PLAIN_CHAT_TEMPLATE = (
    "{{ bos_token if bos_token else '' }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}### System:\n{{ message['content'] }}\n\n"
    "{% elif message['role'] == 'user' %}### User:\n{{ message['content'] }}\n\n"
    "{% else %}### Assistant:\n{{ message['content'] }}{{ eos_token }}\n\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}### Assistant:\n{% endif %}"
)

VALID_ROLES = ("system", "user", "assistant")


@dataclass
class EncodedExample:
    """One conversation as token ids, without `[CLS]` slots (the collator adds them).

    Index conventions (all into `input_ids`):
    - `query_mask[i]`: token i overlaps user-visible text (what slot A reads);
    - `prompt_length`: tokens of the prompt incl. the generation prompt; the response starts there;
    - `supervised_from`: first response token with LM loss (== prompt_length unless a
      harmful prefix or a prefill comes first).
    """

    input_ids: list[int]
    query_mask: list[bool]
    prompt_length: int
    supervised_from: int
    label: int | None = None
    sample_key: int | None = None  # position in its dataset: seeds per-example randomness

    @property
    def response_length(self) -> int:
        return len(self.input_ids) - self.prompt_length


def ensure_chat_template(tokenizer, *, source: str = "tokenizer") -> bool:
    """Give a template-less tokenizer the documented plain template. Returns True if it did."""
    if getattr(tokenizer, "chat_template", None):
        return False
    warnings.warn(
        f"{source} has no chat template; using safesignal's plain template "
        "('### User:' / '### Assistant:' blocks, see README §Chat template). "
        "Set tokenizer.chat_template to override.",
        stacklevel=2,
    )
    tokenizer.chat_template = PLAIN_CHAT_TEMPLATE
    return True


def validate_messages(messages, *, where: str = "messages") -> None:
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"{where}: expected a non-empty list of {{'role', 'content'}} dicts")
    for k, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise ValueError(f"{where}[{k}]: expected a dict with 'role' and 'content'")
        if m["role"] not in VALID_ROLES:
            raise ValueError(f"{where}[{k}].role: {m['role']!r} is not one of {VALID_ROLES}")
        if not isinstance(m["content"], str):
            raise ValueError(f"{where}[{k}].content: expected a string")
    if not any(m["role"] == "user" for m in messages):
        raise ValueError(f"{where}: no user message, so there is no query for [CLS] to read")


class PromptFormatter:
    """Renders conversations with the tokenizer's chat template and tokenises with offsets."""

    def __init__(self, tokenizer, max_length: int | None = None):
        if not getattr(tokenizer, "is_fast", False):
            raise TypeError(
                f"{type(tokenizer).__name__} is not a fast tokenizer: safesignal needs offset "
                "mappings to find the query span. Load it with use_fast=True."
            )
        self.tokenizer = tokenizer
        self.max_length = max_length

    def render_prompt(self, messages: list[dict]) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def encode(
        self,
        messages: list[dict],
        response: str = "",
        *,
        supervise_from: int | None = None,
        add_eos: bool = True,
        label: int | None = None,
    ) -> EncodedExample:
        """Encode `messages` (the prompt) followed by an assistant `response`.

        `supervise_from` is a character offset into `response` where the LM loss starts.
        With `add_eos` the tokenizer's EOS closes a non-empty response (the stop token the
        model must learn to emit); prompts for generation pass `response=""`.
        """
        validate_messages(messages)
        prompt_text = self.render_prompt(messages)
        query_spans = _user_content_spans(prompt_text, messages)
        eos = self.tokenizer.eos_token if (add_eos and response and self.tokenizer.eos_token) else ""
        text = prompt_text + response + eos
        ids, offsets = self._tokenize(text)

        prompt_end = len(prompt_text)
        # A token belongs to the response once it starts at or after the prompt's end; BPE
        # merges across the boundary are rare with chat templates (they end in a newline or
        # a special token) and are then counted as prompt, which never leaks response text.
        prompt_length = next((i for i, (s, _) in enumerate(offsets) if s >= prompt_end), len(ids))
        if response and prompt_length == len(ids):
            raise ValueError("response produced no tokens of its own")
        start_char = prompt_end + (supervise_from or 0)
        supervised_from = next(
            (i for i in range(prompt_length, len(ids)) if offsets[i][0] >= start_char), len(ids)
        )
        query_mask = [any(s < qe and e > qs for qs, qe in query_spans) and e > s for s, e in offsets]
        if not any(query_mask[:prompt_length]):
            raise ValueError("the rendered prompt has no query tokens (empty user message?)")

        if self.max_length is not None and len(ids) > self.max_length:
            # Keep the prompt whole and cut the response: a cut prompt would change the label.
            if prompt_length >= self.max_length:
                raise ValueError(f"prompt is {prompt_length} tokens, longer than max_length={self.max_length}")
            ids, query_mask = ids[: self.max_length], query_mask[: self.max_length]
            supervised_from = min(supervised_from, self.max_length)
        return EncodedExample(ids, query_mask, prompt_length, supervised_from, label)


    def _tokenize(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids and character offsets; a literal `[CLS]` in the text stays plain text.

        Only safesignal places `[CLS]` slots: a user who types the token string must not get
        the safety token's embedding, so those matches are re-tokenised as ordinary text.
        """
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
        cls_id = self.tokenizer.cls_token_id
        if cls_id is None or cls_id not in ids:
            return ids, offsets
        out_ids, out_offsets = [], []
        for token, (start, end) in zip(ids, offsets):
            if token != cls_id:
                out_ids.append(token)
                out_offsets.append((start, end))
                continue
            plain = self.tokenizer(
                text[start:end], add_special_tokens=False, split_special_tokens=True, return_offsets_mapping=True
            )
            out_ids += plain["input_ids"]
            out_offsets += [(start + a, start + b) for a, b in plain["offset_mapping"]]
        return out_ids, out_offsets


def _user_content_spans(text: str, messages: list[dict]) -> list[tuple[int, int]]:
    """Character spans of each user message's content inside the rendered prompt."""
    spans, cursor = [], 0
    for m in messages:
        content = m["content"]
        if not content:
            continue
        at = text.find(content, cursor)
        if at < 0:
            if m["role"] == "user":
                raise ValueError("chat template altered the user message; cannot locate the query span")
            continue
        cursor = at + len(content)
        if m["role"] == "user":
            spans.append((at, cursor))
    return spans
