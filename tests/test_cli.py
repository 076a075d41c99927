"""`safesignal classify / generate / chat`: the default model and bounded batches."""

from __future__ import annotations

import io
import json
import sys

import pytest
from conftest import make_safety_model

from safesignal import cli
from safesignal.model import SafetyModel

PROMPTS = [f"prompt number {k}: how do I bake bread?" if k % 2 else f"hello {k}" for k in range(7)]


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "tiny-checkpoint"
    make_safety_model("llama", "sdpa").save_pretrained(out)
    return out


def _run(argv, stdin_text, monkeypatch, capsys) -> list[dict]:
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin_text))
    assert cli.main(argv) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def _spy_batches(monkeypatch, method: str) -> list[int]:
    sizes = []
    real = getattr(SafetyModel, method)

    def spy(self, conversations, *args, **kwargs):
        sizes.append(len(conversations))
        return real(self, conversations, *args, **kwargs)

    monkeypatch.setattr(SafetyModel, method, spy)
    return sizes


def test_classify_reads_stdin_in_bounded_batches(checkpoint_dir, monkeypatch, capsys):
    sizes = _spy_batches(monkeypatch, "classify_batch")
    stdin = "\n".join(PROMPTS[:3]) + "\n\n" + "\n".join(PROMPTS[3:]) + "\n"  # a blank line is skipped
    batched = _run(["classify", "--model", str(checkpoint_dir), "--batch_size", "3"], stdin, monkeypatch, capsys)
    assert sizes == [3, 3, 1]
    one_by_one = [_run(["classify", "--model", str(checkpoint_dir), "--batch_size", "1"], p + "\n", monkeypatch, capsys)[0]
                  for p in PROMPTS]
    assert [r["prompt"] for r in batched] == PROMPTS
    assert [r["label"] for r in batched] == [r["label"] for r in one_by_one]
    assert [r["p_malicious"] for r in batched] == pytest.approx([r["p_malicious"] for r in one_by_one], abs=2e-4)


def test_generate_reads_stdin_in_bounded_batches(checkpoint_dir, monkeypatch, capsys):
    sizes = _spy_batches(monkeypatch, "generate_batch")
    argv = ["generate", "--model", str(checkpoint_dir), "--max_new_tokens", "3"]
    batched = _run(argv + ["--batch_size", "4"], "\n".join(PROMPTS) + "\n", monkeypatch, capsys)
    assert sizes == [4, 3]
    sizes.clear()
    one_by_one = _run(argv + ["--batch_size", "1"], "\n".join(PROMPTS) + "\n", monkeypatch, capsys)
    assert sizes == [1] * len(PROMPTS)
    assert [(r["prompt"], r["text"]) for r in batched] == [(r["prompt"], r["text"]) for r in one_by_one]


def test_sampled_generate_does_not_depend_on_the_batch_size(checkpoint_dir, monkeypatch, capsys):
    argv = ["generate", "--model", str(checkpoint_dir), "--max_new_tokens", "8", "--temperature", "1.5",
            "--seed", "7", "--threshold", "0.99"]
    lines = "Hi\n" * 4
    batched = _run(argv + ["--batch_size", "4"], lines, monkeypatch, capsys)
    one_by_one = _run(argv + ["--batch_size", "1"], lines, monkeypatch, capsys)
    assert [r["text"] for r in batched] == [r["text"] for r in one_by_one]
    assert len({r["text"] for r in batched}) > 1  # duplicate lines sample independently


@pytest.mark.parametrize("bad", ["0", "-2"])
def test_batch_size_must_be_positive(bad, capsys):
    with pytest.raises(SystemExit):
        cli.main(["classify", "--batch_size", bad, "hi"])
    assert "--batch_size" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["classify", "generate", "chat"])
def test_commands_default_to_the_shipped_cls_model(command, monkeypatch, capsys):
    loaded = []
    tiny = make_safety_model("llama", "sdpa")

    def from_pretrained(path, **kwargs):
        loaded.append(str(path))
        return tiny

    monkeypatch.setattr(SafetyModel, "from_pretrained", from_pretrained)
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    assert cli.main([command]) == 0
    assert loaded == ["smollm2-cls"]


# ====================================================================== calibrated defaults
def _calibrated(tmp_path, source, calibration: dict):
    """A copy of the tiny checkpoint whose safesignal.json records `calibration`."""
    import shutil

    target = tmp_path / f"calibrated-{len(list(tmp_path.iterdir()))}"
    shutil.copytree(source, target)
    config = json.loads((target / "safesignal.json").read_text())
    (target / "safesignal.json").write_text(json.dumps({**config, "calibration": calibration}))
    return target


