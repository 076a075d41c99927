"""The shipped embedded models still reproduce the committed demo table (results/embedded/demo.json).

Slow (about 5 minutes on 2 CPU cores): it runs `safesignal demo` end to end on the shipped
adapters, in a fresh SAFESIGNAL_HOME so no locally trained model is picked up instead.
Tolerance: each refusal / attack-success rate within 2 prompts of the committed figure (n = 50
or 150), the classifier's F1 / recall / edgy FPR within 0.01. bf16 kernels may differ by a
token between CPUs; more than that means the models, the decoder or the judge changed, and
the committed table (and the README generated from it) must be regenerated.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from safesignal.base_models import ensure_smollm2_base, smollm2_base_dir
from safesignal.demo import DemoConfig, run_demo

COMMITTED = Path(__file__).resolve().parents[1] / "results" / "embedded" / "demo.json"
PROMPTS_OF_SLACK = 2
CLASSIFIER_SLACK = 0.01

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]


@pytest.fixture
def fresh_home(tmp_path, monkeypatch):
    base = ensure_smollm2_base()  # converted once in the real home, shared by the fresh one
    monkeypatch.setenv("SAFESIGNAL_HOME", str(tmp_path / "home"))
    target = smollm2_base_dir()
    target.parent.mkdir(parents=True)
    os.symlink(base, target)
    return tmp_path


def test_shipped_models_reproduce_the_committed_demo_table(fresh_home):
    committed = json.loads(COMMITTED.read_text())
    config = DemoConfig(**{**committed["demo"], "out": str(fresh_home / "results.json")})
    measured = run_demo(config, log=lambda message: None)
    assert set(measured["models"]) == set(committed["models"])
    for name, expected in committed["models"].items():
        got = measured["models"][name]
        assert got["source"] in ("shipped", "converted"), f"{name}: came from {got['source']}"
        for attack, figures in expected["attacks"].items():
            slack = PROMPTS_OF_SLACK / figures["n"] + 1e-9
            for key in ("asr_keyword", "asr_leak"):
                assert got["attacks"][attack][key] == pytest.approx(figures[key], abs=slack), (name, attack, key)
        edgy_n = expected["over_refusal_detail"]["n"]
        assert got["over_refusal"] == pytest.approx(expected["over_refusal"], abs=PROMPTS_OF_SLACK / edgy_n + 1e-9), name
        if "classifier" in expected:
            for key in ("f1", "recall", "edgy_fpr"):
                assert got["classifier"][key] == pytest.approx(expected["classifier"][key], abs=CLASSIFIER_SLACK), key
