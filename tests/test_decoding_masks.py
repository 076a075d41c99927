"""The decoding attention rules of masks.py on hand-built slot layouts (DESIGN.md §Decoding)."""

from __future__ import annotations

import torch

from safesignal.masks import CLS, DEAD, NO_SLOT, TOKEN, decode_step_allowed, prefill_pass_allowed


def reads(allowed: torch.Tensor, row: int, query_row: int) -> list[int]:
    return allowed[row, query_row].nonzero().squeeze(1).tolist()


def test_decode_step_mask_on_a_hand_built_layout():
    # row 0: A p1 p2(query) t1 t2(rolled back) C1 | fed now: t3 and its check C2 over [2, 3]
    # row 1: pad A p1 p2 t1 pad | fed now: t2 and a dead filler; strategic attention off
    kind = torch.tensor([[CLS, TOKEN, TOKEN, TOKEN, TOKEN, CLS, TOKEN, CLS],
                         [DEAD, CLS, TOKEN, TOKEN, TOKEN, DEAD, TOKEN, DEAD]], dtype=torch.int8)
    live = kind == TOKEN
    live[0, 4] = False
    response_index = torch.tensor([[0, 0, 0, 1, 2, 0, 3, 0], [0, 0, 0, 0, 1, 0, 2, 0]])
    query = torch.zeros(2, 8, dtype=torch.bool)
    query[0, 2] = query[1, 3] = True
    allowed = decode_step_allowed(kind, live, response_index, query, 2, latest_cls=torch.tensor([5, 1]),
                                  reads_cls=torch.tensor([True, False]), window=torch.tensor([[2, 3], [0, 0]]),
                                  window_includes_query=torch.tensor([True, True]))
    assert allowed.shape == (2, 2, 8)
    assert reads(allowed, 0, 0) == [1, 2, 3, 5, 6]  # live tokens so far + the previous [CLS] C1
    assert reads(allowed, 0, 1) == [2, 6, 7]  # query + live window tokens (t1 outside, t2 dead) + itself
    assert reads(allowed, 1, 0) == [2, 3, 4, 6]  # no [CLS] read with strategic attention off
    assert reads(allowed, 1, 1) == [7]  # a dead filler reads only itself


def test_prefill_pass_mask_without_the_query_in_slot_b():
    # one row: A p1 p2(query) f1 f2 B, slot B over the prefill f1..f2; rows from p2 read A
    attention = torch.ones(1, 6, dtype=torch.long)
    query = torch.tensor([[False, False, True, False, False, False]])
    window = torch.tensor([[False, False, False, True, True, False]])
    args = (attention, query, torch.tensor([0]), torch.tensor([2]), torch.tensor([5]), window, torch.tensor([4]))
    with_query = prefill_pass_allowed(*args, torch.tensor([True]))
    without = prefill_pass_allowed(*args, torch.tensor([False]))
    assert reads(with_query, 0, 5) == [2, 3, 4, 5]
    assert reads(without, 0, 5) == [3, 4, 5]
    assert reads(without, 0, 4) == [0, 1, 2, 3, 4]  # prefill rows read slot A, never B
    assert reads(without, 0, 0) == [0, 2]  # slot A still reads the query
    no_b = prefill_pass_allowed(attention, query, torch.tensor([0]), torch.tensor([2]), torch.tensor([NO_SLOT]),
                                torch.zeros_like(window), torch.tensor([6]), torch.tensor([False]))
    assert reads(no_b, 0, 0) == [0, 2]
