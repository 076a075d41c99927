"""Attention-mask rules for `[CLS]` slots, training and decoding, as pure tensor functions.

Everything here returns a boolean `allowed[b, i, j]` ("query row i may read key j") or turns
one into the 4-D additive float mask transformers accepts as-is on every backend. The rule
behind all of it: no token may influence the logits of an earlier row, directly or through a
`[CLS]` slot.

Sequence layout (left padded, one row of the batch):

    [pad ... pad] [CLS slot A] [prompt tokens ...] [response tokens ...] [CLS slot B]

Slot A (position id 0) reads itself and the query tokens. Slot B (position id 0, optional)
reads itself, the query and a window of response tokens ending at `window_end`; without a
window it is a dead slot that reads only itself. Ordinary rows are causal over ordinary
tokens; rows from `reader_start` (the last prompt row) up to `window_end` read slot A, rows
after `window_end` read slot B instead.
"""

from __future__ import annotations

import torch

NO_SLOT = -1


def _slot_onehot(index: torch.Tensor, length: int) -> torch.Tensor:
    """(B,) slot indices (NO_SLOT for none) -> (B, L) boolean one-hot."""
    positions = torch.arange(length, device=index.device)
    return positions[None, :] == index[:, None]


def sft_allowed(
    attention_mask: torch.Tensor,
    query_mask: torch.Tensor,
    slot_a: torch.Tensor,
    reader_start: torch.Tensor,
    slot_b: torch.Tensor | None = None,
    window_mask: torch.Tensor | None = None,
    window_end: torch.Tensor | None = None,
) -> torch.Tensor:
    """The SFT mask (DESIGN.md §SFT mask) as a (B, L, L) boolean tensor.

    attention_mask: (B, L) 1 for real tokens and slots, 0 for padding.
    query_mask:     (B, L) True on the query tokens slot A reads.
    slot_a:         (B,) index of slot A.
    reader_start:   (B,) first ordinary row that reads `[CLS]` (the last prompt row).
    slot_b:         (B,) index of slot B or NO_SLOT.
    window_mask:    (B, L) response tokens slot B reads; all False makes B a dead slot.
    window_end:     (B,) last window index; rows after it read B instead of A.
    """
    batch, length = attention_mask.shape
    device = attention_mask.device
    real = attention_mask.bool()
    if slot_b is None:
        slot_b = torch.full((batch,), NO_SLOT, dtype=torch.long, device=device)
    if window_mask is None:
        window_mask = torch.zeros_like(real)
    b_live = (slot_b != NO_SLOT) & window_mask.any(dim=1)
    if window_end is None or not b_live.any():
        window_end = torch.full((batch,), length, dtype=torch.long, device=device)
    window_end = torch.where(b_live, window_end, torch.full_like(window_end, length))

    onehot_a = _slot_onehot(slot_a, length)
    onehot_b = _slot_onehot(slot_b, length)
    is_slot = onehot_a | onehot_b
    ordinary = real & ~is_slot

    rows = torch.arange(length, device=device)
    causal = rows[:, None] >= rows[None, :]
    allowed = causal[None] & ordinary[:, :, None] & ordinary[:, None, :]

    reads_a = ordinary & (rows[None] >= reader_start[:, None]) & (rows[None] <= window_end[:, None])
    reads_b = ordinary & (rows[None] > window_end[:, None]) & b_live[:, None]
    allowed |= reads_a[:, :, None] & onehot_a[:, None, :]
    allowed |= reads_b[:, :, None] & onehot_b[:, None, :]

    query = query_mask.bool() & ordinary
    allowed |= onehot_a[:, :, None] & query[:, None, :]
    window = window_mask.bool() & ordinary & b_live[:, None]
    live_b = onehot_b & b_live[:, None]  # a dead slot B reads only itself
    allowed |= live_b[:, :, None] & (query | window)[:, None, :]
    return _with_self_attention(allowed)


def pretrain_allowed(attention_mask: torch.Tensor, slot_a: torch.Tensor) -> torch.Tensor:
    """The pretraining mask: `[CLS]` reads every real token, no row reads `[CLS]`.

    The LM computation is then exactly that of the model without `[CLS]`.
    """
    length = attention_mask.shape[1]
    real = attention_mask.bool()
    onehot_a = _slot_onehot(slot_a, length)
    ordinary = real & ~onehot_a
    rows = torch.arange(length, device=attention_mask.device)
    causal = rows[:, None] >= rows[None, :]
    allowed = causal[None] & ordinary[:, :, None] & ordinary[:, None, :]
    allowed |= onehot_a[:, :, None] & ordinary[:, None, :]
    return _with_self_attention(allowed)


