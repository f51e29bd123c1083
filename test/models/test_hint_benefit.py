"""Choosing the hint layer and the confidence a hint needs by expected benefit."""

import pytest

from specdec.engine.predraft import hint_saving_ms
from specdec.engine.stats import DecisionStats, RoundStats, hint_accuracy_by_layer, hint_outcomes_by_layer
from training.text.evaluate import _hint_layers


def test_a_right_hint_hides_the_rest_of_the_pass_up_to_a_block():
    # layer at half depth of a 60 ms pass: 30 ms left, a block drafts in 20 ms -> all of it hidden
    assert hint_saving_ms(1.0, 0.5, 60.0, 20.0) == pytest.approx(20.0)
    assert hint_saving_ms(1.0, 0.5, 60.0, 50.0) == pytest.approx(30.0)  # only the 30 ms left
    assert hint_saving_ms(0.5, 0.5, 60.0, 50.0, exit_ms=4.0) == pytest.approx(11.0)


def test_a_wrong_hint_costs_what_its_block_runs_past_the_result():
    # the paper's policy drafts the whole wrong block: 50 ms against 30 left -> the real block starts 20 ms late
    assert hint_saving_ms(0.0, 0.5, 60.0, 50.0, wrong=1.0) == pytest.approx(-20.0)
    assert hint_saving_ms(0.0, 0.5, 60.0, 20.0, wrong=1.0) == 0.0  # done before the result: free
    assert hint_saving_ms(0.6, 0.5, 60.0, 50.0, wrong=0.4) == pytest.approx(0.6 * 30 - 0.4 * 20)


def _decision(round_hints):
    """A decision whose rounds carry ``[(layer, confidence, right), ...]`` hints each."""
    d = DecisionStats()
    for hints in round_hints:
        r = RoundStats(round=len(d.round_log), position=0, drafted=4, verify_ms=60.0, draft_ms=4 * 12.5)
        r.layer_hints = [(layer, 0, 0, right, p) for layer, p, right in hints]
        d.round_log.append(r)
        d.rounds += 1
        d.verify_ms += r.verify_ms
        d.draft_ms += r.draft_ms
        d.drafted_tokens += 4
    return d


def test_the_gate_that_saves_most_is_chosen_per_layer():
    # layer 1 (depth 0.5 of 4 layers): 30 ms of pass left, blocks of 50 ms; confident hints right, unsure ones wrong
    confident, unsure = (1, 0.9, True), (1, 0.1, False)
    hints = _decision([[confident]] * 6 + [[unsure]] * 4)
    chain = _decision([[]] * 10)  # same pass and drafting times, no hints: the exits cost nothing here
    assert hint_outcomes_by_layer([hints]) == {1: [(0.9, True)] * 6 + [(0.1, False)] * 4}
    assert hint_accuracy_by_layer([hints]) == {1: (6, 10)}
    out = _hint_layers([chain], [hints], num_layers=4, gamma=4)
    row = out["layers"]["1"]
    assert row["right"] == 0.6 and out["exit_ms"] == 0.0
    assert row["saving_ms"] == pytest.approx(0.6 * 30)  # eager: the wrong hints cost nothing
    paper = row["hint_policy"]
    assert paper["every"]["saving_ms"] == pytest.approx(0.6 * 30 - 0.4 * 20)  # every hint acted on
    gate = paper["best_gate"]
    assert gate["min_confidence"] > 0.1 and gate["acted"] == 0.6 and gate["right_when_acted"] == 1.0
    assert gate["saving_ms"] == pytest.approx(0.6 * 30)
    assert out["best"] == {"eager": "1", "hint": "1"}
