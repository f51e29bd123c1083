"""Hardware-profile emulation in the real system: the verifier_server's --compute-profile and its
stats side channel, the profile files, time dilation, the cpu-self fit, and the report's labels."""

import copy
import os
import subprocess
import sys
import time

import pytest
import yaml

from bench import calibrate, cluster, emulation, report, shared_cloud, workloads
from specdec.models.compute_profile import ForwardCost, ProfilePair
from specdec.protocol import DecodingMode

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def _profile(path, cloud_ms, edge_ms=1.0, rtt_ms=0.0):
    path.write_text(yaml.safe_dump({
        "name": path.stem, "title": "test device", "workload": "go2", "sources": {"t": "this test"},
        "edge": {"device": "e", "model": "d", "sources": ["t"], "forward": {"fixed_ms": edge_ms}},
        "cloud": {"device": "c", "model": "t", "sources": ["t"], "forward": {"fixed_ms": cloud_ms}},
        "link": {"rtt_ms": rtt_ms}, "gpu_hour_usd": 1.0}))
    return str(path)


def test_device_profiles_load_with_their_sources():
    profiles = emulation.device_profiles()
    names = {p.name for p in profiles}
    assert {"paper-go2-orin-nx-a100", "paper-text-nano-a100", "current-go2-orin-nx-h100"} <= names
    assert not any(n.startswith("cpu-self") for n in names)
    for p in profiles:
        assert p.workload in ("go2", "text") and p.rtt_ms > 0 and p.pair.gpu_hour_usd > 0
        for side in (p.pair.edge, p.pair.cloud):
            assert side.sources and all(s in p.pair.sources for s in side.sources)
            assert side.forward.fixed_ms > 0
    paper = {p.name: p for p in profiles}
    assert paper["paper-go2-orin-nx-a100"].pair.edge.forward.fixed_ms == 72.0  # the paper's figure, as cited
    assert paper["paper-text-nano-a100"].paper["latency_vs_cloud_ar"] == 0.65
    with pytest.raises(ValueError, match="no profile"):
        emulation.device_profiles(["no-such-profile"])


def test_effective_profile_dilates_time_and_rescales_image_tokens(tmp_path):
    pair = ProfilePair.load(_profile(tmp_path / "p.yaml", cloud_ms=25.0, edge_ms=70.0, rtt_ms=120.0))
    pair.cloud.forward.per_image_token_ms = 0.5  # the vision tower's share, on top of ...
    pair.link.update(bandwidth_mbps=30.0, loss=0.01)
    eff = emulation.effective(pair, 3.0, {"cloud": 10.0})
    assert eff.cloud.forward.ms(5, 0, 4) == pytest.approx(3 * (25.0 + 10 * 0.5 * 4))
    with_text = copy.deepcopy(pair)
    with_text.cloud.forward.per_token_ms = 0.1  # ... what every token costs the language model
    # 4 stand-in image tokens cost what 40 of the profile's do (both shares), 1 text token as 1
    assert emulation.effective(with_text, 3.0, {"cloud": 10.0}).cloud.forward.ms(5, 0, 4) == \
        pytest.approx(3 * (25.0 + 0.1 + 40 * (0.1 + 0.5)))
    assert eff.edge.forward.ms(1) == pytest.approx(210.0)
    assert eff.link == {"rtt_ms": 360.0, "bandwidth_mbps": 10.0, "loss": 0.01}
    assert pair.cloud.forward.fixed_ms == 25.0  # the original is untouched
    # written and read back as the server reads it
    back = ProfilePair.load(emulation.write(eff, str(tmp_path / "eff.yaml")))
    assert back.cloud.forward == eff.cloud.forward and back.link == eff.link
    # k: the smallest half-step that leaves every measured shape DILATION_MARGIN inside the profile
    # this CPU's measured passes: one 5-token pass the scheduler held up does not set k (median per kind)
    shapes = {"edge": [(1, 40, 0, 10.0, "k=1")],
              "cloud": [(5, 40, 0, 60.0, "k=5"), (5, 45, 0, 58.0, "k=5"), (5, 50, 0, 400.0, "k=5")]}
    k = emulation.dilation(pair, shapes)
    assert k == 4.0 and 60.0 * emulation.DILATION_MARGIN <= k * 25.0
    slow_device = ProfilePair.load(_profile(tmp_path / "slow.yaml", cloud_ms=500.0, edge_ms=500.0))
    assert emulation.dilation(slow_device, shapes) == 1.0
    # a device pass shorter than the scheduling-noise floor is stretched to it even when this CPU is faster
    fast = {"edge": [(1, 40, 0, 0.1, "k=1")], "cloud": [(5, 40, 0, 0.1, "k=5")]}
    fast_device = ProfilePair.load(_profile(tmp_path / "h100.yaml", cloud_ms=5.0, edge_ms=50.0))
    assert emulation.dilation(fast_device, fast) == emulation.MIN_PASS_MS / 5.0
    # k covers prefills, the cloud's (in the server) with the repeated passes' margin, the edge's with less:
    # the smallest half-step that keeps the calibrated prefill that many times inside the device's
    for side, device_ms in (("cloud", 25.0), ("edge", 70.0)):
        k = emulation.prefill_dilation(pair, {side: [(100, 0, 0, 300.0, "prefill")]})
        assert (k - 0.5) * device_ms < emulation.PREFILL_MARGIN[side] * 300.0 <= k * device_ms
    assert emulation.PREFILL_MARGIN["cloud"] == emulation.DILATION_MARGIN > emulation.PREFILL_MARGIN["edge"]
    # where they still overrun, what they add per decision is bounded from the calibration
    prefills = {"cloud": [(100, 0, 0, 300.0, "prefill")], "edge": [(100, 0, 0, 1.0, "prefill")]}
    assert emulation.prefill_excess_ms(pair, prefills, 4.0) == pytest.approx((300.0 - 4 * 25.0) / 4)


