"""PROJECTION (not a measurement) of our measured rates onto the paper's GPU regime.

On a GPU a block verification costs about one decode step, unlike on this CPU where it costs
about twice as much. The latency model takes per-token costs from ``bench/projection.yaml``
(labelled assumptions) and the rates we measured (tokens per round, pre-draft hit rate,
exit-layer depth) and predicts per-decision latency of each mode:

  cloud-only AR   RTT + prefill + N * t_cloud
  speculative     RTT/2 + prefill + R * (gamma * t_edge + RTT + v)          R = N / tokens_per_round
  + pre-drafting  same, minus h * min(gamma * t_edge, (1 - f) * v + RTT / 2) per round
                  (h = pre-draft hit rate, f = exit-layer depth fraction, v = verify_cost * t_cloud)

The saving term is the overlap the hint buys: the next block is drafted while the rest of the
verification and the downlink are still under way.
"""

from __future__ import annotations

import os
from typing import Dict

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))


def latency_ms(mode: str, rtt: float, a: dict, tokens_per_round: float, gamma: int, hit_rate: float,
               exit_fraction: float) -> float:
    n = a["new_tokens"]
    t_e, t_c = a["edge_ms_per_token"], a["cloud_ms_per_token"]
    verify = a["verify_cost_factor"] * t_c
    if mode == "cloud_only":
        return rtt + a["cloud_prefill_ms"] + n * t_c
    if mode == "edge_only":
        return n * t_e
    rounds = n / max(tokens_per_round, 1e-6)
    per_round = gamma * t_e + rtt + verify
    if mode == "spec_early_exit":
        per_round -= hit_rate * min(gamma * t_e, (1 - exit_fraction) * verify + rtt / 2)
    return rtt / 2 + a["cloud_prefill_ms"] + rounds * per_round


def project(report: dict, assumptions_path: str = os.path.join(HERE, "projection.yaml")) -> Dict[str, object]:
    with open(assumptions_path) as handle:
        a = yaml.safe_load(handle)
    out = {"label": "PROJECTION to a GPU-target regime from assumed per-token costs (bench/projection.yaml); "
                    "not a measurement", "assumptions": a, "workloads": []}
    for wl in report.get("workloads", []):
        ref_rtt = report["settings"]["reference_rtt_ms"]
        gamma = report["settings"]["reference_gamma"]
        cell = {r["mode"]: r for r in wl["rtt_sweep"] if r["rtt_ms"] == ref_rtt}
        if "spec_early_exit" not in cell:
            continue
        tpr = cell["spec_early_exit"]["tokens_per_round"] or cell["speculative"]["tokens_per_round"]
        hit = cell["spec_early_exit"]["predraft_hit_rate"]
        exit_fraction = wl.get("exit_fraction", 0.5)
        rows = []
        for rtt in a["rtt_ms"]:
            lat = {m: latency_ms(m, rtt, a, tpr, gamma, hit, exit_fraction)
                   for m in ("cloud_only", "speculative", "spec_early_exit", "edge_only")}
            rows.append({"rtt_ms": rtt, **{f"{m}_ms": v for m, v in lat.items()},
                         "spec_vs_cloud_reduction": 1 - lat["speculative"] / lat["cloud_only"],
                         "ee_vs_cloud_reduction": 1 - lat["spec_early_exit"] / lat["cloud_only"],
                         "ee_vs_spec_reduction": 1 - lat["spec_early_exit"] / lat["speculative"]})
        out["workloads"].append({"workload": wl["workload"], "tokens_per_round": tpr, "predraft_hit_rate": hit,
                                 "exit_fraction": exit_fraction, "gamma": gamma, "rows": rows})
    return out
