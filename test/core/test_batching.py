"""Batched verification: sessions of several robots verified in one forward pass stay exactly the
target's output (greedy identical, sampling distribution-exact), and the scheduler is fair."""

import threading
from collections import Counter

import pytest
import torch

from specdec.engine.drafter import EdgeDecoder
from specdec.engine.sampling import SamplingParams, target_probs
from specdec.engine.verifier import Verifier
from specdec.models.early_exit import EarlyExitHeads
from specdec.protocol import DecodingMode, DraftBlock, EarlyExitHint, SessionEnd, SessionStart, VerifyResult
from specdec.transport.inprocess import InProcessHub

PROMPTS = ["go forward two meters then turn left", "turn right", "find the red ball near the door and stop",
           "walk to the blue chair"]
MODES = [DecodingMode.SPECULATIVE_EARLY_EXIT, DecodingMode.SPECULATIVE, DecodingMode.CLOUD_ONLY,
         DecodingMode.SPECULATIVE_EARLY_EXIT]


def _fleet(draft, verifier, jobs, latency_s=0.005):
    """Run ``jobs`` (robot index -> list of decode kwargs) on one robot thread each, concurrently."""
    results, errors = {}, []
    with InProcessHub(verifier, latency_s=latency_s) as hub:
        def robot(index, calls):
            try:
                edge = EdgeDecoder(draft, hub.connect(), robot_id=f"robot{index}", timeout_s=30)
                results[index] = [edge.decode(**call) for call in calls]
            except Exception as exc:  # surfaced below
                errors.append(exc)

        threads = [threading.Thread(target=robot, args=item) for item in jobs.items()]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    assert not errors, errors
    return results


@pytest.mark.parametrize("arch", ["llama", "qwen2_vl"])
def test_batched_sessions_are_each_the_target_alone(arch, tiny_pair, reference, image):
    draft, target = tiny_pair(arch, noise=0.05)
    img = None if arch == "llama" else image
    refs = {p: reference(target, p, img, max_new_tokens=12) for p in PROMPTS}
    verifier = Verifier(target, EarlyExitHeads(target.model, [1, 2]), max_batch=4, batch_window_ms=15)
    jobs = {i: [dict(prompt=PROMPTS[(i + k) % 4], image=img, mode=MODES[(i + k) % 4], gamma=2 + (i + k) % 4,
                     max_new_tokens=12, predraft_policy="eager" if i % 2 else "hint",
                     alternatives=(i + k) % 3) for k in range(3)]  # branches where a pass is a robot's own
            for i in range(4)}
    results = _fleet(draft, verifier, jobs)
    for i, calls in jobs.items():
        for call, result in zip(calls, results[i]):
            assert result.tokens == refs[call["prompt"]], (i, call)
    assert verifier.stats.batched_rows > verifier.stats.batches  # some passes served several robots


def _exact_joint(target, prompt, params):
    """The target's exact distribution of its first two sampled tokens."""
    with torch.inference_mode():
        state = target.prefill(target.encode(prompt))
        p1 = target_probs(target.forward(state, [state.prompt_ids[-1]], keep=1)[0], params)
        joint = {}
        for t1 in torch.nonzero(p1).flatten().tolist():
            p2 = target_probs(target.forward(state, [t1], keep=1)[0], params)
            target.truncate(state, state.length - 1)
            for t2 in torch.nonzero(p2).flatten().tolist():
                joint[(t1, t2)] = float(p1[t1] * p2[t2])
    return joint


def test_batched_sampling_follows_the_target(tiny_pair, chi_square):
    draft, target = tiny_pair("llama", noise=0.1, target_layers=2)
    params = SamplingParams(do_sample=True, temperature=1.0, top_k=3)
    prompt = PROMPTS[0]
    joint = _exact_joint(target, prompt, params)
    verifier = Verifier(target, max_batch=4, batch_window_ms=10)
    runs = 100
    jobs = {i: [dict(prompt=prompt, mode=DecodingMode.SPECULATIVE, do_sample=True, top_k=3, gamma=2,
                     max_new_tokens=3, seed=1000 * i + s) for s in range(runs)] for i in range(3)}
    results = _fleet(draft, verifier, jobs, latency_s=0.0)
    counts = Counter(tuple(r.tokens[:2]) for rs in results.values() for r in rs)
    assert verifier.stats.batched_rows > verifier.stats.batches
    assert chi_square(counts, joint, 3 * runs) > 1e-3


