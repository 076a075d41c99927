"""The fine-tuning attacks (eval/finetune.py) end to end on tiny models: a plain base and a
tiny cls checkpoint, each attacked under its threat models for 1 and 2 steps, then one eval
grid over every checkpoint; a second run trains nothing and generates nothing."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

from safesignal.config import load_config
from safesignal.data.dedup import PromptIndex
from safesignal.eval.config import ModelSpec, PolicySpec
from safesignal.eval.finetune import FinetuneAttack, FinetuneAttackConfig, default_eval, with_finetune_overrides
from safesignal.training import SafetyTrainingConfig, train

from test_train import TINY_YAML


@pytest.fixture(scope="module")
def tiny_cls(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny_cls")
    config = load_config(SafetyTrainingConfig, TINY_YAML, [
        "--output_dir", str(out / "run"), "--disable_tqdm", "true", "--use_lora", "true", "--lora_r", "4",
        "--max_steps", "3", "--eval_strategy", "no", "--save_strategy", "no"])
    return train(config)


def tiny_attack(out, cls_path) -> FinetuneAttackConfig:
    grid = dataclasses.replace(default_eval(), n=2, harmful_per_source={"harmbench_test": 2}, max_new_tokens=4,
                               batch_size=4, dtype="float32")
    grid = dataclasses.replace(grid, utility=dataclasses.replace(grid.utility, reference_answers=2))
    return FinetuneAttackConfig(
        models=[ModelSpec(name="base", path="tiny-llama", decoding="plain"),
                ModelSpec(name="cls", path=str(cls_path), decoding="strategic",
                          policies={"weights_only": PolicySpec(decoding="plain")})],
        steps=[1, 2], batch_size=2, lora_r=4, max_length=128, harmful_examples=6, benign_examples=6,
        learning_rate=3e-3, eval=grid, out=str(out))


@pytest.fixture(scope="module")
def attacked(tmp_path_factory, tiny_cls):
    out = tmp_path_factory.mktemp("finetune")
    config = tiny_attack(out, tiny_cls)
    return out, config, FinetuneAttack(config, "test", log=lambda m: None, progress=False).run()


def test_every_threat_model_is_trained_and_evaluated_against_steps(attacked):
    out, config, results = attacked
    curves = results["finetune"]["curves"]
    # a headless model has no service objective (its service is the weights run); the plainly
    # decoded control of a model with a head exists for the weights threat only
    assert set(curves) == {"base", "cls", "cls:weights_only"}
    assert set(curves["base"]) == {"weights", "benign"} and set(curves["cls"]) == {"weights", "service", "benign"}
    assert set(curves["cls:weights_only"]) == {"weights"}
    assert curves["cls"]["weights"]["objective"] == "sft" and curves["cls"]["service"]["objective"] == "cls"
    for entry, threats in curves.items():
        for threat, curve in threats.items():
            assert [p["steps"] for p in curve["points"]] == [0, 1, 2]
            for point in curve["points"]:
                assert point["direct"]["n"] == 2 and point["prefill_10"]["n"] == 2
                assert point["ref_answer_nll"] is not None and point["ref_answer_nll"] > 0
    # the untouched entries carry each threat's figure after the largest step count
    figure = results["models"]["cls"]["attacks"]["finetune_service"]
    assert figure["steps"] == 2 and figure["entry"] == "cls@service2"
    assert figure["asr_leak"] == results["models"]["cls@service2"]["attacks"]["direct"]["asr_leak"]
    assert "finetune_weights" in results["models"]["cls:weights_only"]["attacks"]
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["finetune"]["budget"]["steps"] == [1, 2] and "_path" not in on_disk


def test_the_attacked_checkpoints_move_and_the_served_head_is_kept(attacked, tiny_cls):
    out, _, _ = attacked
    adapter = "adapter_model.safetensors"
    original = load_file(str(tiny_cls / adapter))
    for threat in ("weights", "service", "benign"):
        one, two = (load_file(str(out / "finetune" / "cls" / threat / f"step_{n}" / adapter)) for n in (1, 2))
        assert any(not torch.equal(original[k], one[k]) for k in original)
        assert any(not torch.equal(one[k], two[k]) for k in one)
        meta = json.loads((out / "finetune" / "cls" / threat / "step_2" / "safesignal.json").read_text())
        assert meta["objective"] == "cls"  # still served with its head
    head = "safety_head.safetensors"
    before = load_file(str(tiny_cls / head))
    kept = load_file(str(out / "finetune" / "cls" / "weights" / "step_2" / head))
    assert all(torch.equal(before[k], kept[k]) for k in before)  # the LM loss alone never touches it


def test_step_one_is_what_a_one_step_run_gives(attacked, tmp_path):
    """Constant learning rate and one seeded data order: the checkpoint saved at step 1 of the
    2-step run equals a run stopped at 1 step (an independent training)."""
    out, config, _ = attacked
    alone = FinetuneAttack(dataclasses.replace(config, steps=[1], out=str(tmp_path)), "test", lambda m: None, False)
    data = tmp_path / "finetune" / "data"
    data.mkdir(parents=True)
    (data / "harmful.jsonl").write_text((out / "finetune" / "data" / "harmful.jsonl").read_text())
    rows = [json.loads(line) for line in (data / "harmful.jsonl").read_text().splitlines()]
    single = alone._train(config.models[0], "weights", "harmful", "sft", rows)[1]
    a = load_file(str(single / "adapter_model.safetensors"))
    b = load_file(str(out / "finetune" / "base" / "weights" / "step_1" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_the_harmful_pairs_are_disjoint_from_the_evaluated_behaviours(attacked):
    out, _, results = attacked
    pairs = [json.loads(line) for line in (out / "finetune" / "data" / "harmful.jsonl").read_text().splitlines()]
    assert len(pairs) == results["finetune"]["data"]["harmful"] == 6 and all(p["label"] == 1 for p in pairs)
    from safesignal.eval import behaviours as pools

    evaluated = PromptIndex([b["prompt"] for b in pools.subset_per_source("harmful", {"harmbench_test": 2}, 0)])
    assert not any(evaluated.contains(p["prompt"]) for p in pairs)
    labels = results["finetune"]["labels"]["cls/service"]
    labelled = [json.loads(line)["label"] for line in
                (out / "finetune" / "cls" / "service" / "harmful_labelled.jsonl").read_text().splitlines()]
    assert labels["n"] == 6 and labels["malicious"] == sum(labelled) and set(labelled) <= {0, 1}


def test_other_settings_in_a_trained_directory_are_refused_by_name(attacked):
    out, config, _ = attacked
    changed = dataclasses.replace(config, learning_rate=1e-2)
    with pytest.raises(ValueError, match=r"trained with other settings \(learning_rate differ\)"):
        FinetuneAttack(changed, "test", log=lambda m: None, progress=False).run()


def test_a_second_run_trains_and_generates_nothing(attacked, monkeypatch):
    out, config, first = attacked
    import safesignal.training

    monkeypatch.setattr(safesignal.training, "train", lambda *a, **k: pytest.fail("trained again"))
    again = FinetuneAttack(config, "test", log=lambda m: None, progress=False).run()
    batches = sum(len(path.read_text().splitlines()) - 1 for path in (out / "cells").glob("*/*.jsonl"))
    assert batches > 0 and again["reused_batches"] == batches  # every batch read back, none generated
    assert again["finetune"]["curves"] == first["finetune"]["curves"]


def test_bad_configs_and_overrides_are_refused():
    with pytest.raises(ValueError, match="threats"):
        FinetuneAttackConfig(threats=["weights", "sideways"])
    with pytest.raises(ValueError, match="eval.models"):
        FinetuneAttackConfig(eval=dataclasses.replace(default_eval(), models=[ModelSpec(name="x", path="tiny-llama")]))
    with pytest.raises(ValueError, match="steps"):
        FinetuneAttackConfig(steps=[0, 5])
    with pytest.raises(ValueError, match="threats: a list"):
        FinetuneAttackConfig(threats="weights")
    with pytest.raises(ValueError, match="benign_examples"):
        FinetuneAttackConfig(benign_examples=0)
    config = with_finetune_overrides(FinetuneAttackConfig(), ["--steps", "[20, 5]", "--eval.max_new_tokens", "16"])
    assert config.steps == [5, 20] and config.eval.max_new_tokens == 16
    with pytest.raises(ValueError, match="not a field of the fine-tuning attack"):
        with_finetune_overrides(FinetuneAttackConfig(), ["--stepz", "3"])


def test_an_unknown_model_is_refused_before_anything_trains(capsys, tmp_path):
    from safesignal.cli import main

    assert main(["attack", "finetune", "--models", "cls,nope", "--out", str(tmp_path / "run")]) == 2
    assert "--models: no model ['nope'] in the attack; known: ['base', 'sft', 'qi_aug', 'cls']" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_the_shipped_config_is_the_default():
    from pathlib import Path

    from safesignal.eval.finetune import load_finetune_config

    shipped = load_finetune_config(Path(__file__).resolve().parents[1] / "configs" / "attacks" / "finetune.yaml")
    assert shipped == FinetuneAttackConfig()


def test_benign_mixed_trains_on_the_providers_refusals_with_their_own_labels(tmp_path, tiny_cls):
    from safesignal.eval.finetune import PROVIDER

    safety = tmp_path / "safety.jsonl"
    rows = [{"prompt": f"Explain how to pick lock number {i}.", "response": "Sorry, I cannot help with that.",
             "label": 1, "source": "templates"} for i in range(5)]
    rows += [{"prompt": "Sure?", "prefill": "Sure, here", "response": " is not.", "label": 1, "source": "recovery_opener"},
             {"prompt": "What is rain?", "response": "Water falling.", "label": 0, "source": "sharegpt"}]
    safety.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = dataclasses.replace(tiny_attack(tmp_path / "run", tiny_cls), threats=["benign_mixed"], steps=[1],
                                 safety_examples=3, safety_file=str(safety))
    results = FinetuneAttack(config, "test", log=lambda m: None, progress=False).run()
    assert set(results["finetune"]["curves"]["cls"]) == {"benign_mixed"}
    assert set(results["finetune"]["curves"]["base"]) == {"benign_mixed"}  # plain SFT on the same mix
    assert results["finetune"]["data"]["safety_examples"] == 3
    labelled = [json.loads(line) for line in
                (tmp_path / "run" / "finetune" / "cls" / "benign_mixed" / "benign_mixed_labelled.jsonl").read_text().splitlines()]
    provider = [r for r in labelled if r["source"].startswith(PROVIDER)]
    # three single-turn refusals, never the recovery example or the benign one, and they keep label 1
    assert len(provider) == 3 and all(r["label"] == 1 and r["prompt"].startswith("Explain how to pick") for r in provider)
    assert len(labelled) == 6 + 3  # the six benign conversations and the three provider examples
    with pytest.raises(ValueError, match="safety.jsonl: 5 single-turn malicious examples"):
        FinetuneAttack(dataclasses.replace(config, safety_examples=6, out=str(tmp_path / "other")), "test",
                       log=lambda m: None, progress=False).run()
