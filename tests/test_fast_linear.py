"""Few-row matmul paths (decoding/fast_linear.py): chosen by measurement, equal to F.linear."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import make_safety_model
from torch import nn

from decoding_scripts import PROMPTS, peaked

from safesignal.decoding import Request, SafetyPolicy, StrategicDecoder
from safesignal.decoding import fast_linear
from safesignal.decoding.fast_linear import PATHS, FastLinear, FastLinearConfig


@pytest.fixture(autouse=True)
def fresh_measurements(monkeypatch):
    monkeypatch.setattr(fast_linear, "_CHOSEN", {})


def favouring(winner: str, calls: list | None = None):
    """A fake timer: `winner` takes 1 s, every other path 2 s."""
    def timer(path, call, repeats):
        if calls is not None:
            calls.append(path)
        call()  # a real path runs (and must not raise)
        return 1.0 if path == winner else 2.0
    return timer


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("bias", [False, True])
def test_each_path_equals_f_linear_on_few_rows(path, bias):
    torch.manual_seed(0)
    layer = nn.Linear(48, 80, bias=bias)
    routed = FastLinear(layer, FastLinearConfig(max_rows=4), timer=favouring(path))
    for shape in [(1, 1, 48), (1, 2, 48), (2, 1, 48), (4, 48), (1, 5, 48)]:  # 5 rows: past max_rows
        x = torch.randn(shape)
        expected = F.linear(x, layer.weight, layer.bias)
        with torch.inference_mode(), routed.applied():
            got = layer(x)
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_the_measured_fastest_path_is_the_one_routed_to(monkeypatch):
    layer = nn.Linear(16, 32)
    used = []
    for name in ("weight_first", "weight_first_paired"):
        original = PATHS[name]
        monkeypatch.setitem(PATHS, name, lambda x, w, name=name, original=original: used.append(name) or original(x, w))

    routed = FastLinear(layer, FastLinearConfig(max_rows=2), timer=favouring("weight_first_paired"))
    used.clear()  # (the measurement ran every path)
    with torch.inference_mode(), routed.applied():
        layer(torch.randn(1, 16))
        layer(torch.randn(2, 16))  # paired is no candidate for 2 rows: the rest tie, the first (F.linear) serves
    assert used == ["weight_first_paired"]


def test_when_f_linear_is_fastest_nothing_is_rerouted():
    layer = nn.Linear(16, 32)
    routed = FastLinear(layer, FastLinearConfig(skip_dead_rows=False), timer=favouring("linear"))
    assert routed.forwards == []
    with routed.applied():
        assert "forward" not in layer.__dict__


@pytest.mark.parametrize("path", list(PATHS))
def test_live_rows_compute_the_live_rows_and_zero_the_dead(path, monkeypatch):
    torch.manual_seed(0)
    layer = nn.Linear(16, 32)
    calls = []
    original = layer.forward
    monkeypatch.setattr(layer, "forward", lambda x: calls.append(x.shape[0] if x.dim() == 2 else x.shape) or original(x))
    routed = FastLinear(layer, FastLinearConfig(max_rows=4), timer=favouring(path))
    x = torch.randn(3, 2, 16)
    live = torch.tensor([[True, False], [True, True], [False, False]])
    with torch.inference_mode(), routed.applied(), routed.live_rows(live):
        got = layer(x)
        other_shape = layer(torch.randn(4, 16))  # another shape (the LM head's rows): computed whole
    expected = F.linear(x, layer.weight, layer.bias) * live[..., None]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert other_shape.shape == (4, 32) and routed.live is None
    if path == "linear":
        assert calls[0] == 3  # three live rows went in, not six
    with torch.inference_mode(), routed.applied(), routed.live_rows(torch.ones(3, 2, dtype=torch.bool)):
        assert routed.live is None  # nothing dead: nothing to select


def test_each_shape_is_measured_once_per_process_and_off_means_unmeasured():
    calls = []
    FastLinear(nn.Sequential(nn.Linear(16, 32), nn.Linear(16, 32)), FastLinearConfig(max_rows=2),
               timer=favouring("weight_first", calls))
    assert calls == ["linear", "weight_first", "weight_first_paired", "linear", "weight_first"]  # rows 1, 2, once
    FastLinear(nn.Linear(16, 32), FastLinearConfig(max_rows=2), timer=favouring("linear", calls))
    FastLinear(nn.Linear(16, 64), FastLinearConfig(enabled=False), timer=favouring("linear", calls))
    assert len(calls) == 5


def test_applied_puts_back_an_instance_forward_that_was_there():
    layer = nn.Linear(16, 32)
    hooked = lambda x: torch.zeros(())  # noqa: E731 (stands in for accelerate's hook)
    layer.forward = hooked
    routed = FastLinear(layer, FastLinearConfig(max_rows=1), timer=favouring("weight_first"))
    with routed.applied():
        assert layer.forward is not hooked
        assert layer(torch.randn(2, 16)).shape == ()  # 2 rows: past max_rows, the hooked forward serves
    assert layer.forward is hooked


def test_decoding_through_the_fast_paths_equals_decoding_through_f_linear(monkeypatch):
    sm = peaked(make_safety_model("llama", "sdpa"))
    with torch.no_grad():  # the drawn head reads the hidden states; benign, so checks never stop
        sm.head.bias.fill_(-8.0)
    # the second row checks every third step: on the others it carries a dead filler column
    reqs = [Request([{"role": "user", "content": p}], policy=policy, max_new_tokens=10, ignore_eos=True)
            for p, policy in zip(PROMPTS[:2], (SafetyPolicy(schedule="each"), SafetyPolicy(schedule="periodic", period=3)))]

    def run(config):  # batch 1 (a token and a [CLS] row per step), then batch 2
        decoder = StrategicDecoder(sm, fast_linear=config)
        return decoder, decoder.generate(reqs[:1]) + decoder.generate(reqs)

    reference_decoder, reference = run(FastLinearConfig(enabled=False))
    monkeypatch.setattr(fast_linear, "wall_time", favouring("weight_first"))
    selected = []
    live_rows = fast_linear.FastLinear.live_rows
    monkeypatch.setattr(fast_linear.FastLinear, "live_rows",
                        lambda self, live: selected.append(int((~live).sum())) or live_rows(self, live))
    routed_decoder, routed = run(FastLinearConfig())
    assert reference_decoder.fast_linear.forwards == [] and len(routed_decoder.fast_linear.forwards) > 0
    assert max(selected) > 0  # some steps carried dead fillers, and they changed nothing
    for a, b in zip(reference, routed):
        assert a.token_ids == b.token_ids
        assert len(a.events) == len(b.events) > 1
        for x, y in zip(a.events, b.events):
            assert x.label == y.label == "benign"
            assert x.probability == pytest.approx(y.probability, rel=1e-4)