def test_fleet_dilation_covers_crowded_drafts_and_a_prompt_mixed_into_the_steps(tmp_path):
    device = ProfilePair.load(_profile(tmp_path / "d.yaml", cloud_ms=25.0, edge_ms=12.0))
    device.cloud.forward.per_token_ms = 0.1  # a GPU: a 40-token prompt costs about one step
    here = ProfilePair.load(_profile(tmp_path / "here.yaml", cloud_ms=40.0, edge_ms=5.0))
    here.cloud.forward.per_token_ms = 1.0  # a CPU: every token costs
    shapes = {"edge": {"repeated": [(1, 40, 0, 5.0, "k=1")], "prefill": [(40, 0, 0, 20.0, "prefill")]},
              "cloud": {"repeated": [(1, 40, 0, 41.0, "k=1")], "prefill": [(40, 0, 0, 80.0, "prefill")]}}
    one, eight = (emulation.fleet_dilation(device, here, shapes, k, mixed=True) for k in (1, 8))
    assert one < eight and emulation.fleet_dilation(device, here, shapes, 8) < eight
    # 8 rows padded to the prompt cost here what 8 prompts do; the device is charged 40 + 7 tokens
    mixed = here.cloud.forward.ms(8 * 40) / device.cloud.forward.ms(47, rows=8)
    assert eight >= emulation.FLEET_PREFILL_MARGIN * mixed
    # 8 robots' drafts take turns on one core: the edge's times count 8 times
    assert eight * device.edge.forward.ms(1) >= 8 * 5.0


def test_calibration_fit_recovers_a_linear_cost_and_never_goes_negative():
    truth = ForwardCost(fixed_ms=20.0, per_token_ms=1.5, per_cached_token_ms=0.01, per_image_token_ms=0.3)
    passes = [calibrate.Pass("prefill", n, 0, i, truth.ms(n, 0, i)) for n, i in ((40, 0), (60, 24), (90, 24))]
    passes += [calibrate.Pass(f"k={k}", k, c, 0, truth.ms(k, c)) for k in (1, 2, 5) for c in (50, 80, 120)]
    cost, errors = calibrate.fit(passes, calibrate.kind_weights(4, 8))
    shapes = calibrate.measured_shapes(passes + [calibrate.Pass("k=5+exits", 5, 50, 0, 99.0)])
    assert shapes["prefill"] == [(n, 0, i, truth.ms(n, 0, i), "prefill") for n, i in ((40, 0), (60, 24), (90, 24))]
    assert (5, 50, 0, truth.ms(5, 50), "k=5") in shapes["repeated"] and (5, 50, 0, 99.0, "k=5+exits") in shapes["repeated"]
    assert len(shapes["repeated"]) == 10
    for name in calibrate.TERMS:
        assert getattr(cost, name) == pytest.approx(getattr(truth, name), rel=0.02)
    assert all(abs(e) < 0.01 for e in errors.values())
    assert cost.knee_tokens == 0  # a linear cost gets no knee
    # a roofline (blocks ride on the weight reads, a prefill is compute-bound) gets its knee back
    roof = ForwardCost(fixed_ms=60.0, per_token_ms=4.0, per_cached_token_ms=0.01, knee_tokens=5,
                       per_token_after_knee_ms=1.0)
    passes = [calibrate.Pass("prefill", n, 0, 0, roof.ms(n)) for n in (40, 60, 90)]
    passes += [calibrate.Pass(f"k={k}", k, c, 0, roof.ms(k, c)) for k in (1, 2, 5) for c in (50, 80, 120)]
    cost, errors = calibrate.fit(passes, calibrate.kind_weights(4, 8))
    assert (cost.knee_tokens, cost.per_token_after_knee_ms) == (5, pytest.approx(1.0, rel=0.02))
    assert all(abs(e) < 0.01 for e in errors.values())
    # a cost that falls with the block size cannot be followed without a negative term: refused
    falling = [calibrate.Pass(f"k={k}", k, 50, 0, 100.0 - 10 * k) for k in (1, 2, 5)]
    cost, _ = calibrate.fit(falling, {})
    assert all(getattr(cost, name) >= 0 for name in calibrate.TERMS)


