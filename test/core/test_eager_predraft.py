"""Eager, interruptible pre-drafting (policy "eager", ours) keeps speculative decoding lossless."""

import pytest

from specdec.engine.drafter import EdgeDecoder
from specdec.engine.local import LocalSpeculativeDecoder
from specdec.engine.verifier import Verifier
from specdec.models.early_exit import EarlyExitHeads
from specdec.protocol import DecodingMode
from specdec.transport.inprocess import InProcessTransport

from hint_rewriting import HintRewriter, corrupt, oracle_for


@pytest.mark.parametrize("arch", ["llama", "qwen2_vl"])
def test_eager_greedy_identical_to_generate(arch, tiny_pair, reference, image, prompt):
    draft, target = tiny_pair(arch, noise=0.03)
    img = None if arch == "llama" else image
    ref = reference(target, prompt, img, max_new_tokens=16)
    hits = predrafts = 0
    # a 20 ms link gives the edge time to pre-draft before each result lands
    with LocalSpeculativeDecoder(draft, target, exit_heads=EarlyExitHeads(target.model, [1]), latency_s=0.02,
                                 predraft_policy="eager") as runner:
        for gamma in (1, 2, 4, 8):
            result = runner.generate(prompt, img, DecodingMode.SPECULATIVE_EARLY_EXIT, gamma=gamma,
                                     max_new_tokens=16)
            assert result.tokens == ref, (gamma, result.tokens, ref)
            assert result.stats.target_forward_passes == result.stats.rounds + 1
            hits += result.stats.predraft_hits
            predrafts += result.stats.predrafts
    assert predrafts > 0 and hits > 0  # pre-drafts were made and some were kept


def _decode(prompt, draft, target, rewrite, gamma, latency_s=0.0, result_delay_s=0.0):
    link = InProcessTransport(Verifier(target, EarlyExitHeads(target.model, [1])), latency_s=latency_s)
    transport = HintRewriter(link, rewrite, result_delay_s)
    try:
        return EdgeDecoder(draft, transport, gamma=gamma, max_new_tokens=14,
                           predraft_policy="eager").decode(prompt, None)
    finally:
        transport.close()


def test_eager_with_wrong_hints_is_lossless(tiny_pair, reference, prompt):
    draft, target = tiny_pair("llama", noise=0.03)
    ref = reference(target, prompt, None, max_new_tokens=14)
    for gamma in (1, 2, 4):
        assert _decode(prompt, draft, target, corrupt, gamma).tokens == ref


def test_eager_with_oracle_hints_keeps_every_predraft(tiny_pair, reference, prompt):
    """When results trail their hints (a deep target), the edge pre-drafts on the hint; right hints
    make every pre-draft a hit."""
    draft, target = tiny_pair("llama", noise=0.03)
    ref = reference(target, prompt, None, max_new_tokens=14)
    result = _decode(prompt, draft, target, oracle_for(ref), 4, latency_s=0.02, result_delay_s=0.05)
    s = result.stats
    assert result.tokens == ref
    assert s.predrafts > 0 and s.predraft_hits == s.predrafts


def test_unknown_policy_refused(tiny_pair, prompt):
    draft, target = tiny_pair("llama", noise=0.03)
    with pytest.raises(ValueError, match="predraft_policy"):
        EdgeDecoder(draft, InProcessTransport(None), predraft_policy="psychic").decode(prompt)
