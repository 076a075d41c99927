"""SafetyModel.forward as the trainer uses it: split batches, precision, bad token ids."""

import random

import pytest
import torch

from safesignal.batching import WindowSampler, collate, loss_item_counts

from conftest import CONVERSATIONS, make_safety_model


def collated(sm, items, keys=None):
    """Collate with every slot B live; each example's window drawn from its own key's RNG."""
    examples = [sm.formatter.encode(m, r, label=y) for m, r, y in items]
    keys = range(len(items)) if keys is None else keys
    return collate(
        examples,
        cls_token_id=sm.cls_token_id,
        pad_token_id=sm.tokenizer.pad_token_id,
        window_sampler=WindowSampler(dead_fraction=0.0),
        rng=[random.Random(f"window/{key}") for key in keys],
    )


def gradients(sm):
    grads = [p.grad.detach().clone() for p in sm.parameters() if p.grad is not None]
    sm.zero_grad(set_to_none=True)
    return grads


def test_split_batch_with_global_counts_gives_the_gradient_of_the_whole_batch():
    sm = make_safety_model("llama", "sdpa").train()
    whole = collated(sm, CONVERSATIONS)
    sm(**whole, cls_loss_weight=0.5).loss.backward()
    expected = gradients(sm)

    # The same examples as two micro-batches (each padded to its own length), both
    # normalised by the whole batch's counts, as ranks / accumulation steps are.
    counts = loss_item_counts(whole)
    for keys in ([0], [1, 2]):
        batch = collated(sm, [CONVERSATIONS[k] for k in keys], keys)
        sm(**batch, cls_loss_weight=0.5, num_items_in_batch=counts).loss.backward()
    got = [p.grad for p in sm.parameters() if p.grad is not None]
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-4)


def test_per_example_windows_do_not_depend_on_the_batch():
    sm = make_safety_model("llama", "sdpa")
    whole = collated(sm, CONVERSATIONS)
    alone = collated(sm, CONVERSATIONS[1:2], keys=[1])

    def window(batch, row):  # window positions relative to the row's first ordinary token
        start = int(batch["slot_a"][row]) + 1
        return batch["window_mask"][row, start:].nonzero().flatten()

    assert window(whole, 1).numel() > 0
    assert torch.equal(window(whole, 1), window(alone, 0))


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("precision", ["bf16_weights", "fp32_weights_bf16_autocast"])
def test_bf16_forward_and_backward_match_fp32(attn, precision):
    sm = make_safety_model("llama", attn).train()
    batch = collated(sm, CONVERSATIONS)
    with torch.no_grad():
        reference = sm(**batch, cls_loss_weight=1.0)
    if precision == "bf16_weights":
        sm = sm.to(torch.bfloat16)
        out = sm(**batch, cls_loss_weight=1.0)
    else:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = sm(**batch, cls_loss_weight=1.0)
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in sm.parameters() if p.grad is not None)
    # bf16 keeps ~3 significant digits: the losses agree to a few per cent.
    torch.testing.assert_close(out.lm_loss.float(), reference.lm_loss, rtol=0.03, atol=0)
    torch.testing.assert_close(out.cls_loss.float(), reference.cls_loss, rtol=0.03, atol=0)


def test_out_of_range_token_ids_raise_instead_of_reading_row_zero():
    sm = make_safety_model("llama", "sdpa")
    batch = collated(sm, CONVERSATIONS)
    vocab = sm.base.get_input_embeddings().num_embeddings
    batch["input_ids"][0, -2] = vocab + 5
    with pytest.raises(ValueError, match=rf"input_ids: token id\(s\) \[{vocab + 5}\] outside the embedding matrix"):
        sm(**batch, cls_loss_weight=1.0)
    batch["input_ids"][0, -2] = -3
    with pytest.raises(ValueError, match=r"\[-3\] outside the embedding matrix"):
        sm(**batch, cls_loss_weight=1.0)


def test_labelled_forward_projects_only_the_supervised_rows_of_the_full_logits():
    sm = make_safety_model("llama", "sdpa")
    batch = collated(sm, CONVERSATIONS)
    with torch.no_grad():
        full = sm(**{k: v for k, v in batch.items() if k not in ("labels", "cls_labels")})
        labelled = sm(**batch, cls_loss_weight=1.0)
    targets = batch["labels"][:, 1:]
    supervised = targets != -100
    assert full.lm_logits.shape[:2] == batch["input_ids"].shape and full.loss is None
    torch.testing.assert_close(labelled.lm_logits, full.lm_logits[:, :-1][supervised])
    torch.testing.assert_close(labelled.cls_logits, full.cls_logits)
    # the LM loss is the token-mean cross-entropy of those rows, computed here independently
    log_probs = torch.log_softmax(full.lm_logits[:, :-1][supervised].float(), dim=-1)
    expected = -log_probs.gather(1, targets[supervised][:, None]).mean()
    torch.testing.assert_close(labelled.lm_loss, expected, atol=1e-5, rtol=1e-5)
