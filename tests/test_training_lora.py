"""LoRA training: resume, continuing from a LoRA checkpoint, and bases outside SAFESIGNAL_HOME."""

import pytest
import torch
import transformers
from safetensors.torch import load_file

from safesignal.tiny import build_tiny
from safesignal.training import build_model, train

from test_train import tiny_config, train_crashed_mid_checkpoint_then_resumed

LORA = ["--use_lora", "true", "--lora_r", "4", "--lora_dropout", "0.1", "--eval_strategy", "no"]


def adapter_and_head(directory):
    return {**load_file(str(directory / "adapter_model.safetensors")),
            **load_file(str(directory / "safety_head.safetensors"))}


def test_interrupted_lora_training_resumes_to_the_same_adapter(tmp_path):
    common = LORA + ["--save_strategy", "steps", "--save_steps", "3", "--max_steps", "6", "--save_total_limit", "5"]
    straight = train(tiny_config(tmp_path / "a", *common))
    resumed = train_crashed_mid_checkpoint_then_resumed(tmp_path / "b", common, first_checkpoint=3)

    a, b = adapter_and_head(straight), adapter_and_head(resumed)
    assert a.keys() == b.keys() and any("lora_B" in name for name in a)
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=1e-5, msg=name)


def test_training_from_a_lora_checkpoint_trains_its_adapter(tmp_path):
    steps = ["--max_steps", "3", "--save_strategy", "no"]
    first = train(tiny_config(tmp_path / "first", *LORA, *steps))
    second = train(tiny_config(tmp_path / "second", *LORA, *steps, "--model_name_or_path", str(first)))
    before, after = adapter_and_head(first), adapter_and_head(second)
    adapter = [name for name in before if "lora_" in name]
    assert adapter and before.keys() == after.keys()
    unchanged = [name for name in adapter if torch.equal(before[name], after[name])]
    assert not unchanged, f"adapter tensors not trained: {unchanged[:3]}"


def test_a_lora_checkpoint_without_use_lora_is_refused(tmp_path):
    first = train(tiny_config(tmp_path / "first", *LORA, "--max_steps", "1", "--save_strategy", "no"))
    config = tiny_config(tmp_path / "second", "--model_name_or_path", str(first))
    with pytest.raises(ValueError, match=r"is a LoRA checkpoint; set use_lora: true"):
        build_model(config)


@pytest.fixture()
def base_outside_home(tmp_path, monkeypatch):
    base = tmp_path / "models" / "tiny-base"
    model, tokenizer = build_tiny("llama")
    model.save_pretrained(base)
    tokenizer.save_pretrained(base)
    monkeypatch.setenv("SAFESIGNAL_HOME", str(tmp_path / "home"))
    return base


def test_lora_on_a_base_outside_home_is_refused_before_training(tmp_path, base_outside_home, monkeypatch):
    monkeypatch.setattr(transformers.Trainer, "train", lambda *a, **k: pytest.fail("training started"))
    config = tiny_config(tmp_path, *LORA, "--model_name_or_path", str(base_outside_home), "--save_strategy", "no")
    with pytest.raises(ValueError, match=r"tiny-base lies outside SAFESIGNAL_HOME .*move or link the base model"):
        train(config)


def test_lora_on_a_base_inside_home_builds(tmp_path, base_outside_home, monkeypatch):
    monkeypatch.setenv("SAFESIGNAL_HOME", str(base_outside_home.parent))
    model = build_model(tiny_config(tmp_path, *LORA, "--model_name_or_path", str(base_outside_home)))
    assert model.config.adapter == "lora" and model.config.base_model == {"kind": "home", "path": "tiny-base"}
