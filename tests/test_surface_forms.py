"""Training surface forms (safesignal.data.surface_forms): kept apart from the evaluation
reformulations (attacks/reformulation.py) by frames and trigger words, and well formed."""

from __future__ import annotations

import random
import re

import pytest

from safesignal.attacks.reformulation import FRAMES, TRIGGER_WORDS, trigger_words_in
from safesignal.data.dedup import PromptIndex
from safesignal.data.surface_forms import FORMS, as_clause, render, surface_forms

# Words a tense or a person needs; the evaluation frames use them too, and no frame can avoid
# them, so they do not count as triggers. Everything else an evaluation frame keys on must be
# absent from every training frame.
GRAMMAR_WORDS = {"did", "was", "will", "would", "my", "had"}

TRAINING_FRAMES = [frame for frames in FORMS.values() for frame in frames]


@pytest.mark.parametrize("kind", sorted(TRIGGER_WORDS))
def test_no_training_frame_uses_an_evaluation_trigger(kind):
    triggers = set(TRIGGER_WORDS[kind]) - GRAMMAR_WORDS
    clashes = {frame: sorted(trigger_words_in(frame, triggers)) for frame in TRAINING_FRAMES}
    assert not {f: t for f, t in clashes.items() if t}


def test_no_training_frame_nearly_copies_an_evaluation_frame():
    fill = "make a paper plane at home"
    evaluation = PromptIndex(f.replace("{vp}", fill) for families in FRAMES.values()
                             for frames in families.values() for f in frames)
    ours = [render(frame, fill.capitalize() + ".", fill) for frame in TRAINING_FRAMES]
    scores = {text: evaluation.best_match(text) for text in ours}
    assert max(scores.values()) < 0.5, max(scores.items(), key=lambda kv: kv[1])


def test_every_frame_has_exactly_one_slot():
    for frame in TRAINING_FRAMES:
        slots = re.findall(r"\{(\w+)\}", frame)
        assert len(slots) == 1 and slots[0] in ("clause", "Clause", "request"), frame


@pytest.mark.parametrize("request_, clause", [
    ("Write a poem about autumn.", "write a poem about autumn"),
    ("Explain how tides work", "explain how tides work"),
    ("Give me three tips for sleeping better!", "give me three tips for sleeping better"),
    ("How do tides work?", None),
    ("What is a prime number", None),
    ("I want a cake recipe.", None),
    ("Write a poem. Make it rhyme.", None),
    ("write a poem about autumn", None),  # a lower-case opening is not recognisably an imperative
])
def test_as_clause(request_, clause):
    assert as_clause(request_) == clause


def test_surface_forms_are_distinct_forms_filled_with_the_request():
    request = "Describe the water cycle for a ten-year-old."
    forms = surface_forms(request, random.Random(3), k=5)
    assert len(forms) == 5 and len({name for name, _ in forms}) == 5
    for name, text in forms:
        assert name in FORMS
        assert "describe the water cycle for a ten-year-old" in text.lower()
        assert "{" not in text and "  " not in text and ".." not in text
    assert forms == surface_forms(request, random.Random(3), k=5)  # deterministic
    assert forms != surface_forms(request, random.Random(4), k=5)


def test_a_question_only_gets_frames_that_wrap_any_text():
    question = "How do vaccines train the immune system?"
    forms = surface_forms(question, random.Random(0), k=len(FORMS))
    wrapping = {name for name, frames in FORMS.items() if any("{request}" in f for f in frames)}
    assert {name for name, _ in forms} == wrapping
    assert all(question in text for _, text in forms)


def test_capitalised_clause_slot_and_errors():
    assert render("{Clause}. Steps only.", "Bake bread.", "bake bread") == "Bake bread. Steps only."
    with pytest.raises(ValueError, match="imperative clause"):
        render("How to {clause}?", "What is bread?", None)
    with pytest.raises(ValueError, match="unknown form"):
        surface_forms("Bake bread.", random.Random(0), 2, forms=["past", "sarcastic"])
