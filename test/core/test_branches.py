"""Alternatives: a greedy block also offers the draft's next-best tokens, which the verifier runs as
one-token branches of the same pass. When the target's token at the first rejection is one of them,
the branch row gives the token after it: one more committed token per hit, and the output stays the
target's greedy output token for token."""

import re

import pytest
import torch

from specdec.engine.drafter import DecodeConfig, accepted_tokens, _alternatives
from specdec.engine.grammar import compile_grammar
from specdec.engine.interfaces import DraftProposal
from specdec.engine.local import LocalSpeculativeDecoder
from specdec.engine.sampling import SamplingParams
from specdec.engine.token_loop import TokenLoop, TokenPicker
from specdec.protocol import DecodingMode, DraftBlock, EndReason, SessionEnd, SessionStart, VerifyResult

ARCHS = ["llama", "qwen2_vl", "idefics3", "llava"]


@pytest.mark.parametrize("arch", ARCHS)
def test_branch_rows_are_what_the_model_computes_for_that_prefix(arch, tiny_pair, image, prompt):
    _, target = tiny_pair(arch, noise=0.03)
    assert target.can_branch
    img = None if arch == "llama" else image
    inputs = target.encode(prompt, img)
    vocab = target.token_count
    feed = [inputs.input_ids[-1], 7 % vocab, 11 % vocab, 13 % vocab]
    branches = [(0, 17 % vocab), (1, 19 % vocab), (2, 23 % vocab), (0, 29 % vocab)]

    state = target.prefill(inputs)
    base = state.length
    hidden = target.forward_with_branches(state, feed, branches, keep=4)
    assert hidden.shape[0] == 4 + len(branches)
    assert state.length == base + 4 and state.cache.get_seq_length() == base + 4  # branches not cached

    chain = target.forward_hidden(target.prefill(inputs), feed, keep=4)
    torch.testing.assert_close(hidden[:4], chain, rtol=0, atol=1e-5)
    for j, (parent, token) in enumerate(branches):
        alone = target.forward_hidden(target.prefill(inputs), feed[:parent + 1] + [token], keep=1)
        torch.testing.assert_close(hidden[4 + j:5 + j], alone, rtol=0, atol=1e-4)
        assert int(target.logits(hidden[4 + j:5 + j]).argmax()) == int(target.logits(alone).argmax())
    # decoding goes on from the chain, as if the branches had never been fed
    after = target.forward_hidden(state, [31 % vocab], keep=1)
    reference = target.prefill(inputs)
    target.forward_hidden(reference, feed)
    torch.testing.assert_close(after, target.forward_hidden(reference, [31 % vocab], keep=1), rtol=0, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_with_alternatives_is_identical_to_generate(arch, tiny_pair, reference, image, prompt):
    draft, target = tiny_pair(arch, noise=0.03)
    img = None if arch == "llama" else image
    ref = reference(target, prompt, img, max_new_tokens=16)
    plain = {}
    with LocalSpeculativeDecoder(draft, target) as runner:
        for gamma in (1, 2, 4):
            plain[gamma] = runner.generate(prompt, img, DecodingMode.SPECULATIVE, gamma=gamma,
                                           max_new_tokens=16).stats.rounds
    taken = 0
    with LocalSpeculativeDecoder(draft, target) as runner:
        for gamma in (1, 2, 4):
            for alternatives in (1, 3):
                for mode in (DecodingMode.SPECULATIVE, DecodingMode.SPECULATIVE_EARLY_EXIT):
                    result = runner.generate(prompt, img, mode, gamma=gamma, max_new_tokens=16,
                                             alternatives=alternatives)
                    assert result.tokens == ref, (gamma, alternatives, mode)
                    assert result.stats.target_forward_passes == result.stats.rounds + 1
                    taken += sum(r.alternative for r in result.stats.round_log)
                    assert result.stats.rounds <= plain[gamma], (gamma, alternatives)
        hits = runner.verifier.stats.branch_hits
    assert hits > 0  # the draft's second choices were right sometimes: rounds that committed one token more
    assert taken == hits  # the edge saw every one


def test_alternatives_under_a_grammar_give_the_constrained_target(tiny_pair, prompt):
    draft, target = tiny_pair("llama", noise=0.2)
    pattern = r"(?:forward|backward|left|right) [1-9]|stop|done"
    grammar = compile_grammar(pattern, target, target.eos_token_ids)
    loop = TokenLoop(target, target.prefill(target.encode(prompt)), [], limit=10,
                     picker=TokenPicker("greedy", SamplingParams()), stop=frozenset(target.eos_token_ids),
                     grammar=grammar)
    ref = loop.run().tokens
    with LocalSpeculativeDecoder(draft, target, grammar=pattern, alternatives=3) as runner:
        for gamma in (1, 4):
            result = runner.generate(prompt, None, DecodingMode.SPECULATIVE, gamma=gamma, max_new_tokens=10)
            assert result.tokens == ref
            assert re.fullmatch(pattern, target.decode_text(result.tokens))


def test_greedy_picker_records_the_next_best_tokens():
    logits = torch.tensor([0.1, 3.0, 2.0, -1.0, 2.5])
    token, _, ids, probs = TokenPicker("greedy", SamplingParams(), alternatives=2).pick(logits)
    assert token == 1 and ids == [1, 4, 2] and probs[0] > probs[1] > probs[2]
    allowed = torch.tensor([True, True, False, False, False])  # a grammar leaves one alternative
    assert TokenPicker("greedy", SamplingParams(), alternatives=2).pick(logits, allowed=allowed)[2] == [1, 0]
    head = torch.tensor([40, 41, 42, 43, 44])  # a reduced head maps columns to token ids
    assert TokenPicker("greedy", SamplingParams(), alternatives=1).pick(logits, ids=head)[2] == [41, 44]


def test_the_edge_commits_an_alternative_only_where_it_offered_one():
    block = DraftProposal([], [5, 6], [0.9, 0.8], topk=3, topk_ids=[5, 7, 8, 6, 9, 6])
    assert _alternatives(block, 0) == [7, 8] and _alternatives(block, 1) == [9]
    assert accepted_tokens(block, VerifyResult(accepted=2, next_token=3)) == [5, 6]
    assert accepted_tokens(block, VerifyResult(accepted=2, next_token=3, alternative=9)) == [5, 9]
    assert accepted_tokens(block, VerifyResult(accepted=1, next_token=3, alternative=7)) == [7]
    with pytest.raises(ValueError, match="alternatives"):
        DecodeConfig(alternatives=99)


def test_malformed_alternatives_are_refused(tiny_pair):
    from specdec.engine.verifier import Verifier

    draft, target = tiny_pair("llama", noise=0.03)
    verifier = Verifier(target)
    for sid, (bad, detail) in enumerate(((dict(topk=2, topk_ids=[1, 2, 3]), "topk_ids of len"),
                                         (dict(topk=2, topk_ids=[1, 10 ** 6, 2, 3]), "outside the vocabulary"))):
        out = []
        verifier.handle(SessionStart(session_id=str(sid), seq=0, prompt="hello", gamma=4, max_new_tokens=8,
                                     tokenizer_fingerprint=target.fingerprint), out.append)
        verifier.handle(DraftBlock(session_id=str(sid), seq=1, round=0, position=0, tokens=[1, 2], **bad),
                        out.append)
        ends = [m for m in out if isinstance(m, SessionEnd)]
        assert ends and ends[-1].reason == EndReason.BAD_REQUEST and detail in ends[-1].detail, out


def test_max_branches_0_verifies_blocks_without_their_branches(tiny_pair, reference, prompt):
    """A verifier may refuse the work (max_branches 0): same output, no hits. (A pass shared by
    several robots drops them too: test_batching runs robots with alternatives.)"""
    draft, target = tiny_pair("llama", noise=0.03)
    ref = reference(target, prompt, None, max_new_tokens=12)
    with LocalSpeculativeDecoder(draft, target, alternatives=2, verifier_kwargs=dict(max_branches=0)) as runner:
        result = runner.generate(prompt, None, DecodingMode.SPECULATIVE, gamma=2, max_new_tokens=12)
        assert result.tokens == ref and runner.verifier.stats.branch_hits == 0


def test_max_branches_1_verifies_one_branch_a_block(tiny_pair, reference, prompt):
    """A verifier that takes one branch (max_branches 1) of a block without the draft's probabilities
    takes the first drafted position's (a tree of gamma + 2 rows); with them, the one the draft gives the
    best chance. Same output either way."""
    from types import SimpleNamespace

    from specdec.engine.verifier import Verifier

    draft, target = tiny_pair("llama", noise=0.03)
    sess = SimpleNamespace(params=SamplingParams(), stop=frozenset())
    block = DraftBlock(session_id="s", seq=1, round=0, position=0, tokens=[5, 6, 7], topk=3,
                       topk_ids=[5, 8, 9, 6, 10, 11, 7, 12, 13])
    assert Verifier(target, max_branches=1)._branches(sess, block) == [(0, 8)]
    assert Verifier(target, max_branches=3)._branches(sess, block) == [(0, 8), (0, 9), (1, 10)]
    block.topk_probs = [0.9, 0.06, 0.04, 0.5, 0.4, 0.1, 0.6, 0.3, 0.1]  # sure of position 0, unsure at 1
    assert Verifier(target, max_branches=1)._branches(sess, block) == [(1, 10)]
    ref = reference(target, prompt, None, max_new_tokens=16)
    taken = 0
    with LocalSpeculativeDecoder(draft, target, alternatives=1, verifier_kwargs=dict(max_branches=1)) as runner:
        for gamma in (2, 4):
            result = runner.generate(prompt, None, DecodingMode.SPECULATIVE, gamma=gamma, max_new_tokens=16)
            assert result.tokens == ref, gamma
            taken += sum(r.alternative for r in result.stats.round_log)
        assert taken == runner.verifier.stats.branch_hits
    assert taken > 0  # else the check above had nothing to check


def test_branches_are_chosen_by_the_drafts_chance_of_reaching_and_hitting_them():
    from specdec.engine.sampling import choose_branches

    tokens, ids = [5, 6, 7], [5, 8, 9, 6, 10, 11, 7, 12, 13]
    # sure of position 0 (0.9), unsure at 1: reaching 1 and its first alternative there 0.9 x 0.4 = 0.36
    # beats position 0's 0.06; position 2's 0.9 x 0.5 x 0.3 = 0.135 comes next
    probs = [0.9, 0.06, 0.04, 0.5, 0.4, 0.1, 0.6, 0.3, 0.1]
    assert choose_branches(tokens, ids, probs, 3, frozenset(), 1) == [(1, 10)]
    assert choose_branches(tokens, ids, probs, 3, frozenset(), 2) == [(1, 10), (2, 12)]
    assert len(choose_branches(tokens, ids, probs, 3, frozenset(), 16)) == 6  # all of them, block order
    assert choose_branches(tokens, ids, probs, 3, frozenset({6}), 16) == [(0, 8), (0, 9)]  # none past a stop
    for unusable in ([], probs[:-1], [float("nan")] + probs[1:], [2.0] + probs[1:]):  # nearest positions first
        assert choose_branches(tokens, ids, unusable, 3, frozenset(), 2) == [(0, 8), (0, 9)]
    assert choose_branches([5, 6], [5, 5, 6, 8], [0.5, 0.5, 0.5, 0.4], 2, frozenset(), 4) == [(1, 8)]  # not the drafted


def test_sampling_ignores_alternatives(tiny_pair, prompt):
    """Alternatives are a greedy device: a sampled decision is the same draw with or without them
    (its blocks carry the draft's distribution, which rejection sampling needs as it is)."""
    draft, target = tiny_pair("llama", noise=0.03)
    with LocalSpeculativeDecoder(draft, target, do_sample=True, temperature=0.8, seed=3) as runner:
        plain = runner.generate(prompt, None, DecodingMode.SPECULATIVE, max_new_tokens=12)
        with_alternatives = runner.generate(prompt, None, DecodingMode.SPECULATIVE, max_new_tokens=12,
                                            alternatives=3)
        assert runner.verifier.stats.branch_hits == 0
    assert with_alternatives.tokens == plain.tokens
