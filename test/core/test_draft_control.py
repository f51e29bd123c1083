"""Draft-length control, reduced draft heads, progressive hints and the merged first block:
every speed trick keeps speculative decoding exactly the target's greedy output."""

import pytest
import torch

from specdec.engine.draft_length import AdaptiveLength, ConfidenceStop, FixedLength
from specdec.engine.interfaces import DraftProposal, RoundOutcome
from specdec.engine.local import LocalSpeculativeDecoder
from specdec.engine.token_loop import TokenLoop, TokenPicker
from specdec.engine.sampling import SamplingParams
from specdec.engine.verifier import Verifier
from specdec.models.adapters import wrap_model
from specdec.models.draft_head import head_from_rows, load_draft_head, save_draft_head, DraftHeadError
from specdec.models.early_exit import EarlyExitHeads
from specdec.protocol import DecodingMode, DraftBlock, EarlyExitHint, SessionStart, VerifyResult

ARCHS = ["llama", "qwen2_vl", "idefics3", "llava"]
SETTINGS = [
    dict(draft_length="confidence", confidence_threshold=0.5),
    dict(draft_length="adaptive"),
    dict(draft_length="adaptive", predraft_policy="eager"),
    dict(draft_length="fixed", merge_first_block=True),
]


def reduced(draft, keep_every=2):
    """A second adapter over the same draft model that proposes from every ``keep_every``-th
    token only (plus its stop tokens): a reduced-vocabulary head cut from its own LM head."""
    other = wrap_model(draft.model, draft.processor if draft.is_vlm else draft.tokenizer)
    ids = set(range(0, other.vocab_size, keep_every)) | set(other.eos_token_ids)
    other.use_head(head_from_rows(other, ids))
    return other


@pytest.mark.parametrize("arch", ARCHS)
def test_every_setting_is_greedy_identical(arch, tiny_pair, reference, image, prompt):
    draft, target = tiny_pair(arch, noise=0.05)
    img = None if arch == "llama" else image
    ref = reference(target, prompt, img, max_new_tokens=14)
    exits = EarlyExitHeads(target.model, [0, 1, 2])  # progressive hints from three layers
    for proposer in (draft, reduced(draft)):
        for settings in SETTINGS:
            with LocalSpeculativeDecoder(proposer, target, exit_heads=exits, **settings) as runner:
                for gamma in (2, 5):
                    result = runner.generate(prompt, img, DecodingMode.SPECULATIVE_EARLY_EXIT, gamma=gamma,
                                             max_new_tokens=14)
                    assert result.tokens == ref, (settings, gamma, result.tokens, ref)
                    assert all(r.drafted <= gamma for r in result.stats.round_log)


def test_reduced_head_proposes_only_its_tokens(tiny_pair, prompt):
    draft, _ = tiny_pair("llama", noise=0.05)
    small = reduced(draft, keep_every=3)
    allowed = set(small.head_ids.tolist())
    state = small.prefill(small.encode(prompt))
    for kind in ("greedy", "propose"):
        picker = TokenPicker(kind, SamplingParams(do_sample=kind != "greedy"), torch.Generator().manual_seed(0), 4)
        loop = TokenLoop(small, state, [], limit=12, picker=picker).run()
        assert set(loop.tokens) <= allowed and len(loop.tokens) == 12
        assert set(loop.topk_ids) <= allowed


def test_draft_head_file_round_trip_and_refusals(tiny_pair, tmp_path):
    draft, target = tiny_pair("llama", noise=0.05)
    head = head_from_rows(draft, range(0, draft.vocab_size, 2))
    path = save_draft_head(str(tmp_path), head, draft.vocab_size)
    loaded = load_draft_head(draft, path)
    assert torch.equal(loaded.token_ids, head.token_ids)
    hidden = torch.randn(2, head.hidden_size).to(draft.device)
    assert torch.allclose(loaded.logits(hidden), head.logits(hidden))
    full = draft.logits(hidden)  # a reduced head scores its tokens exactly as the full head would
    assert torch.allclose(head.logits(hidden), full[:, head.token_ids], atol=1e-5)
    from safetensors.torch import save_file

    save_file({"token_ids": torch.tensor([5, 3]), "weight": torch.zeros(2, head.hidden_size)}, str(tmp_path / "bad"),
              metadata={"format": "specdec-draft-head/1", "vocab_size": str(draft.vocab_size),
                        "hidden_size": str(head.hidden_size)})
    with pytest.raises(DraftHeadError, match="ascending"):
        load_draft_head(draft, str(tmp_path / "bad"))


