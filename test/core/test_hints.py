"""Early-exit hints: sent from inside the forward pass, used for pre-drafting, never change the output."""

import dataclasses
import time

import numpy as np
import pytest
import torch

from specdec.engine.drafter import DecodeConfig, EdgeDecoder
from specdec.engine.verifier import Verifier
from specdec.models.early_exit import EarlyExitHeads
from specdec.models.layout import decoder_layout
from specdec.protocol import DraftBlock, EarlyExitHint, SessionStart, VerifyResult
from specdec.transport.inprocess import InProcessTransport

from hint_rewriting import HintRewriter, corrupt, oracle_for


def _decode(prompt, draft, target, image, rewrite, gamma, max_new_tokens):
    verifier = Verifier(target, EarlyExitHeads(target.model, [1]))
    link = InProcessTransport(verifier)
    transport = HintRewriter(link, rewrite)
    try:
        return EdgeDecoder(draft, transport, gamma=gamma, max_new_tokens=max_new_tokens).decode(prompt, image)
    finally:
        transport.close()


@pytest.mark.parametrize("arch", ["llama", "idefics3"])
def test_wrong_hints_never_change_output(arch, tiny_pair, reference, image, prompt):
    draft, target = tiny_pair(arch, noise=0.03)
    img = None if arch == "llama" else image
    ref = reference(target, prompt, img, max_new_tokens=14)
    predrafts = 0
    for gamma in (1, 2, 4):
        result = _decode(prompt, draft, target, img, corrupt, gamma, 14)
        assert result.tokens == ref
        predrafts += result.stats.predrafts
        assert result.stats.hints == sum(r.drafted > 0 for r in result.stats.round_log)  # empty blocks: no hint
    assert predrafts > 0  # the wrong hints were acted on (pre-drafts made, then discarded)


def test_always_right_hints_are_all_kept(tiny_pair, reference, prompt):
    draft, target = tiny_pair("llama", noise=0.03)
    ref = reference(target, prompt, None, max_new_tokens=14)
    for gamma in (2, 4):
        result = _decode(prompt, draft, target, None, oracle_for(ref), gamma, 14)
        s = result.stats
        assert result.tokens == ref
        assert s.hints_correct == s.hints == sum(r.drafted > 0 for r in s.round_log)
        assert s.predrafts > 0 and s.predraft_hits == s.predrafts
        kept = [r for r in s.round_log if r.predrafted]
        assert len(kept) == s.predraft_hits


def test_hint_leaves_before_remaining_layers_run(tiny_pair, prompt):
    """The hint is emitted from the exit layer's hook: the last decoder layer has not run yet."""
    draft, target = tiny_pair("llama", noise=0.03)
    last_layer = decoder_layout(target.model).layers[-1]
    calls = [0]
    handle = last_layer.register_forward_hook(lambda *a: calls.__setitem__(0, calls[0] + 1))
    exit_states = []  # layer 1's output, to recompute the hint's confidence independently
    exit_handle = decoder_layout(target.model).layers[1].register_forward_hook(
        lambda _m, _i, out: exit_states.append((out[0] if isinstance(out, (tuple, list)) else out).detach()))
    log = []
    try:
        heads = EarlyExitHeads(target.model, [1])
        verifier = Verifier(target, heads)
        emit = lambda msg: log.append((msg, calls[0]))  # noqa: E731
        start = SessionStart(session_id="s", seq=0, prompt=prompt, tokenizer_fingerprint=target.fingerprint,
                             gamma=4, max_new_tokens=12)
        verifier.handle(start, emit)
        state = draft.prefill(draft.encode(prompt))
        committed = []
        for rnd in range(3):
            pending = draft.sync(state, committed)
            tokens = []
            for _ in range(4):
                token = int(draft.forward(state, pending, keep=1)[-1].argmax())
                tokens.append(token)
                pending = [token]
            log.clear()
            verifier.handle(DraftBlock(session_id="s", seq=rnd + 1, round=rnd, position=len(committed),
                                       tokens=tokens, topk=1, topk_ids=tokens, topk_probs=[1.0] * 4), emit)
            (hint, at_hint), (result, at_result) = log
            assert isinstance(hint, EarlyExitHint) and isinstance(result, VerifyResult)
            assert at_result == at_hint + 1  # the last layer ran once, after the hint left
            assert hint.exit_layer == 1 and 0 <= hint.predicted_accepted <= 4
            assert 0 < hint.exit_ms <= result.verify_ms
            a = hint.predicted_accepted
            with torch.inference_mode():
                probs = torch.softmax(heads.exit_logits(1, exit_states[-1][0, -5:]).float(), -1)
            assert [int(t) for t in probs[:a].argmax(-1)] == tokens[:a]  # the exit agreed up to the hint's count
            assert hint.predicted_next_token == int(probs[a].argmax())
            # confidence: the exit's probability of the whole named outcome (the kept drafts, then the token)
            outcome = [float(probs[j, tokens[j]]) for j in range(a)] + [float(probs[a, hint.predicted_next_token])]
            assert hint.confidence == pytest.approx(float(np.prod(outcome)), rel=1e-4)
            committed += tokens[:result.accepted] + [result.next_token]
    finally:
        handle.remove()
        exit_handle.remove()