def causal_allowed(attention_mask: torch.Tensor) -> torch.Tensor:
    """Plain causal attention over real tokens (no `[CLS]`): the plain-SFT baseline."""
    length = attention_mask.shape[1]
    real = attention_mask.bool()
    rows = torch.arange(length, device=attention_mask.device)
    causal = rows[:, None] >= rows[None, :]
    return _with_self_attention(causal[None] & real[:, :, None] & real[:, None, :])


def _with_self_attention(allowed: torch.Tensor) -> torch.Tensor:
    # Every row, padding included, reads at least itself: no softmax over an empty set, no NaN.
    length = allowed.shape[-1]
    return allowed | torch.eye(length, dtype=torch.bool, device=allowed.device)[None]


def to_additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, Q, K) boolean -> (B, 1, Q, K) additive mask: 0 where allowed, finfo.min elsewhere.

    Always float: eager attention adds a boolean mask as 0/1 and silently stops masking.
    """
    zero = torch.zeros((), dtype=dtype, device=allowed.device)
    blocked = torch.tensor(torch.finfo(dtype).min, dtype=dtype, device=allowed.device)
    return torch.where(allowed, zero, blocked)[:, None]


def position_ids_for(attention_mask: torch.Tensor, slot_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Position ids: `[CLS]` slots get 0, ordinary real tokens count 1, 2, ... after slot A.

    Without slots (plain SFT) real tokens count from 0. Padding gets 0 (it is masked out).
    """
    real = attention_mask.long()
    if slot_mask is None:
        return (real.cumsum(-1) - 1).clamp(min=0) * real
    ordinary = real * (~slot_mask.bool()).long()
    return ordinary.cumsum(-1) * ordinary


# ---------------------------------------------------------------------- decoding (DESIGN.md §Decoding)
# The decoder's cache holds slots of three kinds; a slot's metadata says who may read it.
DEAD, TOKEN, CLS = 0, 1, 2


def prefill_pass_allowed(
    attention_mask: torch.Tensor,
    query_mask: torch.Tensor,
    slot_a: torch.Tensor,
    reader_start: torch.Tensor,
    slot_b: torch.Tensor,
    window_mask: torch.Tensor,
    window_end: torch.Tensor,
    window_includes_query: torch.Tensor,
) -> torch.Tensor:
    """The decoder's prefill pass: the SFT mask, slot B being the prefill's first check.

    Per row: `reader_start` set past the end turns strategic attention off (no row reads
    `[CLS]`); `window_includes_query` False keeps the query out of slot B's window.
    """
    allowed = sft_allowed(attention_mask, query_mask, slot_a, reader_start, slot_b, window_mask, window_end)
    slot_b_row = _slot_onehot(slot_b, allowed.shape[-1])
    drop_query = query_mask.bool() & ~window_includes_query[:, None]
    return allowed & ~(slot_b_row[:, :, None] & drop_query[:, None, :])


def prompt_head_allowed(
    attention_mask: torch.Tensor,
    slot_a: torch.Tensor,
    slot_b: torch.Tensor,
    window_mask: torch.Tensor,
    window_includes_query: torch.Tensor,
    head_query: torch.Tensor,
) -> torch.Tensor:
    """(B, L, H): what the prefill pass's L rows may read of a prompt head of H tokens already
    in the cache (chunked prefill: the first prompt tokens ran in earlier forwards of their own).

    Head tokens are prompt tokens before the last prompt row, so exactly what the rules above
    give them: every ordinary row reads all of them (causal: they come first), slot A reads
    those in the query (`head_query`, (B, H)), a live slot B reads those too unless its window
    leaves the query out, a dead slot B and padding read none.
    """
    length = attention_mask.shape[1]
    onehot_a, onehot_b = _slot_onehot(slot_a, length), _slot_onehot(slot_b, length)
    ordinary = attention_mask.bool() & ~onehot_a & ~onehot_b
    b_reads_query = (slot_b != NO_SLOT) & window_mask.any(dim=1) & window_includes_query
    reads_query = onehot_a | (onehot_b & b_reads_query[:, None])
    return ordinary[:, :, None] | (reads_query[:, :, None] & head_query.bool()[:, None, :])


