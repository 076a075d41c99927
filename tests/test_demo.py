"""`safesignal demo` plumbing: where each model comes from, and the printed table."""

import pytest

import safesignal.demo as demo
import safesignal.train as train_module
from safesignal.config import load_config
from safesignal.train import SafetyTrainingConfig


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("SAFESIGNAL_HOME", str(tmp_path))
    return tmp_path


def test_recipes_share_the_data_budget(home):
    configs = {r: load_config(SafetyTrainingConfig, demo.recipe_path(r)) for r in demo.RECIPES}
    budget = {(c.max_steps, c.per_device_train_batch_size, c.gradient_accumulation_steps, c.learning_rate,
               c.use_lora, c.lora_r) for c in configs.values()}
    assert len(budget) == 1
    assert [configs[r].objective for r in demo.RECIPES] == ["sft", "sft", "cls"]
    assert all(str(c.final_dir).startswith(str(home)) for c in configs.values())


def test_model_source_order_cached_then_shipped_then_trained(home, monkeypatch):
    trained = []

    def fake_train(config, resume=False):
        trained.append(config.objective)
        (home / "models" / "smollm2-cls").mkdir(parents=True, exist_ok=True)
        (home / "models" / "smollm2-cls" / "safesignal.json").write_text("{}")

    monkeypatch.setattr(train_module, "train", fake_train)
    monkeypatch.setattr(demo, "shipped_model", lambda recipe: None)
    path, source, _ = demo.ensure_model("cls", retrain=False, log=lambda m: None)
    assert source == "trained" and trained == ["cls"]
    path, source, _ = demo.ensure_model("cls", retrain=False, log=lambda m: None)
    assert (source, trained) == ("cached", ["cls"]) and path == home / "models" / "smollm2-cls"
    demo.ensure_model("cls", retrain=True, log=lambda m: None)
    assert trained == ["cls", "cls"]


def test_retrain_removes_nothing_from_the_training_output_directory(home, monkeypatch):
    runs = home / "runs" / "smollm2-cls"
    runs.mkdir(parents=True)
    (runs / "my_notes.txt").write_text("keep")
    monkeypatch.setattr(train_module, "train", lambda config, resume=False: None)
    demo.ensure_model("cls", retrain=True, log=lambda m: None)
    assert (runs / "my_notes.txt").read_text() == "keep"


def test_shipped_model_is_used_when_nothing_is_cached(home, monkeypatch, tmp_path):
    shipped = tmp_path / "shipped"
    monkeypatch.setattr(demo, "shipped_model", lambda recipe: shipped)
    monkeypatch.setattr(train_module, "train", lambda *a, **k: pytest.fail("must not train"))
    assert demo.ensure_model("sft", retrain=False, log=lambda m: None)[:2] == (shipped, "shipped")


def test_unknown_model_names_are_rejected():
    with pytest.raises(ValueError, match="unknown"):
        demo.DemoConfig(models=["base", "gpt5"])


@pytest.mark.parametrize("recipe", demo.RECIPES)
def test_shipped_models_match_their_recipes(recipe, home):
    import json

    shipped = demo.shipped_model(recipe)
    assert shipped is not None, f"smollm2-{recipe} is not shipped: run scripts/ship_models.py"
    config = load_config(SafetyTrainingConfig, demo.recipe_path(recipe))
    meta = json.loads((shipped / "safesignal.json").read_text())
    adapter = json.loads((shipped / "adapter_config.json").read_text())
    assert meta["objective"] == config.objective and meta["adapter"] == "lora"
    assert adapter["r"] == config.lora_r and adapter["lora_alpha"] == config.lora_alpha
    assert meta["base_model"] == {"kind": "registry", "name": "smollm2-base"}
