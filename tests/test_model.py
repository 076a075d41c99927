"""SafetyModel: left padding, batched classification, and the `[CLS]` vocabulary rules."""

from __future__ import annotations

import pytest
import torch
from conftest import (
    ARCH_ATTN,
    ARCH_ATTN_IDS,
    CONVERSATIONS,
    cls_logit,
    encode_batch,
    make_safety_model,
    ordinary_start,
    set_window,
)

from safesignal.model import SafetyModel
from safesignal.tiny import build_tiny, build_tiny_tokenizer

pytestmark = pytest.mark.usefixtures("no_grad")

ATOL = 1e-5


# ====================================================================== left padding
def _windowed(sm, items, windows):
    """Collate `items` with slot B; `windows[i]` = (first, last) response offsets or None (dead)."""
    batch, examples = encode_batch(sm, items, slot_b=True)
    for row, (ex, window) in enumerate(zip(examples, windows)):
        if window is not None:
            set_window(batch, row, ex.prompt_length + window[0], ex.prompt_length + window[1])
    return batch, examples


WINDOWS = [None, (2, 9), (0, 3)]  # dead, live mid-response, live at the response start


def test_left_padding_matches_each_row_alone(safety_model):
    sm = safety_model
    batch, examples = _windowed(sm, CONVERSATIONS, WINDOWS)
    lengths = {len(ex.input_ids) for ex in examples}
    assert len(lengths) == 3, "the test needs rows of different lengths"
    assert (batch["attention_mask"] == 0).any(dim=1).sum() == 2  # two rows are padded

    hidden = sm.forward_batch(batch)
    assert torch.isfinite(hidden).all()  # pad rows included: they attend to themselves
    logits = sm.lm_logits(hidden)
    slot_a = cls_logit(sm, hidden, batch["slot_a"])
    slot_b = cls_logit(sm, hidden, batch["slot_b"])

    for row, (item, window) in enumerate(zip(CONVERSATIONS, WINDOWS)):
        alone, _ = _windowed(sm, [item], [window])
        assert (alone["attention_mask"] == 1).all()
        h_alone = sm.forward_batch(alone)
        start = ordinary_start(batch, row) - 1  # slot A
        width = alone["input_ids"].shape[1]
        assert batch["input_ids"].shape[1] - start == width
        torch.testing.assert_close(logits[row, start:], sm.lm_logits(h_alone)[0], atol=ATOL, rtol=0)
        torch.testing.assert_close(slot_a[row], cls_logit(sm, h_alone, alone["slot_a"])[0], atol=ATOL, rtol=0)
        torch.testing.assert_close(slot_b[row], cls_logit(sm, h_alone, alone["slot_b"])[0], atol=ATOL, rtol=0)


def test_classify_batch_equals_classify(safety_model):
    sm = safety_model
    conversations = [messages for messages, _, _ in CONVERSATIONS]
    # a trailing assistant turn is ignored: the classifier reads the request
    conversations.append(CONVERSATIONS[0][0] + [{"role": "assistant", "content": "Hello."}])
    batched = sm.classify_batch(conversations)
    single = [sm.classify(m) for m in conversations]
    assert len(batched) == 4
    assert all(0.0 < p < 1.0 for p in batched)
    assert batched == pytest.approx(single, abs=1e-6)
    assert batched[3] == pytest.approx(batched[0], abs=1e-6)
    assert max(batched) - min(batched) > 1e-4  # different requests, different scores
    # a plain string is a user message
    assert sm.classify("Hi") == pytest.approx(batched[0], abs=1e-6)


def test_classify_matches_slot_a_of_a_training_batch(safety_model):
    """classify() reads the same slot-A state training supervises, responses notwithstanding."""
    sm = safety_model
    batch, _ = _windowed(sm, CONVERSATIONS, WINDOWS)
    hidden = sm.forward_batch(batch)
    probs = torch.sigmoid(cls_logit(sm, hidden, batch["slot_a"])).tolist()
    assert sm.classify_batch([m for m, _, _ in CONVERSATIONS]) == pytest.approx(probs, abs=1e-5)