def decode_step_allowed(
    kind: torch.Tensor,
    live: torch.Tensor,
    response_index: torch.Tensor,
    query: torch.Tensor,
    width: int,
    latest_cls: torch.Tensor,
    reads_cls: torch.Tensor,
    window: torch.Tensor,
    window_includes_query: torch.Tensor,
) -> torch.Tensor:
    """(B, W, K) mask for one decode step: the last W of the K slots are the ones fed now.

    kind, live, response_index, query: (B, K) metadata of every slot, the W new ones included
    (response_index: 1-based index in the response, 0 for the prompt).
    latest_cls: (B,) the `[CLS]` slot the fed tokens read when `reads_cls` (B,) is True: the
    state from before this step (a refreshed state is read from the next step on).
    window: (B, 2) response-index range [lo, hi] the check in the last fed row reads; rows
    with lo = 0 do not check (their last fed row, if not a token, is a dead filler).

    Fed tokens read every live token up to themselves; a check reads the live tokens of its
    window (and the query where `window_includes_query`); every fed row reads itself.
    """
    keys = kind.shape[1]
    past = keys - width
    device = kind.device
    key_index = torch.arange(keys, device=device)
    fed_index = past + torch.arange(width, device=device)
    readable = (kind == TOKEN) & live  # (B, K)
    fed_token = kind[:, past:] == TOKEN  # (B, W)
    causal = key_index[None, None, :] <= fed_index[None, :, None]
    allowed = fed_token[:, :, None] & readable[:, None, :] & causal
    cls_key = (key_index[None, :] == latest_cls[:, None]) & reads_cls[:, None]
    allowed |= fed_token[:, :, None] & cls_key[:, None, :]

    lo, hi = window[:, 0:1], window[:, 1:2]
    checks = (lo > 0)[:, 0] & (kind[:, -1] == CLS)
    in_window = readable & (response_index >= lo) & (response_index <= hi)
    in_window |= query.bool() & window_includes_query[:, None]
    allowed[:, -1] |= in_window & checks[:, None]
    return allowed | (key_index[None, None, :] == fed_index[None, :, None])


# ---------------------------------------------------------------------- forced responses (issue 20)
def forced_allowed(
    attention_mask: torch.Tensor,
    query_mask: torch.Tensor,
    is_slot: torch.Tensor,
    reads: torch.Tensor,
    response_index: torch.Tensor,
    slot_window: torch.Tensor,
    slot_reads_query: torch.Tensor,
) -> torch.Tensor:
    """One forward over a prompt, a whole given response and every check the decoder would take
    over it, as a (B, L, L) boolean tensor: the decoder's prefill pass and steps, unrolled.

    is_slot:          (B, L) True on `[CLS]` slots (slot A and one slot per check).
    reads:            (B, L) the slot an ordinary row reads, NO_SLOT for none (rows before the
                      last prompt row, or strategic attention off).
    response_index:   (B, L) 1-based response index of each ordinary token, 0 for the prompt.
    slot_window:      (B, L, 2) response-index range [lo, hi] a slot reads; lo = 0 reads none
                      (slot A, or the first check of a response without prefill).
    slot_reads_query: (B, L) True where a slot reads the query (slot A always; a check where
                      `window_includes_query`).

    Ordinary rows are causal over ordinary tokens. Each slot reads itself, the query where told
    and the response tokens of its window; it is read only by the rows `reads` names.
    """
    length = attention_mask.shape[1]
    device = attention_mask.device
    real = attention_mask.bool()
    slot = is_slot.bool() & real
    ordinary = real & ~slot
    rows = torch.arange(length, device=device)
    causal = rows[:, None] >= rows[None, :]
    allowed = causal[None] & ordinary[:, :, None] & ordinary[:, None, :]
    reading = ordinary & (reads != NO_SLOT)
    allowed |= reading[:, :, None] & (rows[None, None, :] == reads[:, :, None])

    lo, hi = slot_window[..., 0:1], slot_window[..., 1:2]  # (B, L, 1): per slot row
    in_window = ordinary[:, None, :] & (lo > 0) & (response_index[:, None, :] >= lo) & (response_index[:, None, :] <= hi)
    in_query = (query_mask.bool() & ordinary)[:, None, :] & slot_reads_query[:, :, None]
    allowed |= slot[:, :, None] & (in_window | in_query)
    return _with_self_attention(allowed)
