"""The benchmark machinery runs end to end on a tiny random pair: calibration (cpu-self profile),
pinned server process, link emulator, every mode, the in-run lossless check, the cpu-self
validation against the real run, JSON + markdown + plots. (Speed numbers of a random pair mean
nothing; `make bench` measures the trained pairs.)"""

import json
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
MODES = {"cloud_only", "edge_only", "speculative", "spec_early_exit", "spec_ee_eager", "spec_ee_adaptive"}


@pytest.mark.timeout(300)
def test_bench_quick_tiny(tmp_path):
    out = tmp_path / "bench"
    proc = subprocess.run([sys.executable, "-m", "bench.run", "--quick", "--workloads", "tiny", "--rtts", "0", "20",
                           "--skip-assisted", "--profiles", "--out", str(out)], cwd=ROOT, capture_output=True,
                          text=True, timeout=280)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "results.json").read_text())
    wl = report["workloads"][0]
    rows = wl["rtt_sweep"]
    assert {r["mode"] for r in rows} == MODES
    assert {r["rtt_ms"] for r in rows} == {0, 20}
    ee = next(r for r in rows if r["mode"] == "spec_early_exit" and r["rtt_ms"] == 20)
    cloud = next(r for r in rows if r["mode"] == "cloud_only" and r["rtt_ms"] == 20)
    assert ee["bytes_per_token"] > 0 and cloud["target_passes_per_token"] > 0
    # The link emulator is really in the path: no decision can beat one emulated round trip, and a
    # speculative decision pays at least one per round. (Lower bounds: CPU load cannot break them.)
    assert cloud["latency_ms_median"] >= 20
    spec = next(r for r in rows if r["mode"] == "speculative" and r["rtt_ms"] == 20)
    assert spec["latency_ms_median"] >= 20 * spec["rounds_per_decision"] * 0.5
    # The cpu-self profile was measured and written, and emulating it reproduced the real run. The
    # bench's bar is 10%; on a shared, loaded machine and a model this small (a decision is mostly
    # overhead) the test allows more, but an emulation that added even a few ms per forward pass
    # (speculative decisions here run ~30 passes) would be caught.
    assert (out / "cpu-self-tiny.yaml").exists()
    cal = wl["calibration"]["profile"]
    assert cal["edge"]["forward"]["fixed_ms"] > 0 and cal["cloud"]["forward"]["fixed_ms"] > 0
    ratios = {r["mode"]: r["ratio"] for r in wl["validation"]["rows"]}
    assert set(ratios) == {"cloud_only", "speculative", "spec_early_exit"}
    assert all(0.5 <= x <= 2.0 for x in ratios.values()), ratios
    assert 0.75 <= math.exp(sum(math.log(x) for x in ratios.values()) / len(ratios)) <= 1.33, ratios
    text = (out / "report.md").read_text()
    assert (out / "latency_vs_rtt.png").exists()
    assert "measured on" in text and "cpu-self" in text
    assert "the edge pre-drafts on every hint" in text  # --hint-min-confidence not given


def test_lossless_check_catches_a_mismatch():
    from types import SimpleNamespace

    from bench.cells import OutputMismatch, check_lossless

    ok = [SimpleNamespace(tokens=[1, 2, 3])]
    check_lossless({"cloud_only": ok, "speculative": ok}, "same")
    with pytest.raises(OutputMismatch):
        check_lossless({"cloud_only": ok, "speculative": [SimpleNamespace(tokens=[1, 2, 4])]}, "differs")