def test_a_checkpoints_calibration_is_the_policy_when_none_is_given(checkpoint_dir, tmp_path, monkeypatch, capsys):
    from safesignal.decoding.policy import SafetyPolicy

    low, high = (SafetyModel.from_pretrained(_calibrated(tmp_path, checkpoint_dir, {"threshold": t, "tau": 1}))
                 for t in (0.001, 0.999))
    assert low.default_policy() == SafetyPolicy(threshold=0.001, tau=1)
    assert low.default_policy(tau=4).tau == 4  # a caller's field wins
    # the tiny head's P(malicious) lies strictly between: every check is malicious at 0.001,
    # none at 0.999, so the two calibrations decode differently, as their explicit policies do
    by_default = [m.generate("hello there", max_new_tokens=4) for m in (low, high)]
    explicit = [m.generate("hello there", max_new_tokens=4, policy=SafetyPolicy(threshold=t, tau=1))
                for m, t in ((low, 0.001), (high, 0.999))]
    assert [r.intervened for r in by_default] == [True, False]
    assert [r.text for r in by_default] == [r.text for r in explicit]
    # the CLI reads the same default: classify labels at the calibrated threshold unless told
    path = str(_calibrated(tmp_path, checkpoint_dir, {"threshold": 0.001}))
    assert _run(["classify", "--model", path], "hello\n", monkeypatch, capsys)[0]["label"] == "malicious"
    assert _run(["classify", "--model", path, "--threshold", "0.999"], "hello\n", monkeypatch, capsys)[0]["label"] == "benign"
    generated = _run(["generate", "--model", path, "--max_new_tokens", "4"], "hello there\n", monkeypatch, capsys)
    assert generated[0]["intervened"] is True
    overridden = _run(["generate", "--model", path, "--max_new_tokens", "4", "--threshold", "0.999"],
                      "hello there\n", monkeypatch, capsys)
    assert overridden[0]["intervened"] is False


ATTACK_GRID = """
name: tiny_attack
n: 2
max_new_tokens: 4
dtype: float32
models:
  - {name: cls, path: tiny-llama, decoding: strategic, policies: {weights_only: {decoding: plain}}}
attacks:
  - {attack: gcg_adaptive, on_policies: true, config: {steps: 3, search_width: 4, topk: 4, suffix_init: " ! !"}}
classifier: {enabled: false}
over_refusal: {edgy: 0, heldout_benign: 0, contrast: 0}
utility: {enabled: false}
overhead: {enabled: false}
"""


def test_attack_routes_the_attacks_knobs_to_it_and_the_rest_to_the_grid(tmp_path, capsys):
    grid = tmp_path / "grid.yaml"
    grid.write_text(ATTACK_GRID)
    out = tmp_path / "out"
    assert cli.main(["attack", "gcg_adaptive", "--config", str(grid), "--out", str(out), "--steps", "1",
                     "--n", "1", "--adaptive_weight", "2.5", "--seed", "3", "--attack.seed", "7",
                     "--suffix_init", " ! !"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["n"] == 1 and results["config"]["attacks"][0]["config"]["steps"] == 1
    # --seed is the grid's, --attack.seed the attack's; a text knob is kept as typed
    assert results["config"]["seed"] == 3
    assert results["config"]["attacks"][0]["config"]["seed"] == 7
    assert results["config"]["attacks"][0]["config"]["suffix_init"] == " ! !"
    for entry, weight in (("cls", 2.5), ("cls:weights_only", 0.0)):
        search = results["models"][entry]["attacks"]["gcg_adaptive"]["search"]
        assert search["budget"] == {**search["budget"], "steps": 1, "behaviours": 1, "adaptive_weight": weight}
    printed = capsys.readouterr().out
    assert "cls: ASR" in printed and "cls:weights_only: ASR" in printed and "safesignal attack: wrote" in printed
    assert results["command"].startswith("safesignal attack gcg_adaptive --config")


def test_the_default_attack_grid_runs_the_power_check_beside_the_defended_model():
    from safesignal.eval.config import attack_grid

    grid = attack_grid("gcg")
    entries = {m.name: m for m in grid.models}
    assert entries["cls"].decoding == "strategic" and entries["cls"].policies["weights_only"].decoding == "plain"
    assert entries["sft"].decoding == "plain" and entries["qi_aug"].decoding == "plain"
    assert [a.attack for a in grid.attacks] == ["gcg"] and grid.attacks[0].on_policies
    assert grid.harmful_per_source == {"harmbench_test": 20}
    with pytest.raises(ValueError, match="unknown 'nope'"):
        attack_grid("nope")
