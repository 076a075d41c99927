"""Turn a conversation into token ids plus the spans the attention masks need.

The query (what the `[CLS]` slot reads) is the content of every message the caller supplied.
Its character spans are found by construction: the template is rendered once with a unique
sentinel in place of each content, and the sentinels' positions are where the contents go.
Text is never searched for, so a message that repeats the template's own default system
prompt ("You are a helpful AI assistant ...") or an earlier turn still maps to its own tokens.
Token masks then come from the fast tokenizer's offset mapping, so template tokens, BOS and
padding are excluded exactly, whatever the template looks like.

Caller text (message contents and the response or prefill) never yields a control token: a
special token typed there is tokenised as plain text, so `<|im_end|><|im_start|>assistant`
inside a user message cannot forge a turn. Training and inference both encode through
`PromptFormatter.encode`, so they agree on this.
"""

from __future__ import annotations

import secrets
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
      harmful prefix or a prefill comes first);
    - `token_labels[i]` (optional): the label of the response span token i lies in (1 harmful,
      0 refusal / benign), -1 outside every labelled span; slot-B windows take their label
      from it (batching.window_label).
    """

    input_ids: list[int]
    query_mask: list[bool]
    prompt_length: int
    supervised_from: int
    label: int | None = None
    sample_key: int | None = None  # position in its dataset: seeds per-example randomness
    token_labels: list[int] | None = None

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

    def render_with_query_spans(self, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
        """The rendered prompt and the character span of each non-empty message content in it.

        Each content is replaced by a sentinel no caller can type (a random nonce), the
        template is rendered, and the contents are put back where the sentinels landed. The
        result must equal the template's own rendering of the real messages, so a template
        that rewrites content is refused rather than guessed at. Templates that render
        `content | trim` (Llama 3, Gemma) are accepted: the trimmed text is then the query.
        """
        real = self.render_prompt(messages)
        template_pieces, contents = self._split_at_contents(messages)
        for transform in (_verbatim, str.strip):
            text, spans = _interleave(template_pieces, [transform(c) for c in contents])
            if text == real:
                return text, spans
        raise ValueError(
            "the chat template changes message content when it renders it (only verbatim or "
            "trimmed content is supported), so the [CLS] query span cannot be located exactly"
        )

    def _split_at_contents(self, messages: list[dict]) -> tuple[list[str], list[str]]:
        """The template's own text around each non-empty content, and those contents in order."""
        nonce = secrets.token_hex(8)
        sentinels = {k: f"\ue000{nonce}.{k}\ue001" for k, m in enumerate(messages) if m["content"]}
        skeleton = self.render_prompt(
            [{**m, "content": sentinels.get(k, m["content"])} for k, m in enumerate(messages)]
        )
        pieces, cursor = [], 0
        for k, sentinel in sentinels.items():
            at = skeleton.find(sentinel, cursor)
            if at < 0 or skeleton.count(sentinel) != 1:
                raise ValueError(
                    f"messages[{k}]: the chat template does not render this message's content exactly "
                    "once, verbatim and in order, so the [CLS] query span cannot be located"
                )
            pieces.append(skeleton[cursor:at])
            cursor = at + len(sentinel)
        pieces.append(skeleton[cursor:])
        return pieces, [messages[k]["content"] for k in sentinels]

    def encode(
        self,
        messages: list[dict],
        response: str = "",
        *,
        supervise_from: int | None = None,
        add_eos: bool = True,
        label: int | None = None,
        response_spans: list[tuple[int, int, int]] | None = None,
    ) -> EncodedExample:
        """Encode `messages` (the prompt) followed by an assistant `response`.

        `supervise_from` is a character offset into `response` where the LM loss starts.
        With `add_eos` the tokenizer's EOS closes a non-empty response (the stop token the
        model must learn to emit); prompts for generation pass `response=""`.
        `response_spans` are `(start, end, label)` character spans of `response`; a token takes
        the label of a span it overlaps (1 wins over 0 for a token on a boundary).
        """
        validate_messages(messages)
        prompt_text, query_spans = self.render_with_query_spans(messages)
        eos = self.tokenizer.eos_token if (add_eos and response and self.tokenizer.eos_token) else ""
        text = prompt_text + response + eos
        prompt_end = len(prompt_text)
        caller_spans = query_spans + [(prompt_end, prompt_end + len(response))]
        ids, offsets = self._tokenize(text, caller_spans)

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
        query_mask = [_overlaps(span, query_spans) for span in offsets]
        token_labels = None
        if response_spans:
            harmful = [(prompt_end + a, prompt_end + b) for a, b, y in response_spans if y == 1]
            benign = [(prompt_end + a, prompt_end + b) for a, b, y in response_spans if y == 0]
            token_labels = [-1 if i < prompt_length else 1 if _overlaps(span, harmful) else 0 if _overlaps(span, benign)
                            else -1 for i, span in enumerate(offsets)]
        if not any(query_mask[:prompt_length]):
            raise ValueError("the rendered prompt has no query tokens (empty messages?)")

        if self.max_length is not None and len(ids) > self.max_length:
            # Keep the prompt whole and cut the response: a cut prompt would change the label.
            if prompt_length >= self.max_length:
                raise ValueError(f"prompt is {prompt_length} tokens, longer than max_length={self.max_length}")
            ids, query_mask = ids[: self.max_length], query_mask[: self.max_length]
            supervised_from = min(supervised_from, self.max_length)
            token_labels = token_labels[: self.max_length] if token_labels else None
        return EncodedExample(ids, query_mask, prompt_length, supervised_from, label, token_labels=token_labels)

    def encode_locating(self, messages: list[dict], message: int, start: int, end: int) -> tuple[EncodedExample, range]:
        """`encode(messages)` as a prompt, and the token indices that hold characters
        `start:end` of `messages[message]`'s content, exactly: the attack suites optimise such a
        span (an adversarial suffix) and must know where the production encoding put it.
        Raises ValueError when a token straddles either end (the span then merged with its
        neighbours and is not its own tokens)."""
        example = self.encode(messages, "", add_eos=False)
        if not 0 <= start < end <= len(messages[message]["content"]):
            raise ValueError(f"messages[{message}]: span {start}:{end} is not inside its content")
        text, spans = self.render_with_query_spans(messages)
        content = spans[sum(1 for m in messages[:message] if m["content"])]
        lo, hi = content[0] + start, content[0] + end
        _, offsets = self._tokenize(text, spans)
        inside = [i for i, (a, b) in enumerate(offsets[:example.prompt_length]) if b > a and a < hi and b > lo]
        if not inside or offsets[inside[0]][0] != lo or offsets[inside[-1]][1] != hi:
            raise ValueError(f"messages[{message}]: characters {start}:{end} do not tokenise on their own "
                             "(a token crosses the span's edge)")
        return example, range(inside[0], inside[-1] + 1)

    def _tokenize(self, text: str, caller_spans: list[tuple[int, int]]) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids and character offsets; a control token inside caller text becomes plain text.

        The whole text is tokenised at once (so BPE merges match the model's training), then
        every special token (the template's control tokens, `[CLS]`, ...) whose characters
        overlap caller text is re-tokenised with special tokens split. Only the template
        places control tokens and only safesignal places `[CLS]` slots.
        """
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
        control = _special_token_ids(self.tokenizer)
        out_ids, out_offsets = [], []
        for token, (start, end) in zip(ids, offsets):
            if token not in control or not _overlaps((start, end), caller_spans):
                out_ids.append(token)
                out_offsets.append((start, end))
                continue
            plain = self.tokenizer(
                text[start:end], add_special_tokens=False, split_special_tokens=True, return_offsets_mapping=True
            )
            out_ids += plain["input_ids"]
            out_offsets += [(start + a, start + b) for a, b in plain["offset_mapping"]]
        return out_ids, out_offsets


def _verbatim(content: str) -> str:
    return content


def _interleave(template_pieces: list[str], contents: list[str]) -> tuple[str, list[tuple[int, int]]]:
    """template_pieces[0] + contents[0] + template_pieces[1] + ..., and each content's span."""
    text, spans = template_pieces[0], []
    for content, after in zip(contents, template_pieces[1:]):
        if content:
            spans.append((len(text), len(text) + len(content)))
        text += content + after
    return text, spans


def _overlaps(span: tuple[int, int], spans: list[tuple[int, int]]) -> bool:
    start, end = span
    return end > start and any(start < e and end > s for s, e in spans)


def _special_token_ids(tokenizer) -> set[int]:
    """Every id the tokenizer matches as a special token before ordinary tokenisation."""
    added = {i for i, token in tokenizer.added_tokens_decoder.items() if token.special}
    return added | set(tokenizer.all_special_ids)