def test_a_long_cloud_only_decode_does_not_hold_up_other_robots(tiny_pair):
    _, target = tiny_pair("llama", noise=0.05)
    verifier, out = Verifier(target, decode_chunk=4, max_batch=1), []
    start = dict(tokenizer_fingerprint=target.fingerprint, prompt=PROMPTS[0], stop_token_ids=[])
    verifier.admit(SessionStart(session_id="long", robot_id="hog", mode=int(DecodingMode.CLOUD_ONLY),
                                max_new_tokens=64, **start), out.append)
    verifier.admit(SessionStart(session_id="short", robot_id="polite", mode=int(DecodingMode.SPECULATIVE),
                                max_new_tokens=8, gamma=2, **start), out.append)
    for _ in range(4):  # both prefills and the hog's first chunks
        verifier.run_next(out.append)
    verifier.admit(DraftBlock(session_id="short", seq=1, round=0, position=0, tokens=[5, 6]), out.append)
    while verifier.run_next(out.append):
        pass
    done = [m.session_id for m in out if isinstance(m, (VerifyResult, SessionEnd))]
    assert done.index("short") < done.index("long")  # the short round did not wait for 64 tokens
    hog_end = next(m for m in out if isinstance(m, SessionEnd) and m.session_id == "long")
    assert len(hog_end.tokens) == 64


def test_duplicates_do_not_keep_a_session_alive(tiny_pair):
    _, target = tiny_pair("llama", noise=0.05)
    now = [0.0]
    verifier, out = Verifier(target, session_timeout_s=10, clock=lambda: now[0]), []
    verifier.handle(SessionStart(session_id="s", robot_id="r", tokenizer_fingerprint=target.fingerprint,
                                 prompt=PROMPTS[1], max_new_tokens=16, gamma=2), out.append)
    block = DraftBlock(session_id="s", seq=1, round=0, position=0, tokens=[5, 6])
    verifier.handle(block, out.append)
    for t in (4.0, 8.0, 12.0):  # the same block again and again
        now[0] = t
        verifier.handle(block, out.append)
    assert verifier.expire(out.append, now=12.0) == ["s"]


