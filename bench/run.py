"""make bench / make bench-quick: every decoding mode side by side, edge and cloud as two devices.

For each workload (SmolLM2 text pair, Go2 VLM pair):
  * the cloud is a real ``verifier_server`` process pinned to its own core; a link-emulator
    process (delay, jitter, bandwidth, loss) sits in front of it; the edge is this process,
    pinned to the other core, talking the real WebSocket protocol;
  * each emulated RTT of the sweep runs every mode on the same inputs: cloud-only
    autoregressive, edge-only draft, plain speculative, speculative + early-exit pre-drafting;
  * a gamma sweep at the reference RTT;
  * every lossless mode must reproduce cloud-only's greedy tokens exactly (else exit 1);
  * reference point: transformers' assisted generation vs our engine in-process (bench/assisted.py);
  * a labelled projection to the paper's GPU regime (bench/projection.py).
Writes results/bench/{results.json, report.md, *.png}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, List

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

from bench import cluster, workloads  # noqa: E402
from specdec.protocol import DecodingMode  # noqa: E402

# name -> (protocol mode, EdgeDecoder overrides)
MODES = {
    "cloud_only": (DecodingMode.CLOUD_ONLY, {}),
    "edge_only": (DecodingMode.EDGE_ONLY, {}),
    "speculative": (DecodingMode.SPECULATIVE, {}),
    "spec_early_exit": (DecodingMode.SPECULATIVE_EARLY_EXIT, {"predraft_policy": "hint"}),  # the paper
    "spec_ee_eager": (DecodingMode.SPECULATIVE_EARLY_EXIT, {"predraft_policy": "eager"}),  # ours
}
SPECULATIVE_MODES = ("speculative", "spec_early_exit", "spec_ee_eager")
LOSSLESS = ("cloud_only",) + SPECULATIVE_MODES


@dataclass
class Settings:
    quick: bool
    rtts_ms: List[float]
    gammas: List[int]
    reference_rtt_ms: float
    reference_gamma: int
    text_prompts: int
    text_tokens: int
    go2_frames: int
    go2_tokens: int
    repeats: int = 1
    jitter_ms: float = 0.0
    bandwidth_mbps: float = 0.0
    loss: float = 0.0
    workloads: List[str] = field(default_factory=lambda: ["text", "go2"])


def settings(quick: bool) -> Settings:
    if quick:
        return Settings(True, rtts_ms=[0, 50], gammas=[2, 4], reference_rtt_ms=50, reference_gamma=4,
                        text_prompts=3, text_tokens=12, go2_frames=4, go2_tokens=8)
    # sized for < 20 minutes on 2 cores: 6 text prompts x 24 tokens x 5 RTTs x 4 modes + the gamma sweep
    return Settings(False, rtts_ms=[0, 10, 25, 50, 100], gammas=[1, 2, 4, 8], reference_rtt_ms=50,
                    reference_gamma=4, text_prompts=6, text_tokens=24, go2_frames=16, go2_tokens=8)


def percentile(values, q):
    values = sorted(values)
    if not values:
        return 0.0
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def summarise(results) -> Dict[str, float]:
    """Aggregate DecisionStats of one (workload, rtt, gamma, mode) cell."""
    stats = [r.stats for r in results]
    lat = [s.latency_ms for s in stats]
    per_token = [s.latency_ms / max(s.new_tokens, 1) for s in stats]
    tokens = sum(s.new_tokens for s in stats)
    drafted = sum(s.drafted_tokens for s in stats)
    rounds = sum(s.rounds for s in stats)
    hints = sum(s.hints for s in stats)
    predrafts = sum(s.predrafts for s in stats)
    total_ms = sum(lat)
    return {
        "decisions": len(stats),
        "tokens": tokens,
        "latency_ms_median": statistics.median(lat),
        "latency_ms_p90": percentile(lat, 0.9),
        "ms_per_token_median": statistics.median(per_token),
        "ms_per_token_p90": percentile(per_token, 0.9),
        "tokens_per_round": tokens / rounds if rounds else 0.0,
        "acceptance_rate": sum(s.accepted_tokens for s in stats) / drafted if drafted else 0.0,
        "hint_accuracy": sum(s.hints_correct for s in stats) / hints if hints else 0.0,
        "predraft_hit_rate": sum(s.predraft_hits for s in stats) / predrafts if predrafts else 0.0,
        "edge_idle_frac": sum(s.wait_ms for s in stats) / total_ms if total_ms else 0.0,
        "cloud_idle_frac": 1.0 - sum(s.cloud_compute_ms for s in stats) / total_ms if total_ms else 0.0,
        "target_passes_per_token": sum(s.target_forward_passes for s in stats) / tokens if tokens else 0.0,
        "cloud_s_per_token": sum(s.cloud_compute_ms for s in stats) / 1000 / tokens if tokens else 0.0,
        "bytes_per_token": sum(s.bytes_sent + s.bytes_received for s in stats) / tokens if tokens else 0.0,
    }


class OutputMismatch(AssertionError):
    pass


def run_cell(decoder, workload, mode_name, gamma):
    results = []
    mode, overrides = MODES[mode_name]
    for prompt, image in workload.items:
        results.append(decoder.decode(prompt, image, mode, gamma=gamma, max_new_tokens=workload.max_new_tokens,
                                      **overrides))
    return results


def check_lossless(cells, where):
    reference = [r.tokens for r in cells["cloud_only"]]
    for mode in LOSSLESS:
        if mode in cells:
            got = [r.tokens for r in cells[mode]]
            if got != reference:
                bad = next(i for i, (a, b) in enumerate(zip(got, reference)) if a != b)
                raise OutputMismatch(f"{where}: {mode} output differs from cloud-only on item {bad}: "
                                     f"{got[bad]} vs {reference[bad]}")


def exit_fraction(exits_path) -> float:
    """Depth of the hint's exit layer as a fraction of the target's layers (from the file's metadata)."""
    if not exits_path:
        return 1.0
    from safetensors import safe_open

    with safe_open(exits_path, framework="pt") as handle:
        meta = handle.metadata()
    return (json.loads(meta["exit_layers"])[0] + 1) / int(meta["num_layers"])


def bench_workload(workload, cfg: Settings, edge_cores, cloud_cores, log):
    from specdec.engine.drafter import EdgeDecoder
    from specdec.models.loading import load_model

    draft = load_model(workload.draft, name="draft")
    out = {"workload": workload.name, "description": workload.description, "items": len(workload.items),
           "max_new_tokens": workload.max_new_tokens, "rtt_sweep": [], "gamma_sweep": [],
           "exit_fraction": exit_fraction(workload.exits)}
    with cluster.cloud_server(workload.target, workload.exits, cores=cloud_cores) as cloud:
        for rtt in cfg.rtts_ms:
            with cluster.wan_link(cloud, rtt / 2, cfg.jitter_ms, cfg.bandwidth_mbps, cfg.loss,
                                  cores=cloud_cores) as link:
                decoder = EdgeDecoder(draft, link, robot_id=cloud.robot_id, timeout_s=60)
                decoder.decode(*workload.items[0], DecodingMode.SPECULATIVE, max_new_tokens=4)  # warm-up
                cells = {}
                for mode in MODES:
                    if mode == "edge_only" and rtt != cfg.rtts_ms[0]:
                        continue  # no network involved: measured once
                    t0 = time.perf_counter()
                    cells[mode] = run_cell(decoder, workload, mode, cfg.reference_gamma)
                    log(f"  {workload.name} rtt={rtt:>5.0f} ms  {mode:<16} {time.perf_counter() - t0:6.1f} s")
                check_lossless(cells, f"{workload.name} rtt={rtt}")
                for mode, results in cells.items():
                    out["rtt_sweep"].append({"rtt_ms": rtt, "gamma": cfg.reference_gamma, "mode": mode,
                                             **summarise(results)})
                if rtt == cfg.reference_rtt_ms:
                    for gamma in cfg.gammas:
                        if gamma == cfg.reference_gamma:
                            continue
                        g_cells = {"cloud_only": cells["cloud_only"]}
                        for mode in SPECULATIVE_MODES:
                            g_cells[mode] = run_cell(decoder, workload, mode, gamma)
                            log(f"  {workload.name} rtt={rtt:>5.0f} ms  gamma={gamma} {mode}")
                        check_lossless(g_cells, f"{workload.name} gamma={gamma}")
                        for mode in SPECULATIVE_MODES:
                            out["gamma_sweep"].append({"rtt_ms": rtt, "gamma": gamma, "mode": mode,
                                                       **summarise(g_cells[mode])})
                    for mode in SPECULATIVE_MODES:
                        row = next(r for r in out["rtt_sweep"] if r["rtt_ms"] == rtt and r["mode"] == mode)
                        out["gamma_sweep"].append({**row})
                decoder = None
        out["cloud_log_tail"] = open(cloud.log_path).read()[-400:]
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke-run settings (under 3 minutes)")
    parser.add_argument("--out", default=os.path.join(ROOT, "results", "bench"))
    parser.add_argument("--workloads", nargs="+", choices=["text", "go2", "tiny"],
                        help="default: text and go2, skipping one whose models are not built")
    parser.add_argument("--rtts", nargs="+", type=float, help="override the RTT sweep (ms)")
    parser.add_argument("--jitter-ms", type=float, default=0.0)
    parser.add_argument("--bandwidth-mbps", type=float, default=0.0)
    parser.add_argument("--loss", type=float, default=0.0)
    parser.add_argument("--skip-assisted", action="store_true")
    args = parser.parse_args(argv)
    cfg = settings(args.quick)
    cfg.workloads = args.workloads or ["text", "go2"]
    if args.rtts:
        cfg.rtts_ms = args.rtts
        cfg.reference_rtt_ms = args.rtts[min(len(args.rtts) - 1, len(args.rtts) // 2)]
    cfg.jitter_ms, cfg.bandwidth_mbps, cfg.loss = args.jitter_ms, args.bandwidth_mbps, args.loss
    os.makedirs(args.out, exist_ok=True)
    started = time.perf_counter()

    def log(msg):
        print(f"[bench {time.perf_counter() - started:6.1f}s] {msg}", flush=True)

    edge_cores, cloud_cores = cluster.core_split()
    cluster.pin_self(edge_cores)
    torch.set_num_threads(1)
    report = {
        "settings": vars(cfg),
        "hardware": {"machine": platform.machine(), "processor": platform.processor() or platform.machine(),
                     "cpus": os.cpu_count(), "edge_cores": sorted(edge_cores or []),
                     "cloud_cores": sorted(cloud_cores or []), "torch": torch.__version__,
                     "regime": "CPU: edge and cloud each one core, fp32, 1 torch thread"},
        "workloads": [],
    }
    builders = {"text": lambda: workloads.text_workload(cfg.text_prompts, cfg.text_tokens),
                "go2": lambda: workloads.go2_workload(cfg.go2_frames, cfg.go2_tokens),
                "tiny": lambda: workloads.tiny_workload(cfg.go2_frames, cfg.go2_tokens)}
    report["skipped"] = {}
    for name in list(cfg.workloads):
        try:
            workload = builders[name]()
            missing = workload.missing()
        except ImportError as exc:  # e.g. the Go2 VLM pair's module is not in this checkout
            workload, missing = None, [f"{type(exc).__name__}: {exc}"]
        if missing:
            log(f"{name}: not available ({missing}); run 'make models' first")
            if args.workloads:  # asked for by name: that is an error
                return 2
            report["skipped"][name] = missing
            cfg.workloads.remove(name)
            continue
        log(f"workload {name}: {len(workload.items)} inputs, {workload.max_new_tokens} new tokens each")
        report["workloads"].append(bench_workload(workload, cfg, edge_cores, cloud_cores, log))
    if not args.skip_assisted and "text" in cfg.workloads:
        from bench import assisted

        cluster.pin_self(set().union(edge_cores or set(), cloud_cores or set()) or None)
        report["assisted"] = assisted.compare(builders["text"](), gamma=cfg.reference_gamma, log=log)
    from bench import projection, report as report_mod

    report["projection"] = projection.project(report)
    report["elapsed_s"] = time.perf_counter() - started
    with open(os.path.join(args.out, "results.json"), "w") as handle:
        json.dump(report, handle, indent=2, default=str)
    markdown = report_mod.write(report, args.out)
    print(markdown)
    log(f"done in {report['elapsed_s']:.0f} s -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
