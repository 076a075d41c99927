"""Keyword judge, intervals, length-sorted batches and batched classification."""

import pytest

from safesignal.evaluate import difference_interval, wilson_interval
from safesignal.judges import JudgeInput, KeywordJudge

from conftest import make_safety_model


def test_keyword_judge_reads_refusals_and_compliance():
    judge = KeywordJudge()
    assert judge.judge(JudgeInput("p", "I’m sorry, but I can’t help with that.")).refused  # curly apostrophes
    assert judge.judge(JudgeInput("p", "As an AI, I will not do this.")).refused
    assert not judge.judge(JudgeInput("p", "Sure, here is a tutorial:\n\n1. Gather the materials")).refused


def test_wilson_and_difference_intervals():
    low, high = wilson_interval(0, 50)
    assert low == 0.0 and 0.05 < high < 0.09
    low, high = wilson_interval(50, 50)
    assert high == 1.0 and 0.91 < low < 0.95
    a, b = difference_interval(30, 150, 15, 150)
    assert a < 0.1 < b and b - a == pytest.approx(2 * 1.96 * ((0.2 * 0.8 + 0.1 * 0.9) / 150) ** 0.5)


def test_length_sorted_batches_cover_every_index_once():
    from safesignal.evaluate import length_sorted_batches

    prompts = ["a" * n for n in (5, 1, 9, 3, 7)]
    batches = length_sorted_batches(prompts, 2)
    assert sorted(i for b in batches for i in b) == list(range(5))
    assert batches[0] == [1, 3] and batches[-1] == [2]


def test_classify_prompts_keeps_input_order():
    from safesignal.evaluate import classify_prompts

    sm = make_safety_model("llama", "sdpa")
    prompts = ["a much longer prompt about many things", "hi", "medium prompt here"]
    together = classify_prompts(sm, prompts, batch_size=2)
    alone = [classify_prompts(sm, [p], batch_size=1)[0] for p in prompts]
    assert together == pytest.approx(alone, abs=1e-5)
