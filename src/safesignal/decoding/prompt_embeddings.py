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

    def __post_init__(self):
        if self.vectors.dim() != 2 or self.vectors.shape[0] < 1:
            raise ValueError(f"prompt embeddings: vectors must be (S ≥ 1, hidden), got {tuple(self.vectors.shape)}")
        if self.start < 0:
            raise ValueError(f"prompt embeddings: start must be ≥ 0, got {self.start}")

    @property
    def stop(self) -> int:
        return self.start + self.vectors.shape[0]

    def check(self, prompt_length: int, hidden_size: int, where: str) -> None:
        """Raise, naming `where`, unless the vectors fit inside the prompt and the model."""
        if self.stop > prompt_length:
            raise ValueError(f"{where}: prompt embeddings cover tokens {self.start}:{self.stop}, past the prompt's "
                             f"{prompt_length} tokens")
        if self.vectors.shape[1] != hidden_size:
            raise ValueError(f"{where}: prompt embeddings have width {self.vectors.shape[1]}, the model {hidden_size}")

    def digest(self) -> str:
        """A short hash of the placement and the exact values (the cell fingerprint of a case)."""
        data = self.vectors.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
        return hashlib.sha256(f"{self.start}:{tuple(self.vectors.shape)}:".encode() + data).hexdigest()[:16]

    def to_json(self) -> dict:
        return {"start": self.start, "vectors": self.vectors.detach().float().cpu().tolist()}

    @classmethod
    def from_json(cls, data: dict) -> "PromptEmbeddings":
        return cls(int(data["start"]), torch.tensor(data["vectors"], dtype=torch.float32))


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
