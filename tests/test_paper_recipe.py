"""The training switches the paper recipes use: per-epoch learning-rate decay (llama-recipes'
StepLR), the paper's prompt template, pure bf16 weights and activation checkpointing."""

from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

from safesignal import SafetyModel
from safesignal.config import load_config
from safesignal.training import SafetyTrainingConfig, train

REPO = Path(__file__).resolve().parents[1]
TINY_YAML = REPO / "configs" / "tiny.yaml"
PAPER_TEMPLATE = REPO / "configs" / "paper" / "paper_prompt_template.jinja"


def tiny_config(root: Path, *overrides: str) -> SafetyTrainingConfig:
    base = ["--output_dir", str(root / "run"), "--disable_tqdm", "true", "--logging_steps", "1000",
            "--eval_strategy", "no", "--save_strategy", "no"]
    return load_config(SafetyTrainingConfig, TINY_YAML, base + list(overrides))


class Record(TrainerCallback):
    """The learning rate and the weights' dtype at every optimiser step."""

    def __init__(self):
        self.rates, self.epochs, self.dtypes = [], [], set()

    def on_step_end(self, args, state, control, model=None, lr_scheduler=None, **kwargs):
        self.rates.append(lr_scheduler.get_last_lr()[0])
        self.epochs.append(state.epoch)
        self.dtypes |= {p.dtype for p in model.parameters() if p.requires_grad}


def test_learning_rate_decays_by_gamma_once_per_epoch(tmp_path):
    record = Record()
    config = tiny_config(tmp_path, "--num_train_epochs", "3", "--lr_scheduler_type", "constant",
                         "--warmup_steps", "0", "--lr_decay_per_epoch", "0.5")
    train(config, callbacks=[record])
    steps_per_epoch = len(record.rates) // 3
    assert steps_per_epoch >= 2 and len(record.rates) == 3 * steps_per_epoch
    # The rate set after step s (1-based) is the one the next step uses: epoch (s // steps_per_epoch).
    expected = [0.003 * 0.5 ** (step // steps_per_epoch) for step in range(1, len(record.rates) + 1)]
    assert record.rates == pytest.approx(expected)


def test_decay_refuses_a_schedule_it_cannot_scale(tmp_path):
    config = tiny_config(tmp_path, "--lr_scheduler_type", "reduce_lr_on_plateau", "--lr_decay_per_epoch", "0.5",
                         "--max_steps", "2", "--eval_strategy", "epoch")
    with pytest.raises(ValueError, match="lr_decay_per_epoch"):
        train(config)
    with pytest.raises(ValueError, match="lr_decay_per_epoch"):
        tiny_config(tmp_path, "--lr_decay_per_epoch", "1.5")


def test_chat_template_file_trains_and_ships_the_paper_template(tmp_path):
    final = train(tiny_config(tmp_path, "--max_steps", "2", "--max_length", "256", "--chat_template_file", str(PAPER_TEMPLATE)))
    sm = SafetyModel.from_pretrained(final)
    rendered = sm.tokenizer.apply_chat_template([{"role": "user", "content": "Name a colour."}], tokenize=False,
                                                add_generation_prompt=True)
    assert "### Instruction:\nName a colour.\n\n### Response:\n [/INST] " in rendered
    # The query span is still exact under the new template: the head reads only the user's text.
    example = sm.formatter.encode([{"role": "user", "content": "Name a colour."}], "Blue.", label=0)
    query = [token for token, in_query in zip(example.input_ids, example.query_mask) if in_query]
    assert sm.tokenizer.decode(query).strip() == "Name a colour."
    with pytest.raises(FileNotFoundError, match="chat_template_file"):
        train(tiny_config(tmp_path / "missing", "--max_steps", "1", "--chat_template_file", str(tmp_path / "no.jinja")))


def test_pure_bf16_trains_bf16_weights(tmp_path):
    record = Record()
    train(tiny_config(tmp_path, "--max_steps", "2", "--model_dtype", "bfloat16"), callbacks=[record])
    assert record.dtypes == {torch.bfloat16}


def test_activation_checkpointing_changes_memory_not_the_result(tmp_path):
    plain = train(tiny_config(tmp_path / "plain", "--max_steps", "3"))
    checkpointed = train(tiny_config(tmp_path / "ckpt", "--max_steps", "3", "--activation_checkpointing", "true"))
    a, b = SafetyModel.from_pretrained(plain), SafetyModel.from_pretrained(checkpointed)
    moved = max((p - q).abs().max().item() for p, q in zip(a.parameters(), SafetyModel.from_pretrained("tiny-llama").parameters())
                if p.shape == q.shape)
    assert moved > 1e-4  # training changed the weights: the equality below is not vacuous
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-4, msg=name)