def test_hint_arrives_while_verification_continues(tiny_pair, prompt):
    """Through the threaded in-process transport the hint reaches the edge before the result."""
    draft, target = tiny_pair("llama", noise=0.03)
    slow_layer = decoder_layout(target.model).layers[-1]

    def slow_down(*_args):
        time.sleep(0.05)  # the layers after the exit take 50 ms more

    handle = slow_layer.register_forward_hook(slow_down)
    try:
        verifier = Verifier(target, EarlyExitHeads(target.model, [1]))
        with InProcessTransport(verifier) as link:
            result = EdgeDecoder(draft, link, gamma=4, max_new_tokens=8).decode(prompt)
    finally:
        handle.remove()
    hinted = [r for r in result.stats.round_log if r.hint]
    assert hinted and all(r.hint_lead_ms > 10 for r in hinted)  # ~ the 50 ms still to run, minus slack


def test_hints_below_min_confidence_are_recorded_not_acted_on(tiny_pair, reference, prompt):
    """``hint_min_confidence``: the edge pre-drafts only on hints whose exit is confident enough;
    the others still count in the stats. Right hints, confident on odd rounds only."""
    draft, target = tiny_pair("llama", noise=0.03)
    ref = reference(target, prompt, None, max_new_tokens=14)
    right = oracle_for(ref)

    def odd_rounds_confident(hint, block):
        return dataclasses.replace(right(hint, block), confidence=0.9 if hint.round % 2 else 0.5)

    for min_confidence, acted_rounds in ((0.7, {1}), (0.0, {0, 1}), (0.95, set())):
        verifier = Verifier(target, EarlyExitHeads(target.model, [1]))
        transport = HintRewriter(InProcessTransport(verifier), odd_rounds_confident)
        try:
            result = EdgeDecoder(draft, transport, gamma=2, max_new_tokens=14,
                                 hint_min_confidence=min_confidence).decode(prompt, None)
        finally:
            transport.close()
        s = result.stats
        assert result.tokens == ref
        assert s.hints == s.hints_correct == sum(r.drafted > 0 for r in s.round_log)
        log = s.round_log
        # a block is pre-drafted exactly when the previous round's hint was acted on (and was not its last)
        expected = [i > 0 and log[i - 1].drafted > 0 and log[i - 1].round % 2 in acted_rounds
                    for i in range(len(log))]
        assert [r.predrafted for r in log] == expected
        assert any(expected) == bool(acted_rounds)
        assert all(h[-1] == (0.9 if r.round % 2 else 0.5) for r in log for h in r.layer_hints)


def test_hint_min_confidence_is_checked():
    with pytest.raises(ValueError, match="hint_min_confidence must be in"):
        DecodeConfig(hint_min_confidence=1.5)
