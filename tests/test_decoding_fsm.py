"""The per-row state machine, refusal spans and release frontier, without a model.

Expected windows are written out from DESIGN.md §Decoding by hand (Rule 1: first r1 response
tokens; Rule 2: last r2; Rule 3 at S: [S - r2, min(now, S + r3)]).
"""

from __future__ import annotations

import math

from safesignal.decoding.fsm import Inject, RowSafety, refusal_spans, window_in_refusal
from safesignal.decoding.policy import SafetyPolicy
from safesignal.decoding.stream import release_frontier

MAL, BEN = 0.9, 0.1


def never_refusal(_token):
    return False


def run(fsm: RowSafety, step: int, newest: int, probability: float, *, frontier: int = 0, error=None,
        own_refusal=never_refusal):
    check = fsm.check_for(step, newest)
    assert check is not None, f"no check at step {step}"
    return check, fsm.verdict(check, probability, error, frontier, newest, own_refusal)


def test_rule2_windows_follow_the_schedule_while_benign():
    fsm = RowSafety(SafetyPolicy(r2=3, schedule="periodic", period=2))
    assert fsm.first_verdict(BEN, None, None, frontier=0) is None
    assert fsm.check_for(1, 1) is None  # periodic(2): no check at step 1
    check, action = run(fsm, 2, 2, BEN)
    assert (check.window, check.rule, action) == ((1, 2), "rule2", None)
    check, _ = run(fsm, 6, 6, BEN)
    assert check.window == (4, 6)  # the last r2 = 3 tokens


def test_a_confirmation_checks_every_step_over_rule3_and_tau_injects_at_s():
    fsm = RowSafety(SafetyPolicy(r2=3, r3=2, tau=3, schedule="periodic", period=4))
    fsm.first_verdict(BEN, None, None, frontier=0)
    _, action = run(fsm, 4, 5, MAL)  # response token 5 is fed at step 4 (one prefill token)
    assert action is None and fsm.transition == 5 and fsm.holds_from == 5
    check, action = run(fsm, 5, 6, MAL)  # off-schedule, but a confirmation checks every step
    assert (check.window, check.rule, action) == ((2, 6), "rule3", None)
    check, action = run(fsm, 6, 7, MAL)
    assert check.window == (2, 7)  # capped at S + r3 = 7
    assert action == Inject(5, "malicious") and not fsm.checking
    assert fsm.check_for(7, 8) is None  # checks stop after an injection
    assert [e.outcome for e in fsm.events] == [None, None, None, "injected"]


def test_a_benign_verdict_clears_the_confirmation():
    fsm = RowSafety(SafetyPolicy(tau=2, schedule="each"))
    fsm.first_verdict(BEN, None, None, frontier=0)
    run(fsm, 1, 1, MAL)
    _, action = run(fsm, 2, 2, BEN)
    assert action is None and fsm.state == "benign" and fsm.holds_from is None
    check, _ = run(fsm, 3, 3, MAL)
    assert check.rule == "rule2" and fsm.transition == 3  # a new confirmation from 3


def test_a_confirmation_over_the_models_own_refusal_injects_nothing_and_checks_go_on():
    fsm = RowSafety(SafetyPolicy(tau=2, schedule="each"))
    fsm.first_verdict(BEN, None, None, frontier=0)
    asked = []

    def own(token):
        asked.append(token)
        return token <= 4  # tokens 1-4 are the model's own refusal

    run(fsm, 3, 3, MAL, own_refusal=own)
    _, action = run(fsm, 4, 4, MAL, own_refusal=own)
    assert action is None and asked == [3] and fsm.events[-1].outcome == "self_refusal"
    assert fsm.checking and fsm.state == "benign"
    run(fsm, 5, 5, MAL, own_refusal=own)  # the answer after the refusal: S = 5
    _, action = run(fsm, 6, 6, MAL, own_refusal=own)
    assert action == Inject(5, "malicious") and asked == [3, 5]


def test_a_failed_check_fails_closed_from_the_frontier_on_every_policy():
    for decoding in (True, False):
        fsm = RowSafety(SafetyPolicy(schedule="each", strategic_decoding=decoding))
        fsm.first_verdict(BEN, None, None, frontier=2)
        _, action = run(fsm, 1, 3, math.nan, frontier=2)
        assert action == Inject(3, "fail_closed") and "non-finite" in fsm.error
        fsm = RowSafety(SafetyPolicy(strategic_decoding=decoding))
        assert fsm.first_verdict(BEN, (1, 2), "safety check raised KeyError", frontier=2) == Inject(3, "fail_closed")
        assert fsm.events[-1].label == "malicious" and fsm.events[-1].outcome == "fail_closed"


def test_eos_during_a_confirmation_is_decided_by_the_latest_verdict():
    fsm = RowSafety(SafetyPolicy(tau=3, schedule="each"))
    fsm.first_verdict(BEN, None, None, frontier=0)
    run(fsm, 1, 1, BEN)
    run(fsm, 2, 2, MAL)
    assert fsm.at_end(never_refusal) == Inject(2, "malicious")
    fsm = RowSafety(SafetyPolicy(tau=3, schedule="each"))
    fsm.first_verdict(BEN, None, None, frontier=0)
    run(fsm, 1, 1, MAL)
    assert fsm.at_end(lambda token: True) is None and fsm.events[-1].outcome == "self_refusal"
    assert RowSafety(SafetyPolicy()).at_end(never_refusal) is None  # nothing pending