@pytest.mark.parametrize("arch", ["llama", "qwen2_vl", "llava"])
def test_chunked_prefill_lets_other_robots_in_and_changes_nothing(arch, tiny_pair, reference, image):
    draft, target = tiny_pair(arch, noise=0.05)
    img = None if arch == "llama" else image
    long_prompt = " ".join(PROMPTS * 4)
    refs = {p: reference(target, p, img, max_new_tokens=8) for p in (long_prompt, PROMPTS[1])}
    verifier = Verifier(target, prefill_chunk=8, max_batch=1)
    jobs = {0: [dict(prompt=long_prompt, image=img, mode=DecodingMode.SPECULATIVE, max_new_tokens=8)],
            1: [dict(prompt=PROMPTS[1], image=img, mode=DecodingMode.CLOUD_ONLY, max_new_tokens=8)]}
    results = _fleet(draft, verifier, jobs)
    assert results[0][0].tokens == refs[long_prompt] and results[1][0].tokens == refs[PROMPTS[1]]
    chunks = -(-(len(target.encode(long_prompt, img).input_ids) - 1) // 8)  # ceil; the image rides in pass 1
    assert results[0][0].stats.target_forward_passes >= results[0][0].stats.rounds + (2 if img is not None else chunks)


def test_a_chunked_prefill_interleaves_with_other_robots_rounds(tiny_pair):
    _, target = tiny_pair("llama", noise=0.05)
    verifier, out = Verifier(target, prefill_chunk=8, max_batch=1), []
    start = dict(tokenizer_fingerprint=target.fingerprint, stop_token_ids=[], mode=int(DecodingMode.SPECULATIVE),
                 max_new_tokens=8, gamma=2)
    verifier.admit(SessionStart(session_id="short", robot_id="polite", prompt=PROMPTS[1], **start), out.append)
    verifier.run_next(out.append)  # the short prompt's prefill (one pass)
    verifier.admit(SessionStart(session_id="long", robot_id="chatty", prompt=" ".join(PROMPTS * 4), **start),
                   out.append)
    verifier.admit(DraftBlock(session_id="short", seq=1, round=0, position=0, tokens=[5, 6]), out.append)
    verifier.run_next(out.append)  # the long prompt's first chunk
    verifier.run_next(out.append)  # the polite robot's turn: its round, not more of the long prefill
    assert [m.session_id for m in out if isinstance(m, VerifyResult)] == ["short"]
    assert verifier._sessions["long"].state is None  # still prefilling


@pytest.mark.parametrize("arch", ["llama", "qwen2_vl"])
def test_batched_prefills_compute_what_each_would_alone(arch, tiny_pair, image):
    _, target = tiny_pair(arch, noise=0.05)
    img = None if arch == "llama" else image
    prompts = [target.encode(PROMPTS[0], img), target.encode(PROMPTS[1]), target.encode(PROMPTS[2], img)]
    blocks, keeps = [[5, 6, 7], None, [8]], [4, 0, 2]
    batched = target.prefill_batch(prompts, blocks, keeps)
    for inputs, block, keep, (state, hidden) in zip(prompts, blocks, keeps, batched):
        if block is None:
            alone, alone_hidden = target.prefill(inputs), None
            assert hidden is None
        else:
            alone, alone_hidden = target.prefill_with(inputs, block, keep)
            torch.testing.assert_close(hidden, alone_hidden, rtol=1e-4, atol=1e-5)
        assert (state.length, state.cached) == (alone.length, alone.cached)
        feed = target.sync(alone, [9, 10])  # the same next step on both caches
        assert target.sync(state, [9, 10]) == feed
        torch.testing.assert_close(target.forward_hidden(state, feed), target.forward_hidden(alone, feed),
                                   rtol=1e-4, atol=1e-5)


def test_prompts_with_images_share_a_prefill_only_where_the_family_merges_them(tiny_pair, image):
    _, target = tiny_pair("llava", noise=0.05)
    with pytest.raises(ValueError, match="cannot share"):
        target.prefill_batch([target.encode(p, image) for p in PROMPTS[:2]], [None, None], [0, 0])
    assert len(target.prefill_batch([target.encode(p) for p in PROMPTS[:2]], [None, [5]], [0, 2])) == 2


@pytest.mark.parametrize("arch", ["llama", "qwen2_vl"])
def test_first_blocks_and_cloud_only_prefills_of_several_robots_share_one_pass(arch, tiny_pair, image, reference):
    """Block 0 of each robot waits with its prefill; the verifier runs all those prefills (and the
    cloud-only robots' ones) in ONE pass, and every answer is what the serialized verifier gives."""
    _, target = tiny_pair(arch, noise=0.05)
    img = None if arch == "llama" else image
    answers = {}
    for max_batch in (1, 8):
        verifier, out = Verifier(target, max_batch=max_batch), []
        for i, prompt in enumerate(PROMPTS):
            mode = DecodingMode.CLOUD_ONLY if i == 1 else DecodingMode.SPECULATIVE
            start = SessionStart(session_id=f"s{i}", robot_id=f"robot{i}", tokenizer_fingerprint=target.fingerprint,
                                 prompt=prompt, mode=int(mode), max_new_tokens=6, gamma=3, stop_token_ids=[],
                                 prefill_wait_ms=1000.0)
            if img is not None:
                start.image_data, start.image_format = _png(img), "png"
            verifier.admit(start, out.append)
            if mode != DecodingMode.CLOUD_ONLY:
                verifier.admit(DraftBlock(session_id=f"s{i}", seq=1, round=0, position=0, tokens=[5, 6, 7][:i + 1]),
                               out.append)
        verifier.run_next(out.append)
        if max_batch > 1:
            assert verifier.stats.target_forward_passes == 1 and verifier.stats.batched_rows == len(PROMPTS)
        while verifier.run_next(out.append):
            pass
        answers[max_batch] = [(type(m).__name__, m.session_id, getattr(m, "accepted", None),
                               getattr(m, "next_token", None), list(getattr(m, "tokens", []) or []))
                              for m in out if isinstance(m, (VerifyResult, SessionEnd))]
    assert sorted(answers[8]) == sorted(answers[1])
    cloud_only = next(a for a in answers[8] if a[0] == "SessionEnd" and a[1] == "s1")
    assert cloud_only[4] == reference(target, PROMPTS[1], img, max_new_tokens=6)


def _png(img) -> bytes:
    import io

    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_hints_in_a_batched_pass_come_from_their_own_row(tiny_pair):
    """A cloud-only step ahead of a hinted round in one pass: the hint is the one the round gets alone."""
    _, target = tiny_pair("llama", noise=0.05)
    hints = {}
    for max_batch in (1, 4):
        verifier, out = Verifier(target, EarlyExitHeads(target.model, [1, 2]), max_batch=max_batch), []
        common = dict(tokenizer_fingerprint=target.fingerprint, stop_token_ids=[], max_new_tokens=8, gamma=3)
        verifier.admit(SessionStart(session_id="a", robot_id="a", prompt=PROMPTS[0], mode=int(DecodingMode.CLOUD_ONLY),
                                    **common), out.append)
        verifier.admit(SessionStart(session_id="b", robot_id="b", prompt=PROMPTS[2],
                                    mode=int(DecodingMode.SPECULATIVE_EARLY_EXIT), **common), out.append)
        while verifier._sessions["b"].state is None or verifier._sessions["a"].state is None:
            verifier.run_next(out.append)
        verifier.admit(DraftBlock(session_id="b", seq=1, round=0, position=0, tokens=[5, 6, 7]), out.append)
        while verifier.run_next(out.append):
            pass
        hints[max_batch] = [(m.exit_layer, m.predicted_accepted, m.predicted_next_token, round(m.confidence, 4))
                            for m in out if isinstance(m, EarlyExitHint)]
    assert len(hints[1]) == 2 and hints[4] == hints[1]


def test_target_states_in_a_batched_pass_come_from_their_own_row(tiny_pair):
    """Two rounds in one pass, only the second asking for the target's states (a draft conditioned on
    them): it gets exactly the states it gets alone; the other gets none."""
    _, target = tiny_pair("llama", noise=0.05)
    results = {}
    for max_batch in (1, 4):
        verifier, out = Verifier(target, max_batch=max_batch), []
        common = dict(tokenizer_fingerprint=target.fingerprint, stop_token_ids=[], max_new_tokens=8, gamma=3,
                      mode=int(DecodingMode.SPECULATIVE))
        verifier.admit(SessionStart(session_id="a", robot_id="a", prompt=PROMPTS[0], **common), out.append)
        verifier.admit(SessionStart(session_id="b", robot_id="b", prompt=PROMPTS[2], return_states=True, **common),
                       out.append)
        while verifier._sessions["b"].state is None or verifier._sessions["a"].state is None:
            verifier.run_next(out.append)
        passes = verifier.stats.target_forward_passes
        verifier.admit(DraftBlock(session_id="a", seq=1, round=0, position=0, tokens=[5, 6, 7]), out.append)
        verifier.admit(DraftBlock(session_id="b", seq=1, round=0, position=0, tokens=[8, 9]), out.append)
        while verifier.run_next(out.append):
            pass
        assert verifier.stats.target_forward_passes - passes == (1 if max_batch > 1 else 2)  # one shared pass
        got = {m.session_id: m for m in out if isinstance(m, VerifyResult)}
        row_bytes = 2 * target.model.config.hidden_size  # fp16
        assert got["a"].target_states == b"" and len(got["b"].target_states) == (got["b"].accepted + 1) * row_bytes
        results[max_batch] = (got["b"].accepted, got["b"].target_states)
    alone, batched = (torch.frombuffer(bytearray(results[n][1]), dtype=torch.float16) for n in (1, 4))
    assert results[1][0] == results[4][0] and torch.allclose(alone.float(), batched.float(), atol=2e-3)


def test_max_prefill_batch_1_runs_each_prefill_alone_and_answers_the_same(tiny_pair):
    """The A/B switch of the fleet benchmark (batched-steps-only)."""
    _, target = tiny_pair("llama", noise=0.05)
    passes = {}
    for limit in (0, 1):
        verifier, out = Verifier(target, max_batch=8, max_prefill_batch=limit), []
        for i, prompt in enumerate(PROMPTS):
            verifier.admit(SessionStart(session_id=f"s{i}", robot_id=f"r{i}", tokenizer_fingerprint=target.fingerprint,
                                        prompt=prompt, mode=int(DecodingMode.CLOUD_ONLY), max_new_tokens=4,
                                        stop_token_ids=[]), out.append)
        verifier.run_next(out.append)  # one pass: all 4 prefills, or the first one alone
        passes[limit] = (verifier.stats.target_forward_passes,
                         sum(s.state is not None for s in verifier._sessions.values()))
        while verifier.run_next(out.append):
            pass
        passes[limit, "tokens"] = sorted((m.session_id, tuple(m.tokens)) for m in out if isinstance(m, SessionEnd))
    assert passes[0] == (1, 4) and passes[1] == (1, 1)
    assert passes[0, "tokens"] == passes[1, "tokens"]


class _Inbox:
    """A cloud transport whose messages are all already there (arrived during the last pass)."""

    def __init__(self, messages, stop):
        self.messages, self.stop, self.sent = list(messages), stop, []

    def recv(self, timeout):
        if not self.messages:
            self.stop.set()
            return None
        return self.messages.pop(0)

    def send(self, msg):
        self.sent.append(msg)


def test_blocks_that_arrived_during_a_pass_share_the_next_one(tiny_pair):
    """The serve loop takes in everything already waiting before it runs a pass: blocks of four
    robots that arrived while the last pass ran go through ONE pass (taken one message per pass,
    each ran alone), and each answer is the one it gets alone."""
    _, target = tiny_pair("llama", noise=0.05)
    answers = {}
    for max_batch in (1, 8):
        verifier, out = Verifier(target, max_batch=max_batch), []
        for i, prompt in enumerate(PROMPTS):
            verifier.admit(SessionStart(session_id=f"s{i}", robot_id=f"r{i}", tokenizer_fingerprint=target.fingerprint,
                                        prompt=prompt, mode=int(DecodingMode.SPECULATIVE), max_new_tokens=6, gamma=3,
                                        stop_token_ids=[]), out.append)
        while verifier.run_next(out.append):  # the prefills
            pass
        before = verifier.stats.target_forward_passes
        stop = threading.Event()
        inbox = _Inbox([DraftBlock(session_id=f"s{i}", seq=1, round=0, position=0, tokens=[5, 6, 7][:i % 3 + 1])
                        for i in range(len(PROMPTS))], stop)
        verifier.serve(inbox, stop, poll_s=0.01)
        while verifier.run_next(inbox.send):
            pass
        answers[max_batch] = sorted((m.session_id, m.accepted, m.next_token) for m in inbox.sent
                                    if isinstance(m, VerifyResult))
        assert len(answers[max_batch]) == len(PROMPTS)
        assert verifier.stats.target_forward_passes - before == (len(PROMPTS) if max_batch == 1 else 1)
    assert answers[8] == answers[1]


def test_the_batch_window_waits_only_while_another_robot_could_join(tiny_pair):
    _, target = tiny_pair("llama", noise=0.05)
    verifier, out = Verifier(target, max_batch=8, batch_window_ms=1000.0), []
    for i in range(2):
        verifier.admit(SessionStart(session_id=f"s{i}", robot_id=f"r{i}", tokenizer_fingerprint=target.fingerprint,
                                    prompt=PROMPTS[i], mode=int(DecodingMode.SPECULATIVE), max_new_tokens=6, gamma=3,
                                    stop_token_ids=[]), out.append)
    while verifier.run_next(out.append):  # the prefills
        pass
    verifier.admit(DraftBlock(session_id="s0", seq=1, round=0, position=0, tokens=[5, 6]), out.append)
    assert verifier._next_batch_wait(verifier.clock()) > 0.5  # robot r1 may still send its block
    verifier.admit(SessionEnd(session_id="s1", seq=1), out.append)
    assert verifier._next_batch_wait(verifier.clock()) == 0.0  # r0 is alone now: no one to wait for


@pytest.mark.parametrize("arch", ["llama", "qwen2_vl"])
def test_a_prompt_fed_in_a_pass_of_rounds_computes_what_it_would_alone(arch, tiny_pair, image):
    """forward_batch with fresh states: a prompt (alone, or with block 0) shares the pass of a
    prefilled sequence's round, and each row - and each cache afterwards - is what it is alone."""
    _, target = tiny_pair(arch, noise=0.05)
    img = None if arch == "llama" else image
    running, running_alone = (target.prefill(target.encode(PROMPTS[0], img)) for _ in range(2))
    with_block, bare = target.encode(PROMPTS[2], img), target.encode(PROMPTS[1])
    fresh_block, extra_block = target.fresh_state(with_block)
    fresh_bare, extra_bare = target.fresh_state(bare)
    feeds = [target.sync(running, []) + [5, 6], list(with_block.input_ids) + [7, 8], list(bare.input_ids[:-1])]
    hidden = target.forward_batch([running, fresh_block, fresh_bare], feeds, [3, 3, 0], [{}, extra_block, extra_bare])
    torch.testing.assert_close(hidden[0], target.forward_hidden(running_alone, feeds[0], 3), rtol=1e-4, atol=1e-5)
    alone_block, alone_hidden = target.prefill_with(with_block, [7, 8], 3)
    torch.testing.assert_close(hidden[1], alone_hidden, rtol=1e-4, atol=1e-5)
    alone_bare = target.prefill(bare)
    for state, alone in ((running, running_alone), (fresh_block, alone_block), (fresh_bare, alone_bare)):
        assert (state.length, state.cached) == (alone.length, alone.cached)
        feed = target.sync(alone, [9, 10])  # the same next step on both caches
        assert target.sync(state, [9, 10]) == feed
        torch.testing.assert_close(target.forward_hidden(state, feed), target.forward_hidden(alone, feed),
                                   rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "qwen2_vl"])
