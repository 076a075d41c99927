"""Next-token choice for one row: greedy, or seeded sampling with temperature / top-k / top-p."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class Sampling:
    """Decoding parameters of one request (greedy unless do_sample). Each row has its own
    generator seeded with `seed`, so a sampled batch equals its rows run alone."""

    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    seed: int | None = None

    def __post_init__(self):
        if self.temperature <= 0:
            raise ValueError(f"temperature: must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p: must be in (0, 1], got {self.top_p}")
        if self.top_k < 0 or self.repetition_penalty <= 0:
            raise ValueError("top_k must be ≥ 0 and repetition_penalty > 0")


class Sampler:
    """Chooses a row's tokens. With `forced` ids it emits exactly those, in order, whatever
    the logits say (forced decoding: the checks see a given answer), until `stop_forcing`."""

    def __init__(self, sampling: Sampling, device: torch.device, forced: list[int] | None = None):
        self.sampling = sampling
        self.generator = None
        if sampling.seed is not None:
            self.generator = torch.Generator(device=device).manual_seed(sampling.seed)
        self.forced = list(forced) if forced is not None else None
        self.forced_taken = 0

    @property
    def forcing(self) -> bool:
        return self.forced is not None

    def stop_forcing(self) -> None:
        """The model chooses from here on (after an injection the forced answer is void)."""
        self.forced = None

    def choose(self, logits: torch.Tensor, seen: list[int]) -> int:
        """One token id from (V,) float logits; `seen` ids get the repetition penalty."""
        if self.forced is not None:
            self.forced_taken += 1
            return self.forced[self.forced_taken - 1]
        s = self.sampling
        scores = logits.clone()
        if s.repetition_penalty != 1.0:
            index = torch.tensor(sorted(set(seen)), dtype=torch.long, device=scores.device)
            values = scores[index]
            scores[index] = torch.where(values > 0, values / s.repetition_penalty, values * s.repetition_penalty)
        if not s.do_sample:
            return int(scores.argmax())
        scores = scores / s.temperature
        if s.top_k:
            kth = torch.topk(scores, min(s.top_k, scores.numel())).values[-1]
            scores = scores.masked_fill(scores < kth, -math.inf)
        if s.top_p < 1.0:
            ordered, order = torch.sort(scores, descending=True)
            probabilities = torch.softmax(ordered, dim=-1)
            drop = probabilities.cumsum(-1) - probabilities >= s.top_p  # keep the token that crosses p
            scores[order[drop]] = -math.inf
        return int(torch.multinomial(torch.softmax(scores, dim=-1), 1, generator=self.generator))
