"""Time to reach the goal, the number a Go2 user feels: decision latency x decisions + motion time.

The simulator's closed loop (:mod:`go2_sim.closed_loop`, ROS-free) runs each seeded episode once
with the target alone and once with the draft alone, greedy, in this process. Every lossless mode
(cloud-only and all speculative modes) produces exactly the target's actions - the benchmark checks
that on every input - so it drives the same trajectory with the same decisions and the same motion
time, and differs only in how long each decision takes; edge-only follows the draft's own
trajectory (its own decisions, motion and success). A mode's time to goal per episode is then
``motion time + decisions x its median decision latency`` (and with the p90 latency, for a slow
link day), over the episodes that reached the goal.
"""

from __future__ import annotations

import statistics
from typing import Dict, List, Sequence

import numpy as np

SEEDS_START = 3000  # episode seeds of this benchmark (training draws its seeds at random from [0, 2^31))


def episodes(draft, target, seeds: Sequence[int], max_new_tokens: int = 8, max_decisions: int = 40,
             template: str = "") -> Dict[str, list]:
    """Closed-loop episodes of the target alone and of the draft alone: per policy, one dict per
    episode with its decisions, motion seconds and success (prompts: ``template`` around the
    instruction, specdec.models.prompting)."""
    from go2_sim.closed_loop import run_episode
    from go2_sim.episode import Go2Episode
    from specdec.engine.drafter import EdgeDecoder
    from specdec.protocol import DecodingMode

    out = {}
    for name, adapter in (("target", target), ("draft", draft)):
        decoder = EdgeDecoder(adapter)  # the model alone, greedy (edge-only mode needs no cloud)

        def policy(env, decoder=decoder):
            image = np.ascontiguousarray(env.render()[:, :, ::-1])  # camera bgr8 -> RGB
            return decoder.decode(env.prompt(template), image, DecodingMode.EDGE_ONLY, max_new_tokens=max_new_tokens).text

        env = Go2Episode()
        results = [run_episode(env, policy, int(seed), max_decisions=max_decisions) for seed in seeds]
        out[name] = [{"seed": r.seed, "decisions": r.decisions, "motion_s": r.sim_time, "success": r.success}
                     for r in results]
    return out


def motion_per_decision_s(runs: Dict[str, list]) -> float:
    """Mean motion time per decision of the target's episodes (the robots' think time in the
    shared-cloud benchmark: a robot decides again once its motion is done)."""
    eps = runs.get("target") or []
    decisions = sum(e["decisions"] for e in eps)
    return sum(e["motion_s"] for e in eps) / decisions if decisions else 0.0


def time_to_goal(runs: Dict[str, list], rows: Dict[str, dict]) -> Dict[str, dict]:
    """Per mode (``rows``: mode -> summarised cell), seconds to reach the goal over successful
    episodes: median and mean with the mode's median latency, mean with its p90 latency."""
    out = {}
    for mode, row in rows.items():
        eps = runs["draft" if mode == "edge_only" else "target"]
        reached = [e for e in eps if e["success"]]
        if not reached:
            out[mode] = {"episodes": len(eps), "success_rate": 0.0}
            continue
        p50, p90 = row["latency_ms_median"] / 1000, row["latency_ms_p90"] / 1000
        times = [e["motion_s"] + e["decisions"] * p50 for e in reached]
        out[mode] = {"episodes": len(eps), "success_rate": len(reached) / len(eps),
                     "decisions_mean": statistics.mean(e["decisions"] for e in reached),
                     "motion_s_mean": statistics.mean(e["motion_s"] for e in reached),
                     "time_to_goal_s_median": statistics.median(times), "time_to_goal_s_mean": statistics.mean(times),
                     "time_to_goal_s_mean_at_p90": statistics.mean(e["motion_s"] + e["decisions"] * p90
                                                                   for e in reached)}
    return out


def summary(runs: Dict[str, list]) -> Dict[str, dict]:
    return {name: {"episodes": len(eps), "success_rate": sum(e["success"] for e in eps) / max(1, len(eps)),
                   "decisions_mean": statistics.mean(e["decisions"] for e in eps) if eps else 0.0,
                   "motion_s_mean": statistics.mean(e["motion_s"] for e in eps) if eps else 0.0}
            for name, eps in runs.items()}


def seeds(count: int) -> List[int]:
    return list(range(SEEDS_START, SEEDS_START + count))