@pytest.mark.timeout(240)
def test_verifier_server_emulates_the_profile_and_reports_overruns(tmp_path):
    from specdec.engine.drafter import EdgeDecoder
    from specdec.models.loading import load_model

    w = workloads.tiny_workload(2, 6)
    slow = _profile(tmp_path / "slow.yaml", cloud_ms=40.0)
    impossible = _profile(tmp_path / "impossible.yaml", cloud_ms=0.001)  # no forward pass takes a microsecond
    draft = load_model(w.draft)
    with cluster.cloud_server(w.target, w.exits, profile=slow, workdir=str(tmp_path / "slow_cloud")) as cloud, \
            cluster.cloud_server(w.target, w.exits, profile=impossible) as fast_cloud:
        results = {}
        for name, server in (("slow", cloud), ("impossible", fast_cloud)):
            with cluster.wan_link(server, 0.0) as link:
                watch = emulation.ClockWatch(None, server)
                t0 = time.perf_counter()
                result = EdgeDecoder(draft, link, robot_id=server.robot_id).decode(
                    *w.items[0], DecodingMode.CLOUD_ONLY, max_new_tokens=6, stop_token_ids=[])
                results[name] = (result, (time.perf_counter() - t0) * 1000, watch.lap(), server.snapshot())
        result, elapsed_ms, validity, snap = results["slow"]
        passes = result.stats.target_forward_passes
        assert snap["clock"]["passes"] == validity.cloud_passes == passes > 1
        assert elapsed_ms >= 40.0 * passes  # every target pass took the emulated GPU's time
        assert result.stats.cloud_compute_ms >= 40.0 * passes
        assert validity.valid and snap["profile"]["device"] == "c"
        result, _, validity, snap = results["impossible"]
        assert result.tokens == results["slow"][0].tokens  # the real model ran: same output
        assert not validity.valid and validity.cloud_overruns == validity.cloud_passes > 0
        assert snap["clock"]["worst_real_over_emulated"] > 1.0
    # at exit the server writes its final totals
    final = cluster._read_json(cloud.stats_path)
    assert final["final"] and final["clock"]["passes"] >= passes


@pytest.mark.timeout(120)
def test_bench_links_open_across_a_dilated_round_trip():
    """The paper's 120 ms RTT at the text fleet's x105 dilation is 6.3 s each way: a bench server's
    opening handshake must outlast it (with the verifier's 5 s default, right on a real network,
    this connection never opened and the robots saw "did not receive a valid HTTP response")."""
    w = workloads.tiny_workload(1, 2)
    with cluster.cloud_server(w.target, w.exits) as cloud, cluster.wan_link(cloud, 5500.0) as link:
        link.connect()
        deadline = time.monotonic() + 30
        while not link.connected and time.monotonic() < deadline:
            time.sleep(0.1)
        assert link.connected, link.stats()


def test_keepalive_pings_wait_for_a_dilated_round_trip():
    """A keepalive pong crosses the emulated link: a client whose ping timeout is shorter than the
    link's round trip loses its connection again and again, while the bench's clients (timeouts
    grown by two round trips) and servers (BENCH_PING_TIMEOUT_S) keep theirs."""
    from specdec.transport.websocket import WebSocketClient

    w = workloads.tiny_workload(1, 2)
    with cluster.cloud_server(w.target, w.exits, robot_ids=("kept", "short")) as cloud, \
            cluster.wan_link(cloud, 1500.0, robot_ids=["kept"]) as (kept,):
        assert kept.ping_timeout_s >= 20 + 4 * 1.5
        short = WebSocketClient(kept.uri, "short", cloud.tokens["short"], connect_timeout=10, ping_timeout_s=2.0)
        try:
            kept.connect()
            short.connect()
            deadline = time.monotonic() + 30
            while short.reconnects < 1 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert short.reconnects >= 1, short.stats()  # its 3 s round-trip pong came after 2 s
            assert kept.connected and kept.reconnects == 0, kept.stats()
        finally:
            short.close()


