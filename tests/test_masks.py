"""The attention-mask rules (DESIGN.md §SFT mask), on pure tensors and through the model.

The governing rule: no token may influence the logits of an earlier row, directly or through a
`[CLS]` slot. Every model test runs on tiny Llama, Mistral and Qwen2 with eager and sdpa.
"""

from __future__ import annotations

import pytest
import torch
from conftest import (
    ARCHS,
    CONVERSATION,
    RESPONSE,
    cls_logit,
    encode_batch,
    make_safety_model,
    ordinary_positions,
    ordinary_start,
    other_token,
    repeat_batch,
    set_window,
)

from safesignal.batching import allowed_for, positions_for
from safesignal.masks import NO_SLOT, pretrain_allowed, sft_allowed, to_additive

pytestmark = pytest.mark.usefixtures("no_grad")

ATOL = 1e-5
CHANGED = 1e-4  # a genuine change is orders of magnitude above fp32 noise (~1e-7)


# ====================================================================== pure mask functions
# Two rows of length 12.
# row 0: pads 0,1 | A=2 | prompt 3..6 (query 4,5), reader_start=6 | response 7..10 | B=11 live
#        over window 8..9, window_end=9
# row 1: A=0 | prompt 1..5 (query 2,3,4), reader_start=5 | response 6..10 | B=11 dead
L = 12


def _layout():
    attention_mask = torch.ones(2, L, dtype=torch.long)
    attention_mask[0, :2] = 0
    query = torch.zeros(2, L, dtype=torch.bool)
    query[0, [4, 5]] = True
    query[1, [2, 3, 4]] = True
    window = torch.zeros(2, L, dtype=torch.bool)
    window[0, [8, 9]] = True
    return dict(
        attention_mask=attention_mask,
        query_mask=query,
        slot_a=torch.tensor([2, 0]),
        reader_start=torch.tensor([6, 5]),
        slot_b=torch.tensor([11, 11]),
        window_mask=window,
        window_end=torch.tensor([9, L]),
    )


def _reads(allowed, row, i):
    return set(torch.nonzero(allowed[row, i]).flatten().tolist())


@pytest.fixture
def allowed():
    return sft_allowed(**_layout())


def test_slot_a_reads_itself_and_query_only(allowed):
    assert _reads(allowed, 0, 2) == {2, 4, 5}
    assert _reads(allowed, 1, 0) == {0, 2, 3, 4}


def test_dead_slot_b_reads_only_itself(allowed):
    assert _reads(allowed, 1, 11) == {11}
    # and nobody reads a dead slot
    assert not allowed[1, :11, 11].any()


def test_live_slot_b_reads_itself_query_and_window(allowed):
    assert _reads(allowed, 0, 11) == {11, 4, 5, 8, 9}


def test_rows_up_to_window_end_read_a_later_rows_read_b(allowed):
    for i in range(6, 10):  # reader_start .. window_end
        assert allowed[0, i, 2] and not allowed[0, i, 11], i
    for i in (10,):  # after window_end
        assert allowed[0, i, 11] and not allowed[0, i, 2], i
    # dead B: every row from reader_start reads A to the end
    for i in range(5, 11):
        assert allowed[1, i, 0] and not allowed[1, i, 11], i


def test_prompt_rows_before_reader_start_read_no_slot(allowed):
    for i in range(3, 6):
        assert not allowed[0, i, 2] and not allowed[0, i, 11], i
    for i in range(1, 5):
        assert not allowed[1, i, 0] and not allowed[1, i, 11], i


def test_ordinary_rows_are_causal_over_ordinary_tokens(allowed):
    # row 0, response row 10: every ordinary token 3..10 plus slot B, no pads, no future
    assert _reads(allowed, 0, 10) == set(range(3, 11)) | {11}
    # row 1, prompt row 3: ordinary tokens 1..3 only
    assert _reads(allowed, 1, 3) == {1, 2, 3}


def test_pad_rows_read_only_themselves_and_nobody_reads_pads(allowed):
    for p in (0, 1):
        assert _reads(allowed, 0, p) == {p}
        assert not allowed[0, 2:, p].any()


def test_window_without_slot_b_is_ignored():
    layout = _layout()
    layout["slot_b"] = torch.tensor([NO_SLOT, NO_SLOT])
    layout["attention_mask"][:, 11] = 0  # position 11 becomes padding
    allowed = sft_allowed(**layout)
    # without a slot B every reader reads A to the end, even past the stale window_end
    assert allowed[0, 6:11, 2].all()
    assert _reads(allowed, 0, 11) == {11}


