"""In-process transport: timeouts instead of hangs, duplicated messages, latency, byte counts."""

import time

import pytest

from specdec.engine.drafter import CloudError, EdgeDecoder
from specdec.engine.local import LocalSpeculativeDecoder
from specdec.engine.verifier import Verifier
from specdec.models.adapters import TokenizerMismatchError, wrap_model
from specdec.models.tiny import build_tiny
from specdec.protocol import DecodingMode, DraftBlock, EndReason
from specdec.transport.base import CloudTimeout, EdgeTransport
from specdec.transport.inprocess import InProcessTransport


class Doubler(EdgeTransport):
    """Every message is sent twice and delivered twice (an at-least-once link)."""

    def __init__(self, inner):
        self.inner = inner
        self.pending = []

    def send(self, msg):
        self.inner.send(msg)
        self.inner.send(msg)

    def recv(self, timeout):
        if self.pending:
            return self.pending.pop()
        msg = self.inner.recv(timeout)
        self.pending.append(msg)
        return msg

    def close(self):
        self.inner.close()


class GoesSilent:
    """A verifier that answers the first ``rounds`` blocks, then never again."""

    def __init__(self, verifier, rounds):
        self.verifier = verifier
        self.rounds = rounds

    def serve(self, transport, stop):
        while not stop.is_set():
            msg = transport.recv(0.05)
            if msg is None:
                continue
            if isinstance(msg, DraftBlock) and msg.round >= self.rounds:
                continue
            self.verifier.handle(msg, transport.send)


@pytest.mark.parametrize("mode", [DecodingMode.SPECULATIVE_EARLY_EXIT, DecodingMode.CLOUD_ONLY])
def test_dead_cloud_times_out(mode, tiny_pair, prompt):
    draft, _ = tiny_pair("llama", noise=0.03)
    with InProcessTransport(None) as link:
        edge = EdgeDecoder(draft, link, timeout_s=0.3)
        t0 = time.monotonic()
        with pytest.raises(CloudTimeout, match="did not answer"):
            edge.decode(prompt, None, mode)
        assert time.monotonic() - t0 < 3.0


def test_cloud_that_stops_answering_mid_session(tiny_pair, prompt):
    draft, target = tiny_pair("llama", noise=0.03)
    with InProcessTransport(GoesSilent(Verifier(target), rounds=2)) as link:
        edge = EdgeDecoder(draft, link, timeout_s=0.3, max_new_tokens=30)
        with pytest.raises(CloudTimeout, match="round 2"):
            edge.decode(prompt)


def test_duplicated_messages_do_not_change_output(tiny_pair, reference, prompt):
    draft, target = tiny_pair("llama", noise=0.03)
    ref = reference(target, prompt, None, max_new_tokens=14)
    verifier = Verifier(target)
    with Doubler(InProcessTransport(verifier)) as link:
        result = EdgeDecoder(draft, link, gamma=4, max_new_tokens=14).decode(prompt, None, DecodingMode.SPECULATIVE)
    assert result.tokens == ref
    assert verifier.stats.duplicates >= result.stats.rounds - 1  # every block came twice
    assert result.stats.target_forward_passes == result.stats.rounds + 1  # duplicates never re-ran the target


def test_latency_and_bytes(tiny_pair, reference, prompt):
    draft, target = tiny_pair("llama", noise=0.03)
    ref = reference(target, prompt, None, max_new_tokens=6)
    with LocalSpeculativeDecoder(draft, target, latency_s=0.02) as runner:
        result = runner.generate(prompt, None, DecodingMode.SPECULATIVE, max_new_tokens=6)
    s = result.stats
    assert result.tokens == ref
    assert s.wait_ms >= 40 * s.rounds * 0.9  # two one-way delays per round
    assert s.bytes_sent > 0 and s.bytes_received > 0
    assert set(s.to_msg_fields()) >= {"bytes_sent", "wait_ms", "cloud_compute_ms"}
    assert s.cloud_compute_ms > 0 and s.latency_ms >= s.wait_ms


def test_tokenizer_mismatch_refused(tiny_pair, prompt):
    draft, target = tiny_pair("llama", noise=0.03)
    other_model, other_tok = build_tiny("llama", layers=1)
    other_tok.add_tokens(["extra"])
    other = wrap_model(other_model, other_tok)
    with pytest.raises(TokenizerMismatchError, match="different tokenizers"):
        LocalSpeculativeDecoder(other, target)
    with InProcessTransport(Verifier(target)) as link:  # a remote edge that does not check first
        with pytest.raises(CloudError, match="TOKENIZER_MISMATCH") as info:
            EdgeDecoder(other, link, timeout_s=5).decode(prompt)
    assert info.value.reason == EndReason.TOKENIZER_MISMATCH