# ====================================================================== vocabulary
def _embedding_sizes(model):
    return model.get_input_embeddings().weight.shape, model.get_output_embeddings().weight.shape


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_padded_vocabulary_is_never_resized_and_cls_never_emitted(attn):
    n_tok = len(build_tiny_tokenizer())
    model, tokenizer = build_tiny("qwen2", attn_implementation=attn, vocab_size=n_tok + 64)
    sizes = _embedding_sizes(model)
    sm = SafetyModel(model, tokenizer)
    assert _embedding_sizes(sm.base) == sizes
    assert sizes[0][0] == n_tok + 64
    assert n_tok <= sm.cls_token_id < sizes[0][0]  # reuses a spare row inside the matrix
    assert len(sm.tokenizer) == n_tok + 1

    with torch.no_grad():
        sm.base.get_output_embeddings().weight[sm.cls_token_id] = 1e3
        sm.base.get_input_embeddings().weight[sm.cls_token_id] = 1e3  # the spare row is not used
    batch, _ = encode_batch(sm, CONVERSATIONS)
    hidden = sm.forward_batch(batch)
    assert torch.isfinite(hidden).all()
    logits = sm.lm_logits(hidden)
    assert logits.shape[-1] == sizes[1][0]
    assert (logits[..., sm.cls_token_id] == torch.finfo(logits.dtype).min).all()
    real = batch["attention_mask"].bool()
    assert (logits.argmax(-1)[real] != sm.cls_token_id).all()

    # the [CLS] input comes from cls_embedding, never from the matrix row
    fresh = make_safety_model("qwen2", attn, vocab_size=n_tok + 64)
    fresh.head.load_state_dict(sm.head.state_dict())
    fresh.cls_embedding.copy_(sm.cls_embedding)
    torch.testing.assert_close(fresh.forward_batch(batch), hidden, atol=ATOL, rtol=0)


@pytest.mark.parametrize("arch_attn", ARCH_ATTN, ids=ARCH_ATTN_IDS)
def test_cls_outside_the_matrix(arch_attn):
    """Vocab == tokenizer: [CLS] gets a new id past the matrix, which is not grown."""
    arch, attn = arch_attn
    model, tokenizer = build_tiny(arch, attn_implementation=attn)
    sizes = _embedding_sizes(model)
    n_tok = len(tokenizer)
    assert sizes[0][0] == n_tok
    sm = SafetyModel(model, tokenizer)
    assert _embedding_sizes(sm.base) == sizes
    assert sm.cls_token_id == n_tok  # outside the output matrix: LM cannot emit it
    batch, _ = encode_batch(sm, CONVERSATIONS, slot_b=True)
    assert (batch["input_ids"] == sm.cls_token_id).sum() == 2 * len(CONVERSATIONS)
    hidden = sm.forward_batch(batch)
    assert torch.isfinite(hidden).all()
    logits = sm.lm_logits(hidden)
    assert logits.shape[-1] == n_tok
    assert torch.isfinite(logits).all()
    # the CLS row starts as the mean of the existing embedding rows
    torch.testing.assert_close(sm.cls_embedding, sm.base.get_input_embeddings().weight.mean(0))
    # and is what the model reads at the slots
    before = cls_logit(sm, hidden, batch["slot_a"])
    sm.cls_embedding.add_(1.0)
    assert (cls_logit(sm, sm.forward_batch(batch), batch["slot_a"]) - before).abs().min() > 1e-4


def test_tied_embeddings_mask_cls_logit():
    """Tied input/output embeddings: the [CLS] logit is still masked, nothing is resized."""
    model, tokenizer = build_tiny("qwen2", vocab_size=448)
    model.get_output_embeddings().weight = model.get_input_embeddings().weight
    assert model.get_input_embeddings().weight is model.get_output_embeddings().weight
    sizes = _embedding_sizes(model)
    sm = SafetyModel(model, tokenizer)
    assert _embedding_sizes(sm.base) == sizes
    assert sm.cls_token_id < 448
    batch, _ = encode_batch(sm, CONVERSATIONS[:1])
    logits = sm.lm_logits(sm.forward_batch(batch))
    assert (logits[..., sm.cls_token_id] == torch.finfo(logits.dtype).min).all()


def test_literal_cls_string_in_user_text_is_plain_text():
    """Only safesignal places [CLS]: typing the token string gets ordinary tokens, not the slot."""
    sm = make_safety_model("llama", "sdpa")
    ex = sm.formatter.encode([{"role": "user", "content": "ignore this [CLS] please"}], "ok")
    assert sm.cls_token_id not in ex.input_ids
    query = sm.tokenizer.decode([t for t, q in zip(ex.input_ids, ex.query_mask) if q])
    assert query == "ignore this [CLS] please"


def test_merge_lora_keeps_the_outputs():
    from conftest import make_safety_model

    sm = make_safety_model("llama", "eager").add_lora(r=4).eval()  # LoRA dropout off
    with torch.no_grad():
        for name, param in sm.model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)  # B starts at zero: make the adapter matter
    messages = [[{"role": "user", "content": "hello there"}], [{"role": "user", "content": "how are you today?"}]]
    before = sm.classify_batch(messages)
    merged = sm.merge_lora()
    assert merged.config.adapter is None and not hasattr(merged.model, "peft_config")
    assert merged.classify_batch(messages) == pytest.approx(before, abs=1e-5)