def test_a_new_robots_prefill_rides_in_the_pass_of_the_others_rounds(arch, tiny_pair, image):
    """With mix_prefills (the default) a robot's session start does not cost the others a pass of
    its own: its prompt and their blocks go through ONE pass (its prompt waits for a pass of its
    own when mixing is off), and every answer is the serialized verifier's."""
    _, target = tiny_pair(arch, noise=0.05)
    img = None if arch == "llama" else image
    answers, passes = {}, {}
    for max_batch, mix in ((1, 1), (8, 1), (8, 0)):
        verifier, out = Verifier(target, max_batch=max_batch, mix_prefills=mix), []

        def start(i, mode):
            msg = SessionStart(session_id=f"s{i}", robot_id=f"r{i}", tokenizer_fingerprint=target.fingerprint,
                               prompt=PROMPTS[i], mode=int(mode), max_new_tokens=6, gamma=3, stop_token_ids=[])
            if img is not None:
                msg.image_data, msg.image_format = _png(img), "png"
            verifier.admit(msg, out.append)

        for i in range(3):
            start(i, DecodingMode.SPECULATIVE)
        while verifier.run_next(out.append):  # the three prefills
            pass
        before = verifier.stats.target_forward_passes, verifier.stats.batched_rows
        for i in range(3):
            verifier.admit(DraftBlock(session_id=f"s{i}", seq=1, round=0, position=0, tokens=[5, 6, 7][:i + 1]),
                           out.append)
        start(3, DecodingMode.CLOUD_ONLY)
        verifier.run_next(out.append)
        if max_batch > 1:  # the first pass: how many passes, with how many rows
            passes[mix] = (verifier.stats.target_forward_passes - before[0], verifier.stats.batched_rows - before[1])
        while verifier.run_next(out.append):
            pass
        answers[max_batch, mix] = sorted((type(m).__name__, m.session_id, getattr(m, "accepted", None),
                                          getattr(m, "next_token", None), tuple(getattr(m, "tokens", []) or []))
                                         for m in out if isinstance(m, (VerifyResult, SessionEnd)))
    assert passes == {1: (1, 4), 0: (1, 3)}  # all four rows mixed / the three rounds only
    assert answers[8, 1] == answers[1, 1] == answers[8, 0]


