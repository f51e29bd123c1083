"""Edge transports that rewrite early-exit hints (wrong on purpose, or always right), shared by
the hint and eager pre-drafting tests."""

import dataclasses
import time

from specdec.protocol import DraftBlock, EarlyExitHint, VerifyResult
from specdec.transport.base import CloudTimeout, EdgeTransport


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
