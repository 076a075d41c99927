"""Continuous vectors in place of some prompt tokens' embeddings: what a white-box embedding
attack feeds (its adversarial suffix is optimised in embedding space, so it has no tokens).

The prompt is still tokenised as usual, with placeholder text where the vectors go; the
placeholder's tokens keep their ids (for bookkeeping and the masks) and only their input
embeddings are replaced, once, in the pass that reads the prompt: every later step, check and
window reads those positions through the cache, as it would read a token suffix."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PromptEmbeddings:
    start: int  # index, in the encoded prompt, of the first token whose embedding is replaced
    vectors: torch.Tensor  # (S, H): the embeddings of prompt tokens start .. start + S - 1
    # The placeholder's token ids where the vectors go: a prompt encoded otherwise than the one
    # searched (another tokenizer, other text) is refused instead of overwriting other tokens.
    token_ids: tuple[int, ...] = ()

    def __post_init__(self):
        if self.vectors.dim() != 2 or self.vectors.shape[0] < 1:
            raise ValueError(f"prompt embeddings: vectors must be (S ≥ 1, hidden), got {tuple(self.vectors.shape)}")
        if self.start < 0:
            raise ValueError(f"prompt embeddings: start must be ≥ 0, got {self.start}")
        if self.token_ids and len(self.token_ids) != self.vectors.shape[0]:
            raise ValueError(f"prompt embeddings: {len(self.token_ids)} token ids for {self.vectors.shape[0]} vectors")

    @property
    def stop(self) -> int:
        return self.start + self.vectors.shape[0]

    def check(self, prompt_ids: list[int], hidden_size: int, where: str) -> None:
        """Raise, naming `where`, unless the vectors fit the prompt (`prompt_ids`: its token
        ids), sit on their placeholder's tokens and match the model's width."""
        if self.stop > len(prompt_ids):
            raise ValueError(f"{where}: prompt embeddings cover tokens {self.start}:{self.stop}, past the prompt's "
                             f"{len(prompt_ids)} tokens")
        if self.token_ids and tuple(prompt_ids[self.start:self.stop]) != tuple(self.token_ids):
            raise ValueError(f"{where}: prompt tokens {self.start}:{self.stop} are not the placeholder the vectors "
                             "were searched on (the prompt encodes otherwise)")
        if self.vectors.shape[1] != hidden_size:
            raise ValueError(f"{where}: prompt embeddings have width {self.vectors.shape[1]}, the model {hidden_size}")

    def digest(self) -> str:
        """A short hash of the placement and the exact values (the cell fingerprint of a case)."""
        data = self.vectors.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
        head = f"{self.start}:{tuple(self.vectors.shape)}:{list(self.token_ids)}:".encode()
        return hashlib.sha256(head + data).hexdigest()[:16]


def check_prompt_embeddings(sm, items) -> None:
    """`PromptEmbeddings.check` for each (override or None, its encoded example, where) of a
    batch, against `sm`'s embedding width: before any forward, on either decoding path."""
    width = sm.base.get_input_embeddings().weight.shape[1]
    for override, example, where in items:
        if override is not None:
            override.check(example.input_ids[:example.prompt_length], width, where)


def embeds_with(sm, input_ids: torch.Tensor, placements: list[tuple[int, int, PromptEmbeddings]]) -> torch.Tensor | None:
    """`sm.embed(input_ids)` with, for each (row, column of the row's first prompt token,
    override), the override's vectors in place of those tokens' embeddings; None when there is
    nothing to place (the caller then lets the model embed its ids)."""
    if not placements:
        return None
    embeds = sm.embed(input_ids).clone()
    for row, column, override in placements:
        a, b = column + override.start, column + override.stop
        embeds[row, a:b] = override.vectors.to(embeds.device, embeds.dtype)
    return embeds