def test_a_draft_token_that_is_an_image_placeholder_does_not_break_a_pass_with_an_image_prompt(tiny_pair, image):
    """A pass that carries a prompt's image fills every image placeholder in it with features: a
    block that feeds the placeholder id as a token (a random or abusive draft) runs in a pass of its
    own, and every robot - that one included - gets the serialized verifier's answer."""
    _, target = tiny_pair("qwen2_vl", noise=0.05)
    placeholder = min(target.placeholder_ids)
    answers = {}
    for max_batch in (1, 8):
        verifier, out = Verifier(target, max_batch=max_batch), []

        def start(i, mode):
            msg = SessionStart(session_id=f"s{i}", robot_id=f"r{i}", tokenizer_fingerprint=target.fingerprint,
                               prompt=PROMPTS[i], mode=int(mode), max_new_tokens=6, gamma=3, stop_token_ids=[],
                               image_data=_png(image), image_format="png")
            verifier.admit(msg, out.append)

        for i in range(3):
            start(i, DecodingMode.SPECULATIVE)
        while verifier.run_next(out.append):
            pass
        blocks = [[placeholder, 6], [5, 6], [5, placeholder, 7]]
        for i, block in enumerate(blocks):
            verifier.admit(DraftBlock(session_id=f"s{i}", seq=1, round=0, position=0, tokens=block), out.append)
        start(3, DecodingMode.CLOUD_ONLY)
        while verifier.run_next(out.append):
            pass
        assert verifier.stats.errors == 0, verifier.stats.last_error
        answers[max_batch] = sorted((type(m).__name__, m.session_id, getattr(m, "accepted", None),
                                     getattr(m, "next_token", None), tuple(getattr(m, "tokens", []) or []))
                                    for m in out if isinstance(m, (VerifyResult, SessionEnd)))
    assert answers[8] == answers[1]