def _observe(policy, rounds, drafted, accepted, confidence, verify_ms, link_ms, draft_ms=5.0):
    for _ in range(rounds):
        policy.observe(RoundOutcome(drafted, accepted, [confidence] * drafted, verify_ms, 0.0, verify_ms + link_ms,
                                    draft_ms, confidence))


def _length(policy, confidence):
    n = 0
    while policy.keep_drafting([confidence] * n):
        n += 1
    return n


def test_adaptive_length_grows_with_the_link_and_cheap_verification():
    lengths = {}
    for link_ms in (0.0, 400.0):
        policy = AdaptiveLength(8)
        _observe(policy, 10, 1, 1, 0.85, 30.0, link_ms)  # verifying 1 token: 30 ms
        _observe(policy, 10, 4, 3, 0.85, 60.0, link_ms)  # 4 tokens: 60 ms (a CPU target)
        lengths[link_ms] = _length(policy, 0.85)
    assert lengths[400.0] > lengths[0.0] >= 1, lengths
    flat = AdaptiveLength(8)  # a GPU-like target: verification costs the same for any length
    _observe(flat, 10, 1, 1, 0.85, 30.0, 0.0)
    _observe(flat, 10, 4, 3, 0.85, 30.5, 0.0)
    assert _length(flat, 0.85) > lengths[0.0]


def test_adaptive_length_stops_drafting_for_a_draft_that_is_never_right():
    policy = AdaptiveLength(8, explore_every=8)
    _observe(policy, 30, 2, 0, 0.35, 30.0, 0.0)
    assert not policy.keep_drafting([])  # not even a first token: the next block is an empty target step
    proposal = DraftProposal([], [1, 2, 3], [0.35, 0.35, 0.35], draft_ms=15.0)
    assert policy.tokens_to_send(proposal) == 0
    for _ in range(7):  # but it still explores now and then
        policy.observe(RoundOutcome(0, 0, [], 30.0, 0.0, 30.0, 5.0))
    assert policy.keep_drafting([])
    confident = AdaptiveLength(8)  # a draft whose first tokens are often confident drafts them
    _observe(confident, 30, 2, 1, 0.35, 30.0, 0.0)
    _observe(confident, 30, 2, 2, 0.95, 30.0, 0.0)
    assert confident.keep_drafting([])


def test_adaptive_length_prices_the_alternatives_a_block_offers():
    """A draft whose first choice is never right but whose next-best token often is: worth drafting
    when blocks offer alternatives (one token more per hit), not when they do not. A taken
    alternative does not count as the drafted token's acceptance."""
    def trained(offered):
        policy = AdaptiveLength(8, explore_every=8)
        for i in range(30):
            taken = offered and i % 2 == 0
            policy.observe(RoundOutcome(1, int(taken), [0.35], 30.0, 0.0, 30.0, 5.0, 0.35,
                                        offered_alternatives=offered, alternative=taken))
        return policy

    with_alternatives, without = trained(True), trained(False)
    assert with_alternatives.calibration.p_accept(0.35) == without.calibration.p_accept(0.35) < 0.1
    assert 0.4 < with_alternatives.alternative_rate < 0.5 and without.alternative_rate == 0.0
    assert with_alternatives.keep_drafting([]) and not without.keep_drafting([])
    proposal = DraftProposal([], [1], [0.35], draft_ms=5.0)
    assert with_alternatives.tokens_to_send(proposal) == 1 and without.tokens_to_send(proposal) == 0


def test_a_block_verified_in_the_prefill_pass_teaches_no_round_costs(tiny_pair, prompt, monkeypatch):
    """merge_first_block: block 0's verify time is the prefill's. Were it a round's, every decision
    would tell the policy that verification costs a prefill, and it would stop drafting."""
    policy = AdaptiveLength(8)
    _observe(policy, 10, 2, 1, 0.85, 30.0, 5.0)
    before = (policy.verify_cost(2), policy.link_ms.value)
    for _ in range(20):
        policy.observe(RoundOutcome(2, 1, [0.85] * 2, 900.0, 0.0, 960.0, 5.0, 0.85, with_prefill=True))
    assert (policy.verify_cost(2), policy.link_ms.value) == before
    assert policy.keep_drafting([])
    draft, target = tiny_pair("llama", noise=0.03)  # the edge marks the merged round, and only that one
    seen, original = [], AdaptiveLength.observe
    monkeypatch.setattr(AdaptiveLength, "observe",
                        lambda self, outcome: (seen.append(outcome.with_prefill), original(self, outcome)))
    with LocalSpeculativeDecoder(draft, target, draft_length="adaptive", merge_first_block=True) as runner:
        runner.generate(prompt, None, DecodingMode.SPECULATIVE, max_new_tokens=12)
    assert seen[0] is True and not any(seen[1:]) and len(seen) > 1