def test_a_bad_profile_stops_the_server_with_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("edge: {device: x}\ncloud: {}\n")
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text("robots:\n  r: {token_sha256: " + "a" * 64 + "}\n")
    w = workloads.tiny_workload(1, 2)
    proc = subprocess.run([sys.executable, "-m", "cloud_verifier_bridge.server", "--model", w.target, "--tokens",
                           str(tokens), "--device", "cpu", "--port", "0", "--compute-profile", str(bad)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.startswith("verifier_server:")]
    assert len(lines) == 1 and "ProfileError" in lines[0] and "edge" in lines[0]


def _row(mode, latency, valid=True, **extra):
    base = {"mode": mode, "decisions": 4, "tokens": 12, "latency_ms_median": latency, "latency_ms_p90": latency * 1.2,
            "tokens_per_round": 1.5, "rounds_per_decision": 2.0, "hint_accuracy": 0.5, "predrafts": 2,
            "predraft_hits": 1, "cloud_s_per_decision": 0.05, "valid": valid,
            "overruns": {"edge": 0, "cloud": 0 if valid else 3}, "passes": {"edge": 10, "cloud": 20}}
    return {**base, **extra}


def test_report_labels_emulated_tables_and_marks_invalid_cells(tmp_path):
    entry = {"profile": "paper-go2-orin-nx-a100", "title": "Paper Go2 setup", "dilation": 2.0, "rtt_ms": 120.0,
             "gpu_hour_usd": 1.5, "paper": {"go2_latency_vs_cloud_ar": 0.79}, "image_scale": {},
             "edge": {"device": "Orin", "model": "2B"}, "cloud": {"device": "A100", "model": "7B"},
             "rows": [_row("cloud_only", 300.0), _row("speculative", 400.0),
                      _row("spec_early_exit", 350.0, valid=False)]}
    rep = {"settings": {"quick": True, "reference_rtt_ms": 50, "reference_gamma": 4, "rtts_ms": [50],
                        "merge_first_block": True},
           "hardware": {"processor": "Test CPU", "cpus": 2, "machine": "x86_64", "torch": "t", "regime": "r",
                        "edge_cores": [0], "cloud_cores": [1]},
           "workloads": [{"workload": "go2", "description": "d", "items": 4, "max_new_tokens": 8,
                          "rtt_sweep": [dict(_row("cloud_only", 100.0), rtt_ms=50)], "gamma_sweep": [],
                          "emulated": [entry], "fleet": [], "map": []}]}
    text = report.write(rep, str(tmp_path))
    emulated = text[text.index("EMULATED paper-go2-orin-nx-a100"):]
    header = next(line for line in emulated.splitlines() if line.startswith("| emulated: mode"))
    assert header
    invalid = next(line for line in emulated.splitlines() if line.startswith("| spec + EE, paper's pre-draft"))
    assert "INVALID" in invalid and "cloud 3/20" in invalid and "0.79x cloud AR" in invalid
    valid = next(line for line in emulated.splitlines() if line.startswith("| plain speculative"))
    assert "INVALID" not in valid
    assert "measured on Test CPU" in text and "time dilation x2" in text.lower()
    # cost per 1,000 decisions at the profile's GPU price: 0.05 GPU-s x 1000 / 3600 x $1.5
    assert "$0.021" in valid
    assert (tmp_path / "emulated_latency.png").exists()


def test_capacity_counts_robots_up_to_the_first_fleet_over_the_bar():
    rows = [{"mode": "cloud_only", "robots": k, "latency_ms_p90": p90, "valid": True, "errors": []}
            for k, p90 in ((1, 100), (4, 140), (8, 400), (16, 130))]
    rows += [{"mode": "speculative", "robots": k, "latency_ms_p90": 120, "valid": k != 8, "errors": []}
             for k in (1, 4, 8, 16)]
    assert shared_cloud.capacity(rows, 150) == {"cloud_only": 4, "speculative": 4}


def test_batching_gain_compares_the_verifiers_at_the_largest_common_fleet():
    from bench.report import _batching_gain

    def row(verifier, robots, rate, p90):
        return {"profile": "p", "mode": "cloud_only", "verifier": verifier, "robots": robots,
                "decisions_per_s": rate, "latency_ms_p90": p90}

    rows = [row("serialized", 1, 4.0, 250), row("serialized", 8, 8.0, 1000), row("serialized", 16, 8.0, 2000),
            row("batched", 1, 4.0, 250), row("batched", 8, 13.0, 700)]  # no batched 16: 8 is the largest common
    rows += [row("batched-steps-only", 1, 4.0, 250), row("batched-steps-only", 16, 10.0, 1500)]
    lines = _batching_gain(rows)
    assert lines[2:4] == ["- p, cloud-only, 8 robots: batched verifier 1.62x the serialized one's decisions/s; "
                          "p90 2.80x its own with 1 robot.",
                          "- p, cloud-only, 16 robots: batched-steps-only verifier 1.25x the serialized one's "
                          "decisions/s; p90 6.00x its own with 1 robot."]
    assert _batching_gain([r for r in rows if r["verifier"] == "serialized"]) == []