@pytest.mark.parametrize("max_batch", [4, 1])
def test_a_lone_cloud_only_turn_yields_to_a_newcomer_only_where_they_can_share_passes(max_batch, tiny_pair,
                                                                                       reference):
    """A batching verifier ends a lone session's multi-token turn when another robot's message waits,
    so the newcomer rides in the next pass; a serialized one runs the turn whole (no pass to share)."""
    draft, target = tiny_pair("llama", noise=0.05)
    refs = {p: reference(target, p, None, max_new_tokens=n) for p, n in ((PROMPTS[0], 160), (PROMPTS[1], 4))}
    verifier = Verifier(target, decode_chunk=1000, max_batch=max_batch)
    finished, results = {}, {}
    with InProcessHub(verifier, latency_s=0.0) as hub:
        def robot(name, prompt, tokens):
            edge = EdgeDecoder(draft, hub.connect(), robot_id=name, timeout_s=60)
            results[name] = edge.decode(prompt, mode=DecodingMode.CLOUD_ONLY, max_new_tokens=tokens)
            finished[name] = len(finished)

        hog = threading.Thread(target=robot, args=("hog", PROMPTS[0], 160))
        hog.start()
        while verifier.stats.target_forward_passes < 3:  # its prefill and first step ran: its turn is on
            threading.Event().wait(0.0005)
        newcomer = threading.Thread(target=robot, args=("newcomer", PROMPTS[1], 4))
        newcomer.start()
        for t in (hog, newcomer):
            t.join(120)
    assert results["hog"].tokens == refs[PROMPTS[0]] and results["newcomer"].tokens == refs[PROMPTS[1]]
    assert len(results["hog"].tokens) == 160
    if max_batch > 1:
        assert finished["newcomer"] < finished["hog"]  # it did not wait out the hog's 160-token turn
        assert verifier.stats.batched_rows > verifier.stats.batches
    else:
        assert finished["hog"] < finished["newcomer"]