def test_confidence_stop_and_fixed_length():
    stop = ConfidenceStop(4, 0.4)
    assert stop.keep_drafting([]) and stop.keep_drafting([0.9, 0.5])
    assert not stop.keep_drafting([0.9, 0.3]) and not stop.keep_drafting([0.9] * 4)
    assert _length(FixedLength(3), 0.0) == 3


def test_progressive_hints_one_per_exit_layer_in_order(tiny_pair, prompt):
    draft, target = tiny_pair("llama", noise=0.05)
    verifier, out = Verifier(target, EarlyExitHeads(target.model, [0, 2, 1])), []
    verifier.handle(SessionStart(session_id="s", robot_id="r", prompt=prompt, tokenizer_fingerprint=target.fingerprint,
                                 max_new_tokens=8, gamma=4), out.append)
    verifier.handle(DraftBlock(session_id="s", seq=1, round=0, position=0, tokens=[5, 6, 7]), out.append)
    hints = [m for m in out if isinstance(m, EarlyExitHint)]
    assert [h.exit_layer for h in hints] == [0, 1, 2]
    assert isinstance(out[-1], VerifyResult) or any(isinstance(m, VerifyResult) for m in out)
    assert out.index(hints[-1]) < next(i for i, m in enumerate(out) if isinstance(m, VerifyResult))
    with LocalSpeculativeDecoder(draft, target, exit_heads=EarlyExitHeads(target.model, [0, 1, 2])) as runner:
        result = runner.generate(prompt, None, DecodingMode.SPECULATIVE_EARLY_EXIT, max_new_tokens=12)
    for r in result.stats.round_log:
        if r.drafted:
            assert [layer for layer, *_ in r.layer_hints] == [0, 1, 2]


def test_first_block_rides_with_the_prefill(tiny_pair, reference, image, prompt):
    for arch in ("llama", "qwen2_vl"):
        draft, target = tiny_pair(arch, noise=0.05)
        img = None if arch == "llama" else image
        ref = reference(target, prompt, img, max_new_tokens=10)
        for merge in (False, True):
            with LocalSpeculativeDecoder(draft, target, merge_first_block=merge) as runner:
                result = runner.generate(prompt, img, DecodingMode.SPECULATIVE, max_new_tokens=10)
            assert result.tokens == ref
            # a merged first block saves the separate prefill pass
            assert result.stats.target_forward_passes == result.stats.rounds + (0 if merge else 1)


def test_a_late_first_block_gets_its_prefill_at_the_deadline(tiny_pair, reference, prompt):
    draft, target = tiny_pair("llama", noise=0.05)
    ref = reference(target, prompt, None, max_new_tokens=6)
    verifier, out = Verifier(target), []
    verifier.handle(SessionStart(session_id="s", robot_id="r", prompt=prompt, tokenizer_fingerprint=target.fingerprint,
                                 max_new_tokens=6, gamma=4, mode=int(DecodingMode.SPECULATIVE),
                                 prefill_wait_ms=50), out.append)
    assert verifier.stats.target_forward_passes == 0  # holding the prefill for block 0
    verifier.flush_prefills(out.append)  # the deadline passed
    assert verifier.stats.target_forward_passes == 1
    verifier.handle(DraftBlock(session_id="s", seq=1, round=0, position=0, tokens=ref[:3]), out.append)
    result = next(m for m in out if isinstance(m, VerifyResult))
    assert result.accepted == 3 and result.next_token == ref[3]
    assert verifier.stats.target_forward_passes == 2


def test_downscaled_jpeg_frame_is_what_both_models_see(tiny_pair, reference, prompt):
    """The edge sends a smaller JPEG; the output is the target's on exactly the decoded pixels."""
    import numpy as np

    from specdec.models.images import encode_image

    draft, target = tiny_pair("qwen2_vl", noise=0.05)
    frame = (np.random.RandomState(5).rand(240, 320, 3) * 255).astype("uint8")
    sent = encode_image(frame, "jpeg", "160x120", jpeg_quality=80)
    ref = reference(target, prompt, sent.image, max_new_tokens=10)
    with LocalSpeculativeDecoder(draft, target, image_format="jpeg", image_size="160x120", jpeg_quality=80) as runner:
        for mode in (DecodingMode.CLOUD_ONLY, DecodingMode.SPECULATIVE_EARLY_EXIT):
            result = runner.generate(prompt, frame, mode, max_new_tokens=10)
            assert result.tokens == ref
            assert result.stats.image_bytes == len(sent.data) < frame.nbytes // 20


