"""A draft conditioned on the target's states (specdec.models.feature_draft): decoding it step by
step with states arriving round by round equals one pass over the whole sequence, the states
travel with each result, and speculative decoding with it stays token-identical to the target."""

import pytest
import torch

from specdec.engine.drafter import EdgeDecoder
from specdec.engine.local import LocalSpeculativeDecoder
from specdec.models.early_exit import EarlyExitHeads
from specdec.models.feature_draft import FeatureDraftError, encode_states
from specdec.models.tiny import tiny_feature_draft
from specdec.protocol import DecodingMode, ProtocolError, VerifyResult

PROMPT = "robot go to the red door"


@pytest.fixture(scope="module")
def pair(tiny_pair):
    _, target = tiny_pair("llama", noise=0.03)
    return tiny_feature_draft(target), target


def _one_pass(draft, ids, states, first_gen):
    """The draft over the whole sequence at once: state[s-1] from the last prompt token on."""
    s_in = torch.zeros(len(ids), draft.hidden_size)
    s_in[first_gen:] = states[first_gen - 1:len(ids) - 1]
    with torch.inference_mode():
        return draft.model(torch.tensor([ids]), s_in[None])[0]


def test_step_by_step_equals_one_pass_after_rollbacks(pair):
    draft, target = pair
    prompt = target.encode(PROMPT).input_ids
    gen = [5, 9, 12, 7, 30, 31, 8, 40]
    ids = prompt + gen
    with torch.inference_mode():
        states = target.model.model(torch.tensor([ids])).last_hidden_state[0]
    want = _one_pass(draft, ids, states, len(prompt))
    state = draft.prefill(draft.encode(PROMPT))
    # block 0: no target state yet, the draft feeds its own guesses (and a wrong token)
    draft.forward_hidden(state, draft.sync(state, []), keep=1)
    draft.forward_hidden(state, [99], keep=1)
    draft.forward_hidden(state, [98], keep=1)
    # round 0 committed gen[:3]: states of the last prompt token and gen[0], gen[1]
    draft.receive_states(state, 0, states[len(prompt) - 1:len(prompt) + 2])
    got = draft.forward_hidden(state, draft.sync(state, gen[:3]), keep=0)
    assert len(got) == 3 and all(state.exact)  # the guessed slots were recomputed from the states
    assert torch.allclose(got, want[len(prompt):len(prompt) + 3], atol=1e-5)
    # a guess beyond the committed tokens, then the rest committed with its states
    draft.forward_hidden(state, [gen[3]], keep=1)
    draft.receive_states(state, 3, states[len(prompt) + 2:len(prompt) + 7])
    pending = draft.sync(state, gen[:8])
    last = draft.forward_hidden(state, pending, keep=1)
    assert torch.allclose(last[0], want[-1], atol=1e-5)
    assert all(state.exact)
    # every cached slot's output equals the one-pass output
    outs = torch.stack(state.outs)
    assert torch.allclose(outs, want[len(prompt) - 1:], atol=1e-5)


def test_bad_state_payloads_are_one_line_protocol_errors(pair):
    draft, _ = pair
    with pytest.raises(FeatureDraftError, match="not rows of"):
        draft.decode_states(b"\x00" * 7)
    decoder = EdgeDecoder(draft)
    state = draft.prefill(draft.encode(PROMPT))
    good = encode_states(torch.zeros(2, draft.hidden_size))
    with pytest.raises(ProtocolError, match="2 target states for 2 accepted tokens"):
        decoder._take_states(state, [], VerifyResult(round=0, accepted=2, target_states=good))
    with pytest.raises(ProtocolError, match="round 1: .*not rows"):
        decoder._take_states(state, [], VerifyResult(round=1, accepted=0, target_states=b"abc"))
    decoder._take_states(state, [], VerifyResult(round=0, accepted=1, target_states=good))
    assert len(state.target) == 2


@pytest.mark.parametrize("settings", [dict(), dict(predraft_policy="eager"), dict(predraft_policy="hint"),
                                      dict(draft_length="adaptive", merge_first_block=True),
                                      dict(cloud_finish_tokens=2)])
def test_greedy_identical_to_generate(pair, reference, settings):
    draft, target = pair
    ref = reference(target, PROMPT, None, max_new_tokens=20)
    heads = EarlyExitHeads(target.model, [1])
    with LocalSpeculativeDecoder(draft, target, exit_heads=heads, **settings) as runner:
        for gamma in (1, 3, 5):
            for mode in (DecodingMode.SPECULATIVE_EARLY_EXIT, DecodingMode.SPECULATIVE):
                result = runner.generate(PROMPT, None, mode, gamma=gamma, max_new_tokens=20)
                assert result.tokens == ref, (settings, gamma, mode)
                # the states of every committed position came back: about 2 fp16 bytes per hidden unit
                rows = sum(r.accepted + 1 for r in result.stats.round_log)
                assert result.stats.bytes_received >= rows * 2 * draft.hidden_size


def test_results_carry_the_target_states_only_when_asked(pair):
    from specdec.engine.verifier import Verifier
    from specdec.protocol import DraftBlock, SessionStart

    draft, target = pair
    prompt = target.encode(PROMPT).input_ids
    for asked in (True, False):
        verifier, out = Verifier(target), []
        verifier.handle(SessionStart(session_id="s", seq=0, prompt=PROMPT, tokenizer_fingerprint=target.fingerprint,
                                     gamma=4, max_new_tokens=12, return_states=asked), out.append)
        ref = []
        with torch.inference_mode():  # a block whose first two tokens are the target's own
            for _ in range(2):
                logits = target.model(torch.tensor([prompt + ref])).logits[0, -1]
                ref.append(int(logits.argmax()))
        verifier.handle(DraftBlock(session_id="s", seq=1, round=0, position=0, tokens=ref + [0, 0], topk=1,
                                   topk_ids=ref + [0, 0], topk_probs=[1.0] * 4), out.append)
        (result,) = out
        assert result.accepted >= 2
        if not asked:
            assert result.target_states == b""
            continue
        rows = draft.decode_states(result.target_states)
        assert rows.shape == (result.accepted + 1, draft.hidden_size)
        with torch.inference_mode():
            want = target.model.model(torch.tensor([prompt + ref])).last_hidden_state[0, len(prompt) - 1:]
        assert torch.allclose(rows[:3].float(), want[:3].half().float(), atol=1e-3)