def test_pretrain_mask_cls_reads_everything_nobody_reads_cls():
    layout = _layout()
    allowed = pretrain_allowed(layout["attention_mask"], layout["slot_a"])
    assert _reads(allowed, 0, 2) == set(range(2, 12))
    assert _reads(allowed, 1, 0) == set(range(12))
    assert not allowed[0, 3:, 2].any()
    assert not allowed[1, 1:, 0].any()
    assert _reads(allowed, 0, 7) == set(range(3, 8))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_to_additive_is_float_with_finfo_min(allowed, dtype):
    mask = to_additive(allowed, dtype)
    assert mask.dtype == dtype
    assert mask.shape == (2, 1, L, L)
    assert torch.isfinite(mask).all()  # never -inf
    assert (mask[:, 0][allowed] == 0).all()
    assert (mask[:, 0][~allowed] == torch.finfo(dtype).min).all()


# ====================================================================== masking is really active
@pytest.mark.parametrize("arch", ARCHS)
def test_float_mask_is_applied_on_both_backends(arch):
    """Eager with our float mask differs from no mask, and matches sdpa with the same mask."""
    eager = make_safety_model(arch, "eager")
    sdpa = make_safety_model(arch, "sdpa")
    batch, *_ = _sft_batch_with_window(eager)
    mask = to_additive(allowed_for(batch), torch.float32)
    pos = positions_for(batch)
    h_eager = eager.hidden_states(batch["input_ids"], mask, pos)
    h_sdpa = sdpa.hidden_states(batch["input_ids"], mask, pos)
    h_open = eager.hidden_states(batch["input_ids"], torch.zeros_like(mask), pos)
    assert (h_eager - h_open).abs().max() > 0.1
    torch.testing.assert_close(h_eager, h_sdpa, atol=ATOL, rtol=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_registered_attention_matches_transformers_sdpa(arch):
    """SafetyModel swaps `sdpa` for `safesignal_sdpa` (no repeat_kv on CPU): same numbers."""
    from safesignal import attention

    sm = make_safety_model(arch, "sdpa")
    assert sm.base.config._attn_implementation == attention.NAME
    batch, *_ = _sft_batch_with_window(sm)
    mask = to_additive(allowed_for(batch), torch.float32)
    pos = positions_for(batch)
    ours = sm.hidden_states(batch["input_ids"], mask, pos)
    sm.base.set_attn_implementation("sdpa")
    try:
        theirs = sm.hidden_states(batch["input_ids"], mask, pos)
    finally:
        sm.base.set_attn_implementation(attention.NAME)
    torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=0)


# ====================================================================== the governing rule
def _perturbed_forward(sm, batch, positions):
    """One forward over copies of a one-row batch, copy k with token positions[k] replaced."""
    stacked = repeat_batch(batch, len(positions) + 1)
    for k, j in enumerate(positions, start=1):
        stacked["input_ids"][k, j] = other_token(sm, int(batch["input_ids"][0, j]))
    return sm.forward_batch(stacked)


def _leaks(sm, batch, positions):
    """(j, row) pairs where changing token j changed the LM logits of an earlier ordinary row."""
    hidden = _perturbed_forward(sm, batch, positions)
    logits = sm.lm_logits(hidden)
    ordinary = ordinary_positions(batch, 0)
    leaks = []
    for k, j in enumerate(positions, start=1):
        earlier = ordinary[ordinary < j]
        diff = (logits[k, earlier] - logits[0, earlier]).abs().amax(dim=-1)
        leaks += [(j, int(earlier[i])) for i in torch.nonzero(diff > ATOL).flatten()]
        # the perturbation itself is visible (the test has power)
        assert (logits[k, j] - logits[0, j]).abs().max() > CHANGED
    return leaks


def _sft_batch_with_window(sm):
    batch, (ex,) = encode_batch(sm, [(CONVERSATION, RESPONSE, 1)], slot_b=True)
    p, n = ex.prompt_length, len(ex.input_ids)
    assert n - p >= 12, "response too short for the window layout"
    first, last = p + 3, p + 8  # response rows before, inside and after the window
    set_window(batch, 0, first, last)
    start = ordinary_start(batch, 0)
    query = [start + i for i, q in enumerate(ex.query_mask) if q]
    response = list(range(start + p, start + n))
    window = list(range(start + first, start + last + 1))
    return batch, ex, query, response, window


def test_sft_no_token_changes_earlier_rows(safety_model):
    sm = safety_model
    batch, ex, query, response, _ = _sft_batch_with_window(sm)
    start = ordinary_start(batch, 0)
    prompt_positions = [start, query[0], query[-1], start + ex.prompt_length - 1]
    assert _leaks(sm, batch, prompt_positions + response) == []


