"""The decoder's KV cache and what each of its slots is (DESIGN.md §Decoding).

Rows share one DynamicCache; slot j of row b is described by `kind` (dead, token or `[CLS]`),
`live` (a token not rolled back), `response_index` (1-based, 0 for the prompt) and `query`.
Rollback never touches the cache: it marks the row's tokens from S on dead, and the mask does
the rest. A slot stays needed while it is a live token or its row's latest `[CLS]` state;
columns needed by no row are dropped (`compact`), so a long batch does not grow without
bound. Rows leave with `keep_rows` and join with `merge`.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

from ..masks import TOKEN

# Compact once this many columns are dead in every row: each compaction copies the cache.
COMPACT_AT = 16


class Slots:
    def __init__(self, cache: DynamicCache, kind: torch.Tensor, response_index: torch.Tensor, query: torch.Tensor,
                 latest_cls: torch.Tensor):
        self.cache = cache
        self.kind = kind
        self.live = kind == TOKEN
        self.response_index = response_index
        self.query = query
        self.latest_cls = latest_cls  # (B,) the [CLS] slot the row's tokens read

    @staticmethod
    def new_cache() -> DynamicCache:
        return DynamicCache()  # built without the model config: no sliding-window eviction

    @property
    def length(self) -> int:
        return self.kind.shape[1]

    def append(self, kind: torch.Tensor, response_index: torch.Tensor) -> None:
        """Describe the W columns the coming forward writes."""
        self.kind = torch.cat([self.kind, kind], dim=1)
        self.live = torch.cat([self.live, kind == TOKEN], dim=1)
        self.response_index = torch.cat([self.response_index, response_index], dim=1)
        self.query = torch.cat([self.query, torch.zeros_like(kind, dtype=torch.bool)], dim=1)

    def kill_from(self, row: int, response_index: int) -> None:
        """Rollback: the row's response tokens from `response_index` on are read by nobody."""
        self.live[row] &= self.response_index[row] < response_index

    def needed(self) -> torch.Tensor:
        """(B, K): slots a future row may still read."""
        columns = torch.arange(self.length, device=self.kind.device)
        return ((self.kind == TOKEN) & self.live) | (columns[None, :] == self.latest_cls[:, None])

    def compact(self, force: bool = False) -> None:
        """Drop the columns no row needs (when there are COMPACT_AT of them, or any if `force`)."""
        keep = self.needed().any(dim=0)
        dropped = int((~keep).sum())
        if dropped == 0 or (dropped < COMPACT_AT and not force):
            return
        index = keep.nonzero().squeeze(1)
        for layer in self.cache.layers:
            layer.keys = layer.keys[:, :, index]
            layer.values = layer.values[:, :, index]
        new_column = keep.long().cumsum(0) - 1
        self.latest_cls = new_column[self.latest_cls]
        self.kind, self.live = self.kind[:, index], self.live[:, index]
        self.response_index, self.query = self.response_index[:, index], self.query[:, index]

    def merge(self, other: "Slots") -> None:
        """Append `other`'s rows (rows joining the batch). The side with fewer columns gets dead
        ones at its end: nobody reads them, and every new column comes after both."""
        width = max(self.length, other.length)
        for mine, theirs in zip(self.cache.layers, other.cache.layers):
            mine.keys = torch.cat([_pad_columns(mine.keys, width, 2), _pad_columns(theirs.keys, width, 2)])
            mine.values = torch.cat([_pad_columns(mine.values, width, 2), _pad_columns(theirs.values, width, 2)])
        for name in ("kind", "live", "response_index", "query"):
            setattr(self, name, torch.cat([_pad_columns(getattr(self, name), width, 1),
                                           _pad_columns(getattr(other, name), width, 1)]))
        self.latest_cls = torch.cat([self.latest_cls, other.latest_cls])

    def keep_rows(self, rows: list[int]) -> None:
        """Only these rows stay in the batch (the others have finished)."""
        index = torch.tensor(rows, dtype=torch.long, device=self.kind.device)
        self.cache.batch_select_indices(index)
        self.kind, self.live = self.kind[index], self.live[index]
        self.response_index, self.query = self.response_index[index], self.query[index]
        self.latest_cls = self.latest_cls[index]


def _pad_columns(tensor: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    """Zero-pad `tensor` along `dim` to `width` (zero is DEAD, not live, response index 0)."""
    missing = width - tensor.shape[dim]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor, tensor.new_zeros(shape)], dim=dim)
