"""Verifier message handling: refusals, duplicates, stale/out-of-order rounds, timeouts, cleanup."""

import pytest

from specdec.engine.verifier import Verifier
from specdec.protocol import (
    DecodingMode,
    DraftBlock,
    EndReason,
    SessionEnd,
    SessionStart,
    VerifyResult,
)


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def start(prompt, target, sid="s", **kw):
    fields = dict(session_id=sid, seq=0, prompt=prompt, tokenizer_fingerprint=target.fingerprint, gamma=4,
                  max_new_tokens=12)
    fields.update(kw)
    return SessionStart(**fields)


def block(sid, seq, rnd, position, tokens):
    return DraftBlock(session_id=sid, seq=seq, round=rnd, position=position, tokens=list(tokens), topk=1,
                      topk_ids=list(tokens), topk_probs=[1.0] * len(tokens))


@pytest.fixture
def target(tiny_pair):
    return tiny_pair("llama", noise=0.03)[1]


def test_duplicates_resend_cached_result_without_running_target(target, prompt):
    verifier, out = Verifier(target), []
    verifier.handle(start(prompt, target), out.append)
    verifier.handle(block("s", 1, 0, 0, [5, 6, 7]), out.append)
    (first,) = out
    assert isinstance(first, VerifyResult)
    passes = verifier.stats.target_forward_passes
    verifier.handle(block("s", 1, 0, 0, [5, 6, 7]), out.append)  # same seq
    verifier.handle(block("s", 9, 0, 0, [5, 6, 7]), out.append)  # re-sent with a new seq
    assert out[1] is first and out[2] is first
    assert verifier.stats.target_forward_passes == passes
    assert verifier.stats.duplicates == 2


def test_stale_round_is_ignored_and_session_continues(target, prompt):
    verifier, out = Verifier(target), []
    verifier.handle(start(prompt, target), out.append)
    verifier.handle(block("s", 1, 0, 0, [5, 6, 7]), out.append)
    result = out.pop()
    verifier.handle(block("s", 2, 0, 0, [9, 9, 9]), out.append)  # old round, other tokens: stale
    assert out == [] and verifier.stats.stale == 1
    verifier.handle(block("s", 3, 1, result.accepted + 1, [5]), out.append)
    assert isinstance(out[-1], VerifyResult) and out[-1].round == 1


@pytest.mark.parametrize("rnd,position", [(2, None), (1, 99)])
def test_out_of_order_round_is_refused(target, rnd, position, prompt):
    verifier, out = Verifier(target), []
    verifier.handle(start(prompt, target), out.append)
    verifier.handle(block("s", 1, 0, 0, [5, 6]), out.append)
    good_position = out[-1].accepted + 1
    verifier.handle(block("s", 2, rnd, good_position if position is None else position, [5]), out.append)
    end = out[-1]
    assert isinstance(end, SessionEnd) and end.reason == EndReason.BAD_REQUEST
    assert "out-of-order" in end.detail
    assert verifier.open_sessions == []


def test_refusals(target, prompt):
    verifier, out = Verifier(target, max_sessions=1), []
    verifier.handle(start(prompt, target, "a", tokenizer_fingerprint="0" * 64), out.append)
    verifier.handle(start(prompt, target, "b", protocol_version=99), out.append)
    verifier.handle(start(prompt, target, "c", gamma=0), out.append)
    verifier.handle(start(prompt, target, "d", mode=int(DecodingMode.EDGE_ONLY)), out.append)
    verifier.handle(start(prompt, target, "e", image_format="png", image_data=b"\x89PNG broken"), out.append)
    verifier.handle(block("nobody", 1, 0, 0, [1]), out.append)
    reasons = [(m.session_id, EndReason(m.reason)) for m in out]
    assert reasons == [
        ("a", EndReason.TOKENIZER_MISMATCH),
        ("b", EndReason.PROTOCOL_VERSION_MISMATCH),
        ("c", EndReason.BAD_REQUEST),
        ("d", EndReason.BAD_REQUEST),
        ("e", EndReason.BAD_REQUEST),
        ("nobody", EndReason.UNKNOWN_SESSION),
    ]
    assert all(m.detail for m in out)
    assert verifier.open_sessions == []
    out.clear()
    verifier.handle(start(prompt, target, "f"), out.append)
    verifier.handle(start(prompt, target, "g"), out.append)  # over the limit of 1 open session
    assert [EndReason(m.reason) for m in out] == [EndReason.OVERLOADED]
    verifier.handle(block("f", 1, 0, 0, [5] * 5), out.append)  # longer than gamma
    assert EndReason(out[-1].reason) == EndReason.BAD_REQUEST and "gamma" in out[-1].detail


