"""Attack cases have the expected structure (harmful text is never printed)."""

from safesignal.attacks import attack_names, get_attack

BEHAVIOUR = {"prompt": "Do the forbidden thing", "target": "Sure, here is the thing", "id": "b1", "source": "t"}


def test_registry():
    assert {"direct", "prefill_sure", "gcg_transfer"} <= set(attack_names())


def test_direct_and_prefill_sure():
    (case,) = get_attack("direct").cases(BEHAVIOUR)
    assert case.messages == [{"role": "user", "content": BEHAVIOUR["prompt"]}] and case.prefill is None
    (case,) = get_attack("prefill_sure").cases(BEHAVIOUR)
    assert case.prefill == BEHAVIOUR["target"] and case.behaviour_id == "b1"


def test_gcg_transfer_has_13_suffixes():
    cases = get_attack("gcg_transfer").cases(BEHAVIOUR)
    assert len(cases) == 13 and len({c.variant for c in cases}) == 13
    assert all(c.messages[0]["content"].startswith(BEHAVIOUR["prompt"] + " ") for c in cases)
