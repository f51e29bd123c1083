"""Hardware-profile emulation: real models, emulated durations, hints at their layer's time,
and overruns reported when this machine is slower than the emulated device."""

import time

import pytest

from specdec.engine.local import LocalSpeculativeDecoder
from specdec.engine.verifier import Verifier
from specdec.models.compute_profile import ComputeClock, ComputeProfile, ForwardCost, ProfileError, ProfilePair
from specdec.models.early_exit import EarlyExitHeads
from specdec.protocol import DecodingMode, DraftBlock, EarlyExitHint, SessionStart, VerifyResult


def _clock(fixed_ms, per_token_ms=0.0):
    return ComputeClock(ComputeProfile("test device", "tiny", ForwardCost(fixed_ms, per_token_ms)))


def test_forward_passes_take_the_emulated_time_and_outputs_stay_exact(tiny_pair, reference, prompt):
    draft, target = tiny_pair("llama", noise=0.05)
    ref = reference(target, prompt, None, max_new_tokens=8)
    edge, cloud = _clock(30.0), _clock(60.0, 1.0)
    draft.use_clock(edge)
    target.use_clock(cloud)
    try:
        with LocalSpeculativeDecoder(draft, target, gamma=3) as runner:
            t0 = time.perf_counter()
            result = runner.generate(prompt, None, DecodingMode.SPECULATIVE, max_new_tokens=8)
            elapsed_ms = (time.perf_counter() - t0) * 1000
    finally:
        draft.use_clock(None)
        target.use_clock(None)
    assert result.tokens == ref
    s = result.stats
    # every draft step and every target pass took at least its emulated time, one after another
    assert edge.passes == s.draft_forward_passes and cloud.passes == s.target_forward_passes
    assert elapsed_ms >= 30.0 * s.draft_forward_passes + 60.0 * s.rounds
    assert all(r.verify_ms >= 60.0 + r.drafted + 1 - 1e-6 for r in s.round_log)
    assert edge.valid and cloud.valid and edge.worst_ratio < 1.0


def test_hints_leave_at_their_layers_share_of_the_pass(tiny_pair, prompt):
    """...without holding the pass there: the real compute runs on (a hold would eat the pass's
    slack, and a pass whose real compute fits its emulated time would overrun)."""
    _, target = tiny_pair("llama", noise=0.05)
    clock = _clock(200.0)
    target.use_clock(clock)
    out, arrived = [], {}

    def emit(msg):
        arrived[id(msg)] = time.perf_counter()
        out.append(msg)

    try:
        verifier = Verifier(target, EarlyExitHeads(target.model, [0, 2]))
        verifier.handle(SessionStart(session_id="s", robot_id="r", prompt=prompt, max_new_tokens=8, gamma=4,
                                     tokenizer_fingerprint=target.fingerprint), emit)
        clock.worst_ratio = 0.0  # the prefill's
        t_sent = time.perf_counter()
        verifier.handle(DraftBlock(session_id="s", seq=1, round=0, position=0, tokens=[5, 6, 7]), emit)
    finally:
        target.use_clock(None)
    hints = [m for m in out if isinstance(m, EarlyExitHint)]
    result = next(m for m in out if isinstance(m, VerifyResult))
    layers = target.num_layers  # 4: layer 0 ends a quarter of the way through, layer 2 three quarters
    assert [h.exit_layer for h in hints] == [0, 2]
    assert out.index(hints[1]) < out.index(result) and hints[0].seq < hints[1].seq < result.seq
    assert 200.0 * 1 / layers <= hints[0].exit_ms < 200.0 * 3 / layers <= hints[1].exit_ms < result.verify_ms
    since = [(arrived[id(m)] - t_sent) * 1000 for m in (hints[0], hints[1], result)]
    assert 200.0 * 1 / layers - 1 <= since[0] < 200.0 * 3 / layers - 1 <= since[1] < since[2]
    assert result.verify_ms >= 200.0
    assert clock.worst_ratio < 0.5  # the pass's real compute did not wait for its hints


def test_a_profile_faster_than_this_machine_is_reported_as_overrun(tiny_pair, prompt):
    draft, target = tiny_pair("llama", noise=0.05)
    clock = _clock(0.001)  # no real forward pass takes a microsecond
    draft.use_clock(clock)
    try:
        with LocalSpeculativeDecoder(draft, target) as runner:
            runner.generate(prompt, None, DecodingMode.EDGE_ONLY, max_new_tokens=4)
    finally:
        draft.use_clock(None)
    assert clock.overruns == clock.passes > 0 and not clock.valid and clock.worst_ratio > 1.0
    worst = clock.summary()["worst_pass"]  # the slowest pass, by shape: what an overrun was
    assert worst["real_ms"] > worst["emulated_ms"] and worst["rows"] == 1 and worst["new_tokens"] >= 1
    assert worst["real_ms"] / worst["emulated_ms"] == pytest.approx(clock.worst_ratio)


def test_profile_files_name_their_sources(tmp_path):
    good = tmp_path / "pair.yaml"
    good.write_text(
        "name: example\ntitle: 'Edge board + datacentre GPU'\n"
        "sources: {vendor: 'a public benchmark page'}\n"
        "edge: {device: board, model: small, sources: [vendor], forward: {fixed_ms: 70, per_token_ms: 2}}\n"
        "cloud: {device: gpu, model: large, sources: [vendor], forward: {fixed_ms: 25, per_extra_row_ms: 1}}\n"
        "link: {rtt_ms: 120}\ngpu_hour_usd: 2.5\n")
    pair = ProfilePair.load(str(good))
    assert pair.edge.forward.ms(4) == 78 and pair.cloud.forward.ms(5, rows=3) == 27 and pair.link["rtt_ms"] == 120
    uncited = tmp_path / "uncited.yaml"
    uncited.write_text(good.read_text().replace("sources: {vendor: 'a public benchmark page'}\n", ""))
    with pytest.raises(ProfileError, match="cited but not listed"):
        ProfilePair.load(str(uncited))
    broken = tmp_path / "broken.yaml"
    broken.write_text("edge: {device: board}\ncloud: {}\n")
    with pytest.raises(ProfileError, match="edge"):
        ProfilePair.load(str(broken))