def test_session_timeout_and_cleanup(target, prompt):
    clock = Clock()
    verifier, out = Verifier(target, session_timeout_s=5.0, linger_s=30.0, clock=clock), []
    verifier.handle(start(prompt, target), out.append)
    verifier.handle(block("s", 1, 0, 0, [5, 6]), out.append)
    clock.now += 4.0
    assert verifier.expire(out.append) == []
    clock.now += 2.0
    assert verifier.expire(out.append) == ["s"]
    assert EndReason(out[-1].reason) == EndReason.TIMEOUT and verifier.open_sessions == []
    assert out[-1].target_forward_passes == 2  # prefill + one round
    out.clear()
    verifier.handle(block("s", 2, 1, 3, [5]), out.append)  # the edge wakes up late: told again
    assert [EndReason(m.reason) for m in out] == [EndReason.TIMEOUT]
    clock.now += 31.0
    verifier.expire(out.append)
    out.clear()
    verifier.handle(block("s", 3, 1, 3, [5]), out.append)  # forgotten entirely now
    assert [EndReason(m.reason) for m in out] == [EndReason.UNKNOWN_SESSION]


def test_edge_cancel_frees_session(target, prompt):
    verifier, out = Verifier(target), []
    verifier.handle(start(prompt, target), out.append)
    assert verifier.open_sessions == ["s"]
    verifier.handle(SessionEnd(session_id="s", seq=1, reason=int(EndReason.CANCELLED)), out.append)
    assert verifier.open_sessions == [] and out == []


def test_finished_session_reports_totals_and_answers_duplicates(target, prompt):
    verifier, out = Verifier(target), []
    verifier.handle(start(prompt, target, max_new_tokens=2), out.append)
    verifier.handle(block("s", 1, 0, 0, [5]), out.append)
    result = out[0]
    if not result.finished:
        verifier.handle(block("s", 2, 1, result.accepted + 1, []), out.append)
    final, end = out[-2], out[-1]
    assert final.finished and isinstance(end, SessionEnd) and end.reason == EndReason.COMPLETED
    assert end.target_forward_passes == final.target_forward_passes and end.cloud_compute_ms > 0
    assert verifier.open_sessions == []
    n = len(out)
    verifier.handle(block("s", 1, 0, 0, [5]), out.append)  # a duplicate after the end
    assert out[n] is result


def test_cloud_only_session(target, reference, prompt):
    verifier, out = Verifier(target), []
    verifier.handle(start(prompt, target, mode=int(DecodingMode.CLOUD_ONLY), max_new_tokens=7), out.append)
    (end,) = out
    assert end.reason == EndReason.COMPLETED and end.tokens == reference(target, prompt, None, 7)
    assert end.target_forward_passes == 8
    assert verifier.open_sessions == []


def test_internal_error_is_reported_not_raised(target, prompt):
    def broken(*_a, **_k):
        raise RuntimeError("boom")

    verifier, out = Verifier(target, greedy_rule=broken), []
    verifier.handle(start(prompt, target), out.append)
    verifier.handle(block("s", 1, 0, 0, [5]), out.append)
    assert EndReason(out[-1].reason) == EndReason.INTERNAL_ERROR and "boom" in out[-1].detail
    assert verifier.open_sessions == []