@pytest.mark.parametrize("arch", ["llama", "qwen2_vl"])
def test_cloud_finishes_short_answers_in_one_round(arch, tiny_pair, reference, image, prompt):
    """With cloud_finish_tokens the cloud decodes the rest of a short answer after the block itself:
    one round per decision, the output still exactly the target's."""
    draft, target = tiny_pair(arch, noise=0.3)  # a draft that is often wrong
    img = None if arch == "llama" else image
    ref = reference(target, prompt, img, max_new_tokens=6)
    with LocalSpeculativeDecoder(draft, target, cloud_finish_tokens=6, merge_first_block=True,
                                 exit_heads=EarlyExitHeads(target.model, [1])) as runner:
        for mode in (DecodingMode.SPECULATIVE, DecodingMode.SPECULATIVE_EARLY_EXIT):
            result = runner.generate(prompt, img, mode, gamma=2, max_new_tokens=6)
            assert result.tokens == ref
            assert result.stats.rounds == 1 and result.stats.round_log[0].continued == len(ref) - 1 - \
                result.stats.round_log[0].accepted
    with LocalSpeculativeDecoder(draft, target, cloud_finish_tokens=2) as runner:  # a longer answer: more rounds
        result = runner.generate(prompt, img, DecodingMode.SPECULATIVE, gamma=2, max_new_tokens=12)
        assert result.tokens == reference(target, prompt, img, max_new_tokens=12)
        assert all(r.continued <= 2 for r in result.stats.round_log) and result.stats.rounds >= 2


def test_a_hint_predicts_the_result_as_it_is_cut_at_the_stop_token(tiny_pair, reference, prompt):
    """A block that runs past the stop token: the result says (tokens up to the stop, next = stop);
    a right exit head must hint exactly that, not the uncut count."""
    _, target = tiny_pair("llama", noise=0.05)
    ref = reference(target, prompt, None, max_new_tokens=12)
    j = next(i for i in range(3, 12) if ref[i] not in ref[:i])  # ref[j] serves as the stop token
    stop = ref[j]
    block = ref[:j + 1] + [7, 8]  # the answer, its stop token, then tokens past the end
    heads = EarlyExitHeads(target.model, [1])

    def oracle(layer, hidden, past=None, rows=None):  # an exit head that always names the target's token
        rows = hidden.shape[0] if rows is None else rows  # (row i of the block's: position i)
        logits = torch.full((rows, target.vocab_size), -10.0)
        for i in range(rows):
            logits[i, ref[i]] = 10.0
        return logits

    heads.exit_logits = oracle
    verifier, out = Verifier(target, heads), []
    verifier.handle(SessionStart(session_id="s", robot_id="r", prompt=prompt, tokenizer_fingerprint=target.fingerprint,
                                 max_new_tokens=12, gamma=len(block), stop_token_ids=[stop]), out.append)
    verifier.handle(DraftBlock(session_id="s", seq=1, round=0, position=0, tokens=block), out.append)
    hint = next(m for m in out if isinstance(m, EarlyExitHint))
    result = next(m for m in out if isinstance(m, VerifyResult))
    assert result.finished and (result.accepted, result.next_token) == (j, stop)
    assert (hint.predicted_accepted, hint.predicted_next_token) == (result.accepted, result.next_token)


@pytest.mark.parametrize("cut", ["stop token", "max_new_tokens"])
def test_acceptance_counts_the_drafted_token_a_cut_result_names(cut, tiny_pair, reference, prompt):
    """A draft equal to the target: every drafted token is the target's, including a drafted stop
    token, which the result names as its next token (the protocol's ``accepted`` leaves it out;
    the edge's acceptance must not)."""
    _, target = tiny_pair("llama", noise=0.05)
    ref = reference(target, prompt, None, max_new_tokens=12)
    j = next(i for i in range(3, 12) if ref[i] not in ref[:i])
    limit, stop = (12, [ref[j]]) if cut == "stop token" else (j + 1, [])
    with LocalSpeculativeDecoder(target, target, gamma=4, max_new_tokens=limit, stop_token_ids=stop,
                                 draft_length="fixed") as runner:
        result = runner.generate(prompt, None, DecodingMode.SPECULATIVE)
    stats = result.stats
    assert result.tokens == ref[:j + 1]
    assert stats.acceptance_rate == 1.0 and stats.accepted_tokens == stats.drafted_tokens > 0
    last = stats.round_log[-1]
    if cut == "stop token":  # the drafted stop token comes back as the result's next token
        assert last.kept == last.accepted + 1 and last.next_token == ref[j]
    else:  # the edge drafts no further than the room left: the last token is the target's own
        assert last.kept == last.accepted == last.drafted