def test_injection_off_tracks_with_rule1_and_rule3_and_never_injects():
    fsm = RowSafety(SafetyPolicy(strategic_decoding=False, r1=4, schedule="each"))
    assert fsm.first_verdict(MAL, None, None, frontier=0) is None
    check, _ = run(fsm, 1, 1, MAL)
    assert (check.rule, check.window) == ("rule1", (1, 1))
    check, _ = run(fsm, 9, 9, MAL)
    assert check.window == (1, 4)
    fsm = RowSafety(SafetyPolicy(strategic_decoding=False, tau=2, r2=2, r3=1, schedule="each"))
    fsm.first_verdict(BEN, None, None, frontier=0)
    run(fsm, 1, 4, MAL)
    assert fsm.holds_from is None  # no rollback can come: nothing is held back
    _, action = run(fsm, 2, 5, MAL)
    assert action is None and fsm.state == "tracking"
    check, action = run(fsm, 3, 6, MAL)
    assert (check.rule, check.window, action) == ("rule3", (2, 5), None)


def test_injection_off_records_where_injection_would_have_refused():
    fsm = RowSafety(SafetyPolicy(strategic_decoding=False))
    fsm.first_verdict(MAL, None, None, frontier=0)  # injection on refuses here at once
    assert fsm.events[-1].outcome == "confirmed"
    fsm = RowSafety(SafetyPolicy(strategic_decoding=False, tau=3, schedule="each"))
    fsm.first_verdict(BEN, None, None, frontier=0)
    outcomes = [(run(fsm, t, t, p), fsm.events[-1].outcome)[1] for t, p in ((1, MAL), (2, MAL), (3, MAL), (4, MAL))]
    assert outcomes == [None, None, "confirmed", None]  # the tau-th consecutive malicious verdict, once
    own = RowSafety(SafetyPolicy(strategic_decoding=False, tau=2, schedule="each"))
    own.first_verdict(BEN, None, None, frontier=0)
    run(own, 1, 1, MAL)
    run(own, 2, 2, MAL, own_refusal=lambda token: True)
    assert own.events[-1].outcome == "self_refusal" and own.state == "benign"  # as with injection on
    pending = RowSafety(SafetyPolicy(strategic_decoding=False, tau=3, schedule="each"))
    pending.first_verdict(BEN, None, None, frontier=0)
    run(pending, 1, 1, MAL)
    assert pending.at_end(never_refusal) is None and pending.events[-1].outcome == "confirmed_at_end"  # the end decides, said apart


def test_refusal_spans_run_from_a_marker_to_the_end_of_its_sentence():
    text = "Sure. I can't help. Just kidding: step 1"
    assert refusal_spans(text, ["i can't help"], 4) == [(6, 19)]
    assert refusal_spans("SORRY, I CANNOT do that", ["sorry, i cannot"], 4) == [(0, 23)]  # sentence still open
    assert refusal_spans(text, [], 4) == []


def test_a_marker_still_being_written_counts_from_its_first_characters():
    assert refusal_spans("Well. Sorry, I ca", ["sorry, i cannot"], 4) == [(6, 17)]
    assert refusal_spans("Well. Sor", ["sorry, i cannot"], 4) == []  # 3 < 4 characters
    assert refusal_spans("Sorry, I can do that", ["sorry, i cannot"], 4) == []  # it went elsewhere


def _ends(pieces):
    ends = [0]
    for piece in pieces:
        ends.append(ends[-1] + len(piece))
    return "".join(pieces), ends


def test_a_window_is_in_a_refusal_only_where_the_model_wrote_the_marker():
    text, ends = _ends(["Sorry", ", I can't", " help", ".", " Just", " kidding"])
    markers = ["sorry, i can't"]
    # windows from token k to token 4 lie in the refusal sentence; any window reaching token 5 does not
    assert [window_in_refusal(ends, text, k, 4, 1, markers, 4, 32) for k in range(1, 5)] == [True] * 4
    assert not any(window_in_refusal(ends, text, k, 5, 1, markers, 4, 32) for k in range(1, 6))
    # the same text as a user prefill (tokens 1-4) is not the model's own refusal
    assert not any(window_in_refusal(ends, text, k, 4, 5, markers, 4, 32) for k in range(1, 5))


def test_a_marker_inside_a_sentence_is_not_a_refusal():
    assert refusal_spans("I can't help but tell you: step 1", ["i can't help"], 4) == [(0, 33)]  # opens the text
    assert refusal_spans("Here it is, and sorry, I cannot stop now", ["sorry, i cannot"], 4) == []
    assert refusal_spans("Done. Sorry, I cannot go on.", ["sorry, i cannot"], 4) == [(6, 28)]
    assert refusal_spans("Step 1: sorry, I can", ["sorry, i cannot"], 4) == [(8, 20)]  # after a colon, partial


def test_a_refusal_longer_than_its_token_cap_is_not_a_self_refusal():
    words = ["I can't", " help", " but"] + [f" word{k}" for k in range(10)]
    text, ends = _ends(words)
    markers = ["i can't help"]
    assert window_in_refusal(ends, text, 2, 5, 1, markers, 4, 5)  # tokens 1..5: within a cap of 5
    assert not window_in_refusal(ends, text, 2, 6, 1, markers, 4, 5)  # token 6 is past it
    assert window_in_refusal(ends, text, 2, 6, 1, markers, 4, 6)


def test_release_frontier_holds_a_confirmation_from_s_on():
    assert release_frontier(7, None) == 7
    assert release_frontier(7, 5) == 4
    assert release_frontier(3, 5) == 3