def test_leak_checker_catches_broken_masks(safety_model):
    """The rule test has power: masks that let earlier rows read a slot are caught."""
    sm = safety_model
    batch, _, query, response, window = _sft_batch_with_window(sm)
    early = dict(batch, reader_start=batch["slot_a"] + 1)  # prompt rows read slot A
    assert _leaks(sm, early, [query[-1]])
    # slot B reading past its window end: rows after window_end read a later token through B
    late = dict(batch, window_mask=batch["window_mask"].clone())
    late["window_mask"][0, response[-1]] = True
    assert _leaks(sm, late, [response[-1]])


def test_cls_slots_read_only_their_spans(safety_model):
    sm = safety_model
    batch, _, query, response, window = _sft_batch_with_window(sm)
    window_end = int(batch["window_end"][0])
    after_window = [j for j in response if j > window_end]
    positions = [query[0]] + window + after_window
    hidden = _perturbed_forward(sm, batch, positions)
    a = cls_logit(sm, hidden, repeat_batch(batch, len(positions) + 1)["slot_a"])
    b = cls_logit(sm, hidden, repeat_batch(batch, len(positions) + 1)["slot_b"])
    for k, j in enumerate(positions, start=1):
        if j in response:  # slot A never sees the response
            assert abs(a[k] - a[0]) < ATOL, j
        else:  # a query token changes A
            assert abs(a[k] - a[0]) > CHANGED, j
        if j > window_end:  # tokens after B's window never change it
            assert abs(b[k] - b[0]) < ATOL, j
        else:  # query and window tokens do
            assert abs(b[k] - b[0]) > CHANGED, j


# ====================================================================== the CLS embedding
def _with_cls_embedding_change(sm, batch):
    before = sm.forward_batch(batch)
    gen = torch.Generator().manual_seed(0)
    sm.cls_embedding.add_(torch.randn(sm.cls_embedding.shape, generator=gen))
    after = sm.forward_batch(batch)
    return before, after


def test_cls_embedding_reaches_exactly_the_reader_rows(safety_model):
    sm = safety_model
    batch, _, _, _, _ = _sft_batch_with_window(sm)
    before, after = _with_cls_embedding_change(sm, batch)
    diff = (sm.lm_logits(after) - sm.lm_logits(before)).abs().amax(dim=-1)[0]
    ordinary = ordinary_positions(batch, 0)
    reader_start = int(batch["reader_start"][0])
    assert diff[ordinary[ordinary < reader_start]].max() < ATOL
    readers = ordinary[ordinary >= reader_start]
    assert len(readers) > 10
    # every reader row changes: those up to window_end through A, later ones through B
    assert diff[readers].min() > CHANGED


def test_pretrain_cls_embedding_changes_no_lm_logit(safety_model):
    sm = safety_model
    batch, _ = encode_batch(sm, [(CONVERSATION, RESPONSE, 1)], mask_mode="pretrain")
    assert int(batch["slot_b"][0]) == NO_SLOT
    before, after = _with_cls_embedding_change(sm, batch)
    ordinary = ordinary_positions(batch, 0)
    torch.testing.assert_close(sm.lm_logits(after)[0, ordinary], sm.lm_logits(before)[0, ordinary], atol=ATOL, rtol=0)
    slot = batch["slot_a"]
    assert abs(cls_logit(sm, after, slot) - cls_logit(sm, before, slot)) > CHANGED


def test_pretrain_lm_equals_the_model_without_cls(safety_model):
    """Under the pretraining mask the LM rows compute exactly what the bare model computes."""
    sm = safety_model
    batch, (ex,) = encode_batch(sm, [(CONVERSATION, RESPONSE, 1)], mask_mode="pretrain")
    hidden = sm.forward_batch(batch)
    plain = sm.base(input_ids=torch.tensor([ex.input_ids])).logits[0]
    torch.testing.assert_close(sm.lm_logits(hidden)[0, ordinary_positions(batch, 0)], plain, atol=ATOL, rtol=0)


def test_pretrain_cls_reads_every_token(safety_model):
    sm = safety_model
    batch, _ = encode_batch(sm, [(CONVERSATION, RESPONSE, 1)], mask_mode="pretrain")
    ordinary = ordinary_positions(batch, 0)
    positions = [int(ordinary[0]), int(ordinary[-1])]  # first template token, last response token (EOS)
    query_first = int(torch.nonzero(batch["query_mask"][0])[0])
    positions.append(query_first)
    hidden = _perturbed_forward(sm, batch, positions)
    a = cls_logit(sm, hidden, repeat_batch(batch, len(positions) + 1)["slot_a"])
    for k, j in enumerate(positions, start=1):
        assert abs(a[k] - a[0]) > CHANGED, j
