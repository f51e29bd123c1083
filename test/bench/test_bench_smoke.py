"""The benchmark machinery runs end to end on a tiny random pair: pinned server process, link
emulator, every mode, the in-run lossless check, JSON + markdown + plots. (Speed numbers of a
random pair mean nothing; `make bench` measures the trained pairs.)"""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


@pytest.mark.timeout(300)
def test_bench_quick_tiny(tmp_path):
    out = tmp_path / "bench"
    proc = subprocess.run([sys.executable, "-m", "bench.run", "--quick", "--workloads", "tiny", "--rtts", "0", "20",
                           "--skip-assisted", "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=280)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "results.json").read_text())
    rows = report["workloads"][0]["rtt_sweep"]
    assert {r["mode"] for r in rows} == {"cloud_only", "edge_only", "speculative", "spec_early_exit", "spec_ee_eager"}
    assert {r["rtt_ms"] for r in rows} == {0, 20}
    ee = next(r for r in rows if r["mode"] == "spec_early_exit" and r["rtt_ms"] == 20)
    cloud = next(r for r in rows if r["mode"] == "cloud_only" and r["rtt_ms"] == 20)
    assert ee["bytes_per_token"] > 0 and cloud["target_passes_per_token"] > 0
    # The link emulator is really in the path: no decision can beat one emulated round trip, and a
    # speculative decision pays at least one per round. (Lower bounds: CPU load cannot break them.)
    assert cloud["latency_ms_median"] >= 20
    spec = next(r for r in rows if r["mode"] == "speculative" and r["rtt_ms"] == 20)
    assert spec["latency_ms_median"] >= 20 * spec["tokens"] / spec["tokens_per_round"] / spec["decisions"] * 0.5
    assert (out / "report.md").exists() and (out / "latency_vs_rtt.png").exists()
    assert "PROJECTION" in (out / "report.md").read_text()


def test_lossless_check_catches_a_mismatch():
    from types import SimpleNamespace

    from bench.run import OutputMismatch, check_lossless

    ok = [SimpleNamespace(tokens=[1, 2, 3])]
    check_lossless({"cloud_only": ok, "speculative": ok}, "same")
    with pytest.raises(OutputMismatch):
        check_lossless({"cloud_only": ok, "speculative": [SimpleNamespace(tokens=[1, 2, 4])]}, "differs")
