"""One benchmark cell: a decoding mode run over a workload's inputs, checked and summarised.

Every part of the benchmark (the real-CPU sweep, the emulated profiles, the shared cloud) runs
its decisions through :func:`run_cell` and reports them through :func:`summarise`, so a column
means the same thing in every table. Emulated cells pass ``time_scale = 1 / k`` (time dilation,
:mod:`bench.emulation`) and get every duration back in the emulated device's milliseconds.
"""

from __future__ import annotations

import statistics
from typing import Dict, Sequence

from specdec.engine.stats import hint_accuracy_by_layer
from specdec.protocol import DecodingMode

# name -> (protocol mode, EdgeDecoder overrides)
MODES = {
    "cloud_only": (DecodingMode.CLOUD_ONLY, {}),
    "edge_only": (DecodingMode.EDGE_ONLY, {}),
    "speculative": (DecodingMode.SPECULATIVE, {"draft_length": "fixed"}),
    "spec_early_exit": (DecodingMode.SPECULATIVE_EARLY_EXIT, {"predraft_policy": "hint", "draft_length": "fixed"}),  # paper
    "spec_ee_eager": (DecodingMode.SPECULATIVE_EARLY_EXIT, {"predraft_policy": "eager", "draft_length": "fixed"}),  # ours
    # ours, with the block length chosen each round from measured costs and acceptance
    "spec_ee_adaptive": (DecodingMode.SPECULATIVE_EARLY_EXIT, {"predraft_policy": "eager", "draft_length": "adaptive"}),
}
# the robot's own cloud continuation per workload (config/edge_spec_drafter.yaml: 4 for the Go2's
# 2-3 token actions); others 0
CLOUD_FINISH_TOKENS = {"go2": 4}
SPECULATIVE_MODES = ("speculative", "spec_early_exit", "spec_ee_eager", "spec_ee_adaptive")
LOSSLESS = ("cloud_only",) + SPECULATIVE_MODES


class OutputMismatch(AssertionError):
    pass


def percentile(values, q):
    values = sorted(values)
    if not values:
        return 0.0
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def run_cell(decoder, workload, mode_name: str, gamma: int, items=None, **settings) -> list:
    """Decode every input of ``workload`` (or ``items``) in ``mode_name``; ``settings`` are
    DecodeConfig fields for every decision (e.g. merge_first_block)."""
    mode, overrides = MODES[mode_name]
    return [decoder.decode(prompt, image, mode, gamma=gamma, max_new_tokens=workload.max_new_tokens,
                           **{**settings, **overrides})
            for prompt, image in (items if items is not None else workload.items)]


def check_lossless(cells: Dict[str, list], where: str) -> None:
    """Every lossless mode must reproduce cloud-only's greedy tokens exactly."""
    reference = [r.tokens for r in cells["cloud_only"]]
    for mode in LOSSLESS:
        if mode in cells:
            got = [r.tokens for r in cells[mode]]
            if got != reference:
                bad = next(i for i, (a, b) in enumerate(zip(got, reference)) if a != b)
                raise OutputMismatch(f"{where}: {mode} output differs from cloud-only on item {bad}: "
                                     f"{got[bad]} vs {reference[bad]}")


def _hint_accuracy_by_layer(stats) -> Dict[str, float]:
    """Progressive hints: how often each exit layer's hint named the round's exact result."""
    return {str(layer): right / sent for layer, (right, sent) in hint_accuracy_by_layer(stats).items()}


def summarise(results: Sequence, time_scale: float = 1.0) -> Dict[str, float]:
    """Aggregate the DecisionStats of one cell; durations are multiplied by ``time_scale``."""
    stats = [r.stats for r in results]
    lat = [s.latency_ms * time_scale for s in stats]
    per_token = [s.latency_ms * time_scale / max(s.new_tokens, 1) for s in stats]
    n = len(stats)
    tokens = sum(s.new_tokens for s in stats)
    drafted = sum(s.drafted_tokens for s in stats)
    rounds = sum(s.rounds for s in stats)
    hints = sum(s.hints for s in stats)
    predrafts = sum(s.predrafts for s in stats)
    total_ms = sum(s.latency_ms for s in stats)
    cloud_ms = sum(s.cloud_compute_ms for s in stats)
    return {
        "decisions": n,
        "tokens": tokens,
        "latency_ms_median": statistics.median(lat) if lat else 0.0,
        "latency_ms_p90": percentile(lat, 0.9),
        "latency_ms_mean": sum(lat) / n if n else 0.0,
        "ms_per_token_median": statistics.median(per_token) if per_token else 0.0,
        "ms_per_token_p90": percentile(per_token, 0.9),
        "tokens_per_round": tokens / rounds if rounds else 0.0,
        "rounds_per_decision": rounds / n if n else 0.0,
        "acceptance_rate": sum(s.accepted_tokens for s in stats) / drafted if drafted else 0.0,
        "hints_per_round": hints / rounds if rounds else 0.0,
        "hint_accuracy": sum(s.hints_correct for s in stats) / hints if hints else 0.0,
        "predrafts": predrafts,
        "predraft_hits": sum(s.predraft_hits for s in stats),
        "predraft_hit_rate": sum(s.predraft_hits for s in stats) / predrafts if predrafts else 0.0,
        "edge_idle_frac": sum(s.wait_ms for s in stats) / total_ms if total_ms else 0.0,
        "cloud_idle_frac": 1.0 - cloud_ms / total_ms if total_ms else 0.0,
        "target_passes_per_token": sum(s.target_forward_passes for s in stats) / tokens if tokens else 0.0,
        "target_passes_per_decision": sum(s.target_forward_passes for s in stats) / n if n else 0.0,
        "cloud_s_per_token": cloud_ms * time_scale / 1000 / tokens if tokens else 0.0,
        "cloud_s_per_decision": cloud_ms * time_scale / 1000 / n if n else 0.0,
        "bytes_per_token": sum(s.bytes_sent + s.bytes_received for s in stats) / tokens if tokens else 0.0,
        "hint_accuracy_by_layer": _hint_accuracy_by_layer(stats),
    }
