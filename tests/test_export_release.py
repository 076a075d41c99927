"""scripts/export_release.py: a previous commit's shipped models, exported for a side-by-side run."""

import json
import subprocess
from pathlib import Path

import pytest

from repo_scripts import load_script

NAMES = ("smollm2-cls", "smollm2-sft", "smollm2-qi_aug")


def git(repo, *args):
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


def commit_models(repo: Path, weights: bytes, message: str) -> str:
    models = repo / "src" / "safesignal" / "resources" / "models"
    for name in NAMES:
        (models / name / "sub").mkdir(parents=True, exist_ok=True)
        config = {"format": "safesignal-checkpoint", "extra": {"shared_tokenizer": "../smollm2-tokenizer"}}
        (models / name / "safesignal.json").write_text(json.dumps(config))
        (models / name / "sub" / "adapter.bin").write_bytes(weights + name.encode())
    (models / "smollm2-tokenizer").mkdir(exist_ok=True)
    (models / "smollm2-tokenizer" / "tokenizer.json").write_text(f"tokenizer for {message}")
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", message)
    return git(repo, "rev-parse", "HEAD")


def test_exports_the_models_of_an_earlier_commit_and_repoints_the_shared_tokenizer(tmp_path, monkeypatch):
    repo, home = tmp_path / "repo", tmp_path / "home"
    repo.mkdir()
    git(repo, "init", "-q")
    first = commit_models(repo, b"\x00old", "v1")
    commit_models(repo, b"\x01new", "v2")
    monkeypatch.setenv("SAFESIGNAL_HOME", str(home))
    script = load_script("export_release")
    assert script.main(["--repo", str(repo), "--rev", "HEAD~1", "--tag", "v1"]) == 0
    for name in NAMES:
        target = home / "models" / f"{name}-v1"
        assert (target / "sub" / "adapter.bin").read_bytes() == b"\x00old" + name.encode()
        config = json.loads((target / "safesignal.json").read_text())
        assert config["extra"]["shared_tokenizer"] == "../smollm2-tokenizer-v1"
        assert (target / config["extra"]["shared_tokenizer"] / "tokenizer.json").read_text() == "tokenizer for v1"
        assert json.loads((target / script.MARKER).read_text())["commit"] == first
    # Re-exporting replaces its own exports; a directory it did not write is never touched.
    assert script.main(["--repo", str(repo), "--rev", "HEAD", "--tag", "v1"]) == 0
    assert (home / "models" / "smollm2-sft-v1" / "sub" / "adapter.bin").read_bytes() == b"\x01newsmollm2-sft"
    mine = home / "models" / "smollm2-cls-mine"
    mine.mkdir()
    (mine / "keep.txt").write_text("user data")
    with pytest.raises(SystemExit, match="smollm2-cls-mine: exists and is not an export"):
        script.main(["--repo", str(repo), "--rev", "HEAD", "--tag", "mine"])
    assert (mine / "keep.txt").read_text() == "user data"
    assert not list((home / "models").glob("*.partial"))
