"""Early-exit hints: sent from inside the forward pass, used for pre-drafting, never change the output."""

import dataclasses
import time

import pytest

from specdec.engine.drafter import EdgeDecoder
from specdec.engine.verifier import Verifier
from specdec.models.early_exit import EarlyExitHeads
from specdec.models.layout import decoder_layout
from specdec.protocol import DraftBlock, EarlyExitHint, SessionStart, VerifyResult
from specdec.transport.base import CloudTimeout, EdgeTransport
from specdec.transport.inprocess import InProcessTransport

PROMPT = "go forward two meters then turn left"  # same as conftest.PROMPT


class HintRewriter(EdgeTransport):
    """Edge transport wrapper that rewrites every early-exit hint with ``rewrite(hint, block)``."""

    def __init__(self, inner, rewrite, result_delay_s: float = 0.0):
        self.inner = inner
        self.rewrite = rewrite
        self.blocks = {}
        self.result_delay_s = result_delay_s  # a deep target: results trail their hints by this much
        self._held = None

    def send(self, msg):
        if isinstance(msg, DraftBlock):
            self.blocks[msg.round] = msg
        self.inner.send(msg)

    def recv(self, timeout):
        if self._held is not None:
            due, held = self._held
            if time.monotonic() < due:
                time.sleep(min(timeout, due - time.monotonic()))
                if time.monotonic() < due:
                    raise CloudTimeout("held")
            self._held = None
            return held
        msg = self.inner.recv(timeout)
        if isinstance(msg, EarlyExitHint):
            msg = self.rewrite(msg, self.blocks[msg.round])
        elif isinstance(msg, VerifyResult) and self.result_delay_s:
            self._held = (time.monotonic() + self.result_delay_s, msg)
            return self.recv(timeout)
        return msg

    def close(self):
        self.inner.close()


def corrupt(hint, block):
    """A deliberately wrong hint: other accepted count and other next token."""
    return dataclasses.replace(
        hint,
        predicted_accepted=(hint.predicted_accepted + 1) % (len(block.tokens) + 1),
        predicted_next_token=(hint.predicted_next_token + 7) % 100,
    )


def oracle_for(ref):
    """A hint that is always right (it knows the target's reference output)."""

    def rewrite(hint, block):
        accepted = 0
        for i, token in enumerate(block.tokens):
            if ref[block.position + i] != token:
                break
            accepted = i + 1
        return dataclasses.replace(hint, predicted_accepted=accepted,
                                   predicted_next_token=ref[block.position + accepted])

    return rewrite


def _decode(draft, target, image, rewrite, gamma, max_new_tokens):
    verifier = Verifier(target, EarlyExitHeads(target.model, [1]))
    link = InProcessTransport(verifier)
    transport = HintRewriter(link, rewrite)
    try:
        return EdgeDecoder(draft, transport, gamma=gamma, max_new_tokens=max_new_tokens).decode(PROMPT, image)
    finally:
        transport.close()


@pytest.mark.parametrize("arch", ["llama", "idefics3"])
def test_wrong_hints_never_change_output(arch, tiny_pair, reference, image):
    draft, target = tiny_pair(arch, noise=0.03)
    img = None if arch == "llama" else image
    ref = reference(target, PROMPT, img, max_new_tokens=14)
    predrafts = 0
    for gamma in (1, 2, 4):
        result = _decode(draft, target, img, corrupt, gamma, 14)
        assert result.tokens == ref
        predrafts += result.stats.predrafts
        assert result.stats.hints == sum(r.drafted > 0 for r in result.stats.round_log)  # empty blocks: no hint
    assert predrafts > 0  # the wrong hints were acted on (pre-drafts made, then discarded)


def test_always_right_hints_are_all_kept(tiny_pair, reference):
    draft, target = tiny_pair("llama", noise=0.03)
    ref = reference(target, PROMPT, None, max_new_tokens=14)
    for gamma in (2, 4):
        result = _decode(draft, target, None, oracle_for(ref), gamma, 14)
        s = result.stats
        assert result.tokens == ref
        assert s.hints_correct == s.hints == sum(r.drafted > 0 for r in s.round_log)
        assert s.predrafts > 0 and s.predraft_hits == s.predrafts
        kept = [r for r in s.round_log if r.predrafted]
        assert len(kept) == s.predraft_hits


def test_hint_leaves_before_remaining_layers_run(tiny_pair):
    """The hint is emitted from the exit layer's hook: the last decoder layer has not run yet."""
    draft, target = tiny_pair("llama", noise=0.03)
    last_layer = decoder_layout(target.model).layers[-1]
    calls = [0]
    handle = last_layer.register_forward_hook(lambda *a: calls.__setitem__(0, calls[0] + 1))
    log = []
    try:
        verifier = Verifier(target, EarlyExitHeads(target.model, [1]))
        emit = lambda msg: log.append((msg, calls[0]))  # noqa: E731
        start = SessionStart(session_id="s", seq=0, prompt=PROMPT, tokenizer_fingerprint=target.fingerprint,
                             gamma=4, max_new_tokens=12)
        verifier.handle(start, emit)
        state = draft.prefill(draft.encode(PROMPT))
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
            assert 0.0 <= hint.confidence <= 1.0 and 0 < hint.exit_ms <= result.verify_ms
            committed += tokens[:result.accepted] + [result.next_token]
    finally:
        handle.remove()


def test_hint_arrives_while_verification_continues(tiny_pair):
    """Through the threaded in-process transport the hint reaches the edge before the result."""
    draft, target = tiny_pair("llama", noise=0.03)
    slow_layer = decoder_layout(target.model).layers[-1]

    def slow_down(*_args):
        time.sleep(0.05)  # the layers after the exit take 50 ms more

    handle = slow_layer.register_forward_hook(slow_down)
    try:
        verifier = Verifier(target, EarlyExitHeads(target.model, [1]))
        with InProcessTransport(verifier) as link:
            result = EdgeDecoder(draft, link, gamma=4, max_new_tokens=8).decode(PROMPT)
    finally:
        handle.remove()
    hinted = [r for r in result.stats.round_log if r.hint]
    assert hinted and all(r.hint_lead_ms > 10 for r in hinted)  # ~ the 50 ms still to run, minus slack
