"""make bench / make bench-quick: every decoding mode, measured on this CPU and emulated on the paper's hardware.

For each workload (SmolLM2 text pair, Go2 VLM pair; the tiny pair for plumbing checks):

1. cpu-self calibration (bench/calibrate.py): this machine's own forward costs by pass shape.
2. Measured on this CPU: the real ``verifier_server`` process pinned to its own core behind a
   link-emulator process, the edge (this process) pinned to the other, the real WebSocket
   protocol; an RTT sweep over every mode (cloud-only, edge-only, plain speculative, speculative
   + early exits with the paper's pre-draft policy, with ours (eager), and eager + adaptive draft
   length) and a gamma sweep at the reference RTT. Every lossless mode must reproduce cloud-only's
   greedy tokens exactly (else exit 1).
3. Validation: at the reference RTT a second server emulates the cpu-self profile and the edge's
   draft runs on its clock; decisions alternate between the real and the emulated setup, so both
   see the same machine load. Their latencies must agree within 10% (the emulation adds nothing).
4. Emulated: every device profile of the workload (profiles/*.yaml) - the server emulates the
   cloud GPU, the edge's draft the edge device, the link emulator the profile's link - time-dilated
   where this CPU is slower than the device (bench/emulation.py); a cell where a clock overran is
   INVALID. Go2 adds the time to goal per closed-loop episode (bench/time_to_goal.py), and on the
   paper's profile a shared cloud of K robots (bench/shared_cloud.py) and a map of where each side
   wins. Text fleets and every other profile's fleet run in ``make bench-fleet`` (``--fleet-only``):
   their dilation grows with K and would put the full run past 30 minutes on a slow machine.
5. Reference point: transformers' assisted generation vs our engine in-process (bench/assisted.py).

Writes results/bench/{results.json, report.md, *.png, cpu-self-*.yaml, emulated-*.yaml}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
import time
from dataclasses import dataclass, field, replace
from typing import Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

from bench import calibrate, cluster, emulation, projection, shared_cloud, time_to_goal, workloads  # noqa: E402
from bench.cells import CLOUD_FINISH_TOKENS, MODES, check_lossless, run_cell, summarise  # noqa: E402
from specdec.protocol import DecodingMode  # noqa: E402

VALIDATION_MODES = ("cloud_only", "speculative", "spec_early_exit")
VALIDATION_TOLERANCE = 0.10  # cpu-self emulation vs the real run, median latency
FLEET_MODES = ("cloud_only", "spec_ee_adaptive")
GAMMA_MODES = ("speculative", "spec_early_exit")  # the gamma sweep (adaptive length picks its own)
QUICK_PROFILES = ["paper-go2-orin-nx-a100", "paper-text-nano-a100"]


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
    emulated_text_prompts: int  # emulated text runs are dilated (several times slower than real time)
    emulated_text_tokens: int
    fleet_robots: List[int]
    text_fleet_robots: List[int]  # text fleets run far more dilated (their drafts share one core here)
    fleet_decisions: int  # per robot per cell (text: text_fleet_decisions)
    text_fleet_decisions: int
    fleet_verifiers: List[str]  # keys of shared_cloud.VERIFIERS
    goal_seeds: int
    map_rtts_ms: List[float]  # the map of where each side wins (Go2, first profile; empty: skipped)
    map_draft_speed: List[float]  # edge compute time x this
    repeats: int = 1
    jitter_ms: float = 0.0
    bandwidth_mbps: float = 0.0
    loss: float = 0.0
    merge_first_block: bool = True  # block 0 rides with the cloud's prefill (one pass for both)
    # after a verified block the cloud decodes up to this many tokens itself; None: the robot's own
    # setting per workload (config/edge_spec_drafter.yaml: 4 for the Go2's 2-3 token actions, 0 for text)
    cloud_finish_tokens: Optional[int] = None
    # greedy speculative modes: the draft's next-best tokens per block position, verified as branches
    # (DecodeConfig.alternatives; 0, the library's default, unless --alternatives sets it)
    alternatives: int = 0
    # the verifier takes at most this many of them, the draft's likeliest
    # (VerifierSettings.max_branches; None: the server's default, unless --max-branches sets it)
    max_branches: Optional[int] = None
    # hinted modes act only on hints whose exit gives their outcome at least this probability
    # (DecodeConfig.hint_min_confidence; 0, every hint, unless --hint-min-confidence sets it)
    hint_min_confidence: float = 0.0
    workloads: List[str] = field(default_factory=lambda: ["text", "go2"])
    profiles: Optional[List[str]] = None  # None: every device profile in profiles/ (quick: the paper's)
    fleet_think_s: Optional[float] = None  # robot's pause between decisions (None: the Go2's motion time; 0: saturated)
    fleet_only: bool = False  # calibration and the shared cloud only (a separate fleet sweep)
    assisted: bool = True
    # the in-process comparison with transformers (section 5): enough tokens that prefills and a noisy
    # machine do not decide it (4 x 16 tokens moved its ratio by +-0.1 between identical runs)
    assisted_prompts: int = 8
    assisted_tokens: int = 32
    # text modes run on the emulated profiles (None: all); each costs 15-20x its real time here
    emulated_text_modes: Optional[List[str]] = None


def settings(quick: bool) -> Settings:
    if quick:
        return Settings(True, rtts_ms=[50], gammas=[], reference_rtt_ms=50, reference_gamma=4,
                        text_prompts=1, text_tokens=8, go2_frames=4, go2_tokens=8, emulated_text_prompts=1,
                        emulated_text_tokens=8, fleet_robots=[], text_fleet_robots=[], fleet_decisions=2,
                        text_fleet_decisions=2, fleet_verifiers=["serialized"],
                        goal_seeds=1, map_rtts_ms=[], map_draft_speed=[], profiles=QUICK_PROFILES, assisted=False,
                        emulated_text_modes=["cloud_only", "speculative", "spec_early_exit"])
    # sized for < 30 minutes on 2 cores (~20 minutes when nothing else runs)
    return Settings(False, rtts_ms=[0, 25, 50, 100], gammas=[2, 4, 8], reference_rtt_ms=50, reference_gamma=4,
                    text_prompts=4, text_tokens=16, go2_frames=16, go2_tokens=8, emulated_text_prompts=2,
                    emulated_text_tokens=12, fleet_robots=[1, 4, 8, 16], text_fleet_robots=[], fleet_decisions=3,
                    text_fleet_decisions=2,
                    fleet_verifiers=list(shared_cloud.DEFAULT_VERIFIERS), goal_seeds=10, map_rtts_ms=[30, 120, 300],
                    map_draft_speed=[0.1, 0.25, 1.0])


def exit_fraction(exits_path) -> float:
    """Depth of the hint's exit layer as a fraction of the target's layers (from the file's metadata)."""
    if not exits_path:
        return 1.0
    from safetensors import safe_open

    with safe_open(exits_path, framework="pt") as handle:
        meta = handle.metadata()
    return (json.loads(meta["exit_layers"])[0] + 1) / int(meta["num_layers"])


class Edge:
    """The edge side of a cell group: the draft (with or without an emulated clock) and one
    decoder per link."""

    def __init__(self, draft, clock=None):
        self.draft = draft
        self.clock = clock

    def __enter__(self):
        self.draft.use_clock(self.clock)
        return self

    def __exit__(self, *exc):
        self.draft.use_clock(None)


def decoder_for(draft, link, robot_id: str, dilation: float = 1.0):
    """An edge decoder; its wait for the cloud is dilated with the run (a dilated fleet queues long)."""
    from specdec.engine.drafter import EdgeDecoder

    return EdgeDecoder(draft, link, robot_id=robot_id, timeout_s=120 * dilation)


def warm_up(decoder, workload) -> None:
    decoder.decode(*workload.items[0], DecodingMode.SPECULATIVE, max_new_tokens=2)


def stand_in_image_tokens(shapes) -> Dict[str, int]:
    """Image tokens per frame of the stand-in pair, per side (from the calibration's prefills)."""
    return {side: max((s[2] for s in groups["prefill"]), default=0) for side, groups in shapes.items()}


def by_kind(shapes, kind: str) -> Dict[str, list]:
    return {side: kinds[kind] for side, kinds in shapes.items()}


class WorkloadBench:
    """Everything measured for one workload (see the module docstring, steps 1-4)."""

    def __init__(self, workload, cfg: Settings, cores, out_dir: str, log):
        from specdec.models.loading import freeze_loaded_objects, load_model

        self.workload = workload
        self.cfg = cfg
        self.edge_cores, self.cloud_cores = cores
        self.out_dir = out_dir
        self.log = log
        self.draft = load_model(workload.draft, name="draft")
        freeze_loaded_objects()  # as the edge node does: no full collections of the loaded objects mid-cell
        finish = cfg.cloud_finish_tokens
        if finish is None:
            finish = CLOUD_FINISH_TOKENS.get(workload.name, 0)
        self.decide = dict(merge_first_block=cfg.merge_first_block, cloud_finish_tokens=finish,
                           alternatives=cfg.alternatives, hint_min_confidence=cfg.hint_min_confidence)
        self.out = {"workload": workload.name, "description": workload.description, "items": len(workload.items),
                    "max_new_tokens": workload.max_new_tokens, "rtt_sweep": [], "gamma_sweep": [],
                    "exit_fraction": exit_fraction(workload.exits), "emulated": [], "fleet": [], "map": []}

    def server(self, profile=None, robot_ids=("bench",)):
        w = self.workload
        return cluster.cloud_server(w.target, w.exits, cores=self.cloud_cores, profile=profile, robot_ids=robot_ids,
                                    extra_args=self.verifier_flags())

    def verifier_flags(self) -> List[str]:
        return [] if self.cfg.max_branches is None else ["--max-branches", str(self.cfg.max_branches)]

    def link(self, cloud, rtt_ms: float, jitter_ms: float = 0.0, bandwidth_mbps: float = 0.0, loss: float = 0.0,
             robot_ids=None):
        return cluster.wan_link(cloud, rtt_ms / 2, jitter_ms, bandwidth_mbps, loss, cores=self.cloud_cores,
                                robot_ids=robot_ids)

    # -- 1. calibration --------------------------------------------------------------------
    def calibrate(self):
        cfg = self.cfg
        doc, self.shapes = calibrate.calibrate(self.workload, gamma=cfg.reference_gamma,
                                               steps=max(2, min(6, self.workload.max_new_tokens // 2)), log=self.log,
                                               cores={"edge": self.edge_cores, "cloud": self.cloud_cores})
        self.cpu_self_path = calibrate.write(doc, os.path.join(self.out_dir, f"cpu-self-{self.workload.name}.yaml"))
        from specdec.models.compute_profile import ProfilePair

        self.cpu_self = ProfilePair.load(self.cpu_self_path)
        self.out["calibration"] = {"profile": doc, "file": self.cpu_self_path}

    # -- 2 + 3. measured on this CPU, and the cpu-self validation ------------------------------
    def measured(self):
        cfg, w, log = self.cfg, self.workload, self.log
        with self.server() as cloud, self.server(profile=self.cpu_self_path) as cloud_self:
            # first, while the calibration is fresh (this machine's load drifts)
            self._validate(cloud, cloud_self, cfg.reference_rtt_ms)
            for rtt in cfg.rtts_ms:
                with self.link(cloud, rtt, cfg.jitter_ms, cfg.bandwidth_mbps, cfg.loss) as link:
                    decoder = decoder_for(self.draft, link, cloud.robot_id)
                    warm_up(decoder, w)
                    cells = {}
                    for mode in MODES:
                        if mode == "edge_only" and rtt != cfg.rtts_ms[0]:
                            continue  # no network involved: measured once
                        t0 = time.perf_counter()
                        cells[mode] = run_cell(decoder, w, mode, cfg.reference_gamma, **self.decide)
                        log(f"  {w.name} measured rtt={rtt:>5.0f} ms  {mode:<16} {time.perf_counter() - t0:6.1f} s")
                    check_lossless(cells, f"{w.name} rtt={rtt}")
                    for mode, results in cells.items():
                        self.out["rtt_sweep"].append({"rtt_ms": rtt, "gamma": cfg.reference_gamma, "mode": mode,
                                                      **summarise(results)})
                    if rtt == cfg.reference_rtt_ms:
                        self._gamma_sweep(decoder, cells, rtt)
            self.out["cloud_log_tail"] = open(cloud.log_path).read()[-400:]

    def _gamma_sweep(self, decoder, cells, rtt):
        cfg, w = self.cfg, self.workload
        for gamma in cfg.gammas:
            if gamma == cfg.reference_gamma:
                continue
            g_cells = {"cloud_only": cells["cloud_only"]}
            for mode in GAMMA_MODES:
                g_cells[mode] = run_cell(decoder, w, mode, gamma, **self.decide)
                self.log(f"  {w.name} measured rtt={rtt:>5.0f} ms  gamma={gamma} {mode}")
            check_lossless(g_cells, f"{w.name} gamma={gamma}")
            for mode in GAMMA_MODES:
                self.out["gamma_sweep"].append({"rtt_ms": rtt, "gamma": gamma, "mode": mode,
                                                **summarise(g_cells[mode])})
        if cfg.gammas:
            for mode in GAMMA_MODES:
                row = next(r for r in self.out["rtt_sweep"] if r["rtt_ms"] == rtt and r["mode"] == mode)
                self.out["gamma_sweep"].append({**row})

    def _validate(self, cloud, cloud_self, rtt):
        """The same decisions, alternating real and cpu-self emulated, at the reference RTT."""
        cfg, w = self.cfg, self.workload
        clock = self.edge_clock(self.cpu_self.edge)
        link = (rtt, cfg.jitter_ms, cfg.bandwidth_mbps, cfg.loss)
        with self.link(cloud, *link) as link_real, self.link(cloud_self, *link) as link_self:
            real_decoder = decoder_for(self.draft, link_real, cloud.robot_id)
            self_decoder = decoder_for(self.draft, link_self, cloud_self.robot_id)
            warm_up(real_decoder, w)
            with Edge(self.draft, clock):
                warm_up(self_decoder, w)
            watch = emulation.ClockWatch(clock, cloud_self)
            rows = []
            for mode in VALIDATION_MODES:
                real, emulated = [], []
                for item in w.items:
                    real += run_cell(real_decoder, w, mode, cfg.reference_gamma, items=[item], **self.decide)
                    with Edge(self.draft, clock):
                        emulated += run_cell(self_decoder, w, mode, cfg.reference_gamma, items=[item], **self.decide)
                check_lossless({"cloud_only": real, mode: emulated}, f"{w.name} cpu-self {mode}")
                a, b = summarise(real), summarise(emulated)
                ratio = b["latency_ms_median"] / a["latency_ms_median"] if a["latency_ms_median"] else 0.0
                validity = watch.lap()
                rows.append({"mode": mode, "rtt_ms": rtt, "real_ms_median": a["latency_ms_median"],
                             "emulated_ms_median": b["latency_ms_median"], "real_ms_p90": a["latency_ms_p90"],
                             "emulated_ms_p90": b["latency_ms_p90"], "ratio": ratio,
                             "within_tolerance": abs(ratio - 1) <= VALIDATION_TOLERANCE,
                             "overrun_fraction": validity.overrun_fraction})
                self.log(f"  {w.name} cpu-self validation {mode:<16} real {a['latency_ms_median']:.0f} ms, "
                         f"emulated {b['latency_ms_median']:.0f} ms (x{ratio:.3f})")
        self.out["validation"] = {"tolerance": VALIDATION_TOLERANCE, "rows": rows}

    @staticmethod
    def edge_clock(profile):
        from specdec.models.compute_profile import ComputeClock

        return ComputeClock(profile)

    # -- 4. emulated profiles --------------------------------------------------------------
    def emulated(self, profiles: List[emulation.BenchProfile], goal_runs=None):
        cfg, w = self.cfg, self.workload
        items = w.items
        if w.name == "text":
            items = items[:cfg.emulated_text_prompts]
        profiles = sorted(profiles, key=lambda p: (not p.name.startswith("paper-"), p.name))  # the paper's first
        for bp in profiles:
            scale = emulation.image_scale(bp, stand_in_image_tokens(self.shapes))
            device = emulation.effective(bp.pair, 1.0, scale)
            k = max(emulation.dilation(device, by_kind(self.shapes, "repeated")),
                    emulation.prefill_dilation(device, by_kind(self.shapes, "prefill")))
            emulated_w = workloads.Workload(w.name, w.draft, w.target, w.exits, items,
                                            min(w.max_new_tokens, cfg.emulated_text_tokens) if w.name == "text"
                                            else w.max_new_tokens, w.description)
            if cfg.fleet_only:
                self._fleet_of(bp, emulated_w, scale, k, goal_runs)
                continue
            pair = emulation.effective(bp.pair, k, scale)
            path = emulation.write(pair, os.path.join(self.out_dir, f"emulated-{bp.name}.yaml"))
            self.log(f"  {w.name} emulated {bp.name}: time dilation x{k:g}, link RTT {bp.rtt_ms:g} ms")
            entry = {"profile": bp.name, "title": bp.pair.title, "dilation": k, "rtt_ms": bp.rtt_ms,
                     "gpu_hour_usd": bp.pair.gpu_hour_usd, "paper": bp.paper, "file": path,
                     "edge": {"device": bp.pair.edge.device, "model": bp.pair.edge.model},
                     "cloud": {"device": bp.pair.cloud.device, "model": bp.pair.cloud.model},
                     "image_scale": scale, "rows": [],
                     "prefill_excess_ms": emulation.prefill_excess_ms(device, by_kind(self.shapes, "prefill"), k)}
            clock = self.edge_clock(pair.edge)
            link_args = (pair.link.get("rtt_ms", 0.0), pair.link.get("jitter_ms", 0.0),
                         pair.link.get("bandwidth_mbps", 0.0), pair.link.get("loss", 0.0))
            with self.server(profile=path) as cloud, self.link(cloud, *link_args) as link, Edge(self.draft, clock):
                decoder = decoder_for(self.draft, link, cloud.robot_id)
                warm_up(decoder, emulated_w)
                watch = emulation.ClockWatch(clock, cloud)
                cells = {}
                for mode in (cfg.emulated_text_modes or MODES) if w.name == "text" else MODES:
                    t0 = time.perf_counter()
                    cells[mode] = run_cell(decoder, emulated_w, mode, cfg.reference_gamma, **self.decide)
                    validity = watch.lap()
                    entry["rows"].append({"mode": mode, **summarise(cells[mode], 1 / k), "valid": validity.valid,
                                          "overruns": {"edge": validity.edge_overruns, "cloud": validity.cloud_overruns},
                                          "passes": {"edge": validity.edge_passes, "cloud": validity.cloud_passes}})
                    self.log(f"  {w.name} emulated {bp.name} {mode:<16} {time.perf_counter() - t0:6.1f} s"
                             f"{'' if validity.valid else '  INVALID (overruns)'}")
                check_lossless(cells, f"{w.name} emulated {bp.name}")
                entry["clock_summary"] = {"edge": clock.summary(), "cloud": cloud.snapshot().get("clock")}
            entry["cross_check"] = self._formula(bp, emulation.effective(bp.pair, 1.0, scale), entry["rows"],
                                                 emulated_w)
            if goal_runs is not None:
                entry["time_to_goal"] = time_to_goal.time_to_goal(goal_runs, {r["mode"]: r for r in entry["rows"]})
            self.out["emulated"].append(entry)
            if bp is profiles[0]:  # the paper's (module docstring, step 4)
                self._fleet_of(bp, emulated_w, scale, k, goal_runs)
            if w.name != "text" and cfg.map_rtts_ms and bp is profiles[0]:  # the paper's setup
                self.win_map(bp, pair, path, k, emulated_w)

    def _fleet_of(self, bp, w, scale, k, goal_runs):
        robots = self.cfg.text_fleet_robots if w.name == "text" else self.cfg.fleet_robots
        if robots:
            # text robots all decode one prompt: a batched prefill pads every row to the longest, which
            # costs this CPU what the device is not charged (and would take a far larger dilation)
            fleet_w = replace(w, items=w.items[:1]) if w.name == "text" else w
            self.fleet(bp, fleet_w, robots, scale, k, goal_runs)

    def _formula(self, bp, pair, rows, w) -> dict:
        """The static formula at the profile's RTT with the measured rates (labelled cross-check)."""
        by_mode = {r["mode"]: r for r in rows}
        prompt = max(s[0] for s in self.shapes["cloud"]["prefill"])
        image = stand_in_image_tokens(self.shapes).get("cloud", 0)
        tokens = by_mode["cloud_only"]["tokens"] / max(1, by_mode["cloud_only"]["decisions"])
        shape = dict(new_tokens=tokens, prompt_tokens=prompt, image_tokens=image, gamma=self.cfg.reference_gamma,
                     tokens_round=by_mode["spec_early_exit"]["tokens_per_round"] or 1.0,
                     hit_rate=by_mode["spec_early_exit"]["predraft_hit_rate"], exit_fraction=self.out["exit_fraction"])
        formula = projection.all_modes(pair, bp.rtt_ms, **shape)
        acceptance = {}
        for a in (0.3, 0.6, 0.9):
            s = dict(shape, tokens_round=projection.tokens_per_round(a, self.cfg.reference_gamma))
            acceptance[str(a)] = projection.all_modes(pair, bp.rtt_ms, **s)
        return {"label": "STATIC FORMULA cross-check (bench/projection.py), not a measurement",
                "latency_ms": formula, "by_acceptance": acceptance}

    def fleet(self, bp, w, robots, scale, k, goal_runs):
        """``robots`` robots (each K) on one emulated GPU, per verifier kind: cloud-only vs speculative.
        Each K runs at its own dilation (at least the single robot's ``k``): K robots' drafts take
        turns on one core here, so a large fleet needs far more than a small one."""
        cfg = self.cfg
        think_s = cfg.fleet_think_s
        if think_s is None:  # a Go2 moves for its mean motion time per decision; text decides back to back
            think_s = 0.0 if w.name == "text" else (
                time_to_goal.motion_per_decision_s(goal_runs) if goal_runs else 1.0)
        device = emulation.effective(bp.pair, 1.0, scale)
        ids = [f"robot{i:02d}" for i in range(max(robots))]
        prompt = None  # text robots all send one prompt, block 0 with it (see _fleet_of)
        if w.name == "text":
            prompt = len(self.draft.encode(*w.items[0]).input_ids) + cfg.reference_gamma + 1
        for verifier in cfg.fleet_verifiers:
            settings = shared_cloud.VERIFIERS[verifier]
            by_k: Dict[float, List[int]] = {}  # fleet sizes that share a dilation share a server
            for count in robots:
                need = emulation.fleet_dilation(device, self.cpu_self, self.shapes, count, shared_cloud.mixes(settings),
                                                prompt)
                by_k.setdefault(max(k, need), []).append(count)
            for k_count, counts in by_k.items():
                alone = [r for r in self.out["fleet"] if r["profile"] == bp.name and r["robots"] == 1
                         and r["verifier"] == "serialized"]
                if verifier != "serialized" and alone and 1 in counts:
                    # one robot's passes are batches of one under any verifier: measured once
                    self.out["fleet"] += [dict(r, verifier=verifier, same_as="serialized") for r in alone]
                    counts = [c for c in counts if c != 1]
                if not counts:
                    continue
                pair = emulation.effective(bp.pair, k_count, scale)
                path = emulation.write(pair, os.path.join(self.out_dir, f"emulated-{bp.name}-fleet-x{k_count:g}.yaml"))
                clock = self.edge_clock(pair.edge)
                link_args = (pair.link.get("rtt_ms", 0.0), pair.link.get("jitter_ms", 0.0),
                             pair.link.get("bandwidth_mbps", 0.0), pair.link.get("loss", 0.0))
                with cluster.cloud_server(w.target, w.exits, cores=self.cloud_cores, profile=path, robot_ids=ids,
                                          extra_args=shared_cloud.verifier_flags(settings, k_count)
                                          + self.verifier_flags()) as cloud, \
                        Edge(self.draft, clock):
                    for count in counts:
                        with self.link(cloud, *link_args, robot_ids=ids[:count]) as clients:
                            decoders = [decoder_for(self.draft, c, c.robot_id, k_count) for c in clients]
                            shared_cloud.warm_up(decoders, w)
                            watch = emulation.ClockWatch(clock, cloud)
                            for mode in FLEET_MODES:
                                self._fleet_cell(bp, w, verifier, count, mode, decoders, cloud, watch, think_s, k_count)

    def _fleet_cell(self, bp, w, verifier, count, mode, decoders, cloud, watch, think_s, k):
        """One shared-cloud cell: ``count`` robots deciding in ``mode``, at dilation ``k``."""
        cfg = self.cfg
        before = cloud.snapshot()["verifier"]
        decisions = cfg.text_fleet_decisions if w.name == "text" else cfg.fleet_decisions
        run = shared_cloud.run_fleet(decoders, w, mode, decisions, think_s * k,
                                     cfg.reference_gamma, seed=count, **self.decide)
        after_doc = cloud.snapshot()
        after = after_doc["verifier"]
        busy = after["compute_ms"] - before["compute_ms"]
        batches = after["batches"] - before["batches"]
        validity = watch.lap()
        per_s = k / run["wall_s"] if run["wall_s"] else 0.0  # per emulated second
        row = {"profile": bp.name, "verifier": verifier, "robots": count, "mode": mode,
               "think_s": think_s, "dilation": k, "valid": validity.valid, "errors": run["errors"],
               "overruns": {"edge": validity.edge_overruns, "cloud": validity.cloud_overruns,
                            "cloud_so_far_by_kind": (after_doc.get("clock") or {}).get("overruns_by_kind"),
                            # the server's slowest pass against its emulated time so far: what an overrun was
                            "cloud_worst_pass_so_far": (after_doc.get("clock") or {}).get("worst_pass")},
               "gpu_busy": busy / 1000 / run["wall_s"] if run["wall_s"] else 0.0,
               # sessions per batched pass (0: none ran batched - a lone cloud-only decode)
               "mean_batch": (after["batched_rows"] - before["batched_rows"]) / batches if batches else 0.0,
               # served per emulated second (demand-limited while robots move)
               "decisions_per_s": len(run["results"]) * per_s,
               # forward passes of the target (a batched pass counts once), per emulated second
               "target_passes_per_s": (after["target_forward_passes"] - before["target_forward_passes"]) * per_s,
               "tokens_per_s": sum(r.stats.new_tokens for r in run["results"]) * per_s,
               **summarise(run["results"], 1 / k),
               # each decision's latency, in order of completion: where a p90 comes from
               "latencies_ms": [round(r.stats.latency_ms / k, 1) for r in run["results"]]}
        self.out["fleet"].append(row)
        self.log(f"  {w.name} shared cloud {bp.name} {verifier} K={count:<2} x{k:<4g} {mode:<16} "
                 f"p50 {row['latency_ms_median']:.0f} ms p90 {row['latency_ms_p90']:.0f} ms "
                 f"GPU busy {row['gpu_busy']:.2f} mean batch {row['mean_batch']:.2f} ({run['wall_s']:.0f} s)"
                 f"{'' if validity.valid else '  INVALID (overruns)'}"
                 f"{'  ERRORS ' + '; '.join(run['errors'][:2]) if run['errors'] else ''}")

    def win_map(self, bp, pair, path, k, w):
        """Cloud-only vs the paper's method over link RTT x draft speed (one robot); cloud-only does
        not depend on the draft, so it runs once per RTT."""
        cfg = self.cfg
        items = w.items[:4]
        with self.server(profile=path) as cloud:
            for rtt in cfg.map_rtts_ms:
                with self.link(cloud, rtt * k) as link:
                    decoder = decoder_for(self.draft, link, cloud.robot_id)
                    watch = emulation.ClockWatch(None, cloud)
                    cloud_only = summarise(run_cell(decoder, w, "cloud_only", cfg.reference_gamma, items=items,
                                                    **self.decide), 1 / k)
                    cloud_valid = watch.lap().valid
                    for speed in cfg.map_draft_speed:
                        clock = self.edge_clock(emulation.scaled_edge(pair, speed).edge)
                        with Edge(self.draft, clock):
                            watch = emulation.ClockWatch(clock, cloud)
                            spec = summarise(run_cell(decoder, w, "spec_early_exit", cfg.reference_gamma,
                                                      items=items, **self.decide), 1 / k)
                            valid = watch.lap().valid and cloud_valid
                        row = {"profile": bp.name, "rtt_ms": rtt, "draft_speed": speed, "valid": valid,
                               "cloud_only_ms": cloud_only["latency_ms_median"],
                               "spec_early_exit_ms": spec["latency_ms_median"]}
                        row["ratio"] = row["spec_early_exit_ms"] / row["cloud_only_ms"] if row["cloud_only_ms"] else 0
                        self.out["map"].append(row)
                        self.log(f"  {w.name} map {bp.name} RTT {rtt:g} ms draft x{speed:g}: spec/cloud "
                                 f"{row['ratio']:.2f}")


def hardware(cores) -> dict:
    edge_cores, cloud_cores = cores
    cpu = calibrate.processor_name()
    return {"machine": platform.machine(), "processor": cpu, "cpus": os.cpu_count(),
            "edge_cores": sorted(edge_cores or []), "cloud_cores": sorted(cloud_cores or []),
            "torch": torch.__version__,
            "regime": f"measured on {cpu}: edge and cloud each one core, fp32, 1 torch thread"}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke-run settings (under 3 minutes)")
    parser.add_argument("--out", default=os.path.join(ROOT, "results", "bench"))
    parser.add_argument("--workloads", nargs="+", choices=["text", "go2", "tiny"],
                        help="default: text and go2, skipping one whose models are not built")
    parser.add_argument("--profiles", nargs="*", help="device profiles to emulate (names in --profiles-dir; default: "
                                                      "all; none: measured on this CPU only)")
    parser.add_argument("--profiles-dir", default=emulation.PROFILES_DIR)
    parser.add_argument("--rtts", nargs="+", type=float, help="override the RTT sweep (ms)")
    parser.add_argument("--jitter-ms", type=float, default=0.0)
    parser.add_argument("--bandwidth-mbps", type=float, default=0.0)
    parser.add_argument("--loss", type=float, default=0.0)
    parser.add_argument("--fleet", nargs="*", type=int, help="robots per shared GPU, both workloads (default per settings; none: skip)")
    parser.add_argument("--fleet-verifiers", nargs="+", choices=list(shared_cloud.VERIFIERS),
                        help="verifier settings the shared cloud runs (default: serialized and batched)")
    parser.add_argument("--fleet-only", action="store_true",
                        help="calibrate, then only the shared cloud of each profile (no sweeps, no headline)")
    parser.add_argument("--fleet-decisions", type=int, default=None, help="decisions per robot per shared-cloud cell")
    parser.add_argument("--fleet-think-s", type=float, default=None,
                        help="seconds a robot waits between decisions in the shared cloud (default: the Go2's mean "
                             "motion time per decision; 0: back to back, the verifier's capacity)")
    parser.add_argument("--no-merge-first-block", action="store_true",
                        help="the cloud prefills at once instead of waiting for block 0")
    parser.add_argument("--cloud-finish-tokens", type=int, default=None,
                        help="speculative modes: the cloud decodes up to this many tokens itself after a verified "
                             "block (short answers end in one round trip); default: go2 4, text 0")
    parser.add_argument("--alternatives", type=int, default=0,
                        help="greedy speculative modes send the draft's next-best N tokens per position, verified as "
                             "branches of the same pass (DecodeConfig.alternatives; default 0)")
    parser.add_argument("--max-branches", type=int, default=None,
                        help="the verifier takes at most this many alternatives as branches, those the draft's "
                             "probabilities rank likeliest (VerifierSettings.max_branches; 1: one branch a block)")
    parser.add_argument("--hint-min-confidence", type=float, default=0.0,
                        help="hinted modes pre-draft only on hints whose exit gives their outcome at least this "
                             "probability (DecodeConfig.hint_min_confidence; default 0: every hint)")
    parser.add_argument("--text-draft", choices=("feature", "distilled"), default="feature",
                        help="the text pair's edge draft in sections 1-4: the one conditioned on the target's states "
                             "(every result then carries them; 2.09 tokens per round at gamma 4) or the distilled "
                             "4-layer draft (1.42); section 5 runs both")
    parser.add_argument("--skip-assisted", action="store_true", help="(quick settings skip it anyway)")
    parser.add_argument("--assisted-only", action="store_true",
                        help="only section 5: transformers' assisted generation vs our engine, text pair in process")
    args = parser.parse_args(argv)
    # a kill (SIGTERM) unwinds like Ctrl-C, so the servers and link emulators this run started stop too
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    cfg = settings(args.quick)
    cfg.workloads = args.workloads or ["text", "go2"]
    if args.rtts:
        cfg.rtts_ms = args.rtts
        cfg.reference_rtt_ms = args.rtts[min(len(args.rtts) - 1, len(args.rtts) // 2)]
    cfg.jitter_ms, cfg.bandwidth_mbps, cfg.loss = args.jitter_ms, args.bandwidth_mbps, args.loss
    if args.profiles is not None:
        cfg.profiles = args.profiles
    if args.fleet is not None:
        cfg.fleet_robots = cfg.text_fleet_robots = args.fleet
    cfg.fleet_think_s = args.fleet_think_s
    cfg.fleet_only = args.fleet_only
    if args.fleet_decisions:
        cfg.fleet_decisions = cfg.text_fleet_decisions = args.fleet_decisions
    if args.fleet_verifiers:
        cfg.fleet_verifiers = args.fleet_verifiers
    cfg.merge_first_block = not args.no_merge_first_block
    cfg.cloud_finish_tokens = args.cloud_finish_tokens
    cfg.alternatives = args.alternatives
    cfg.max_branches = args.max_branches
    cfg.hint_min_confidence = args.hint_min_confidence
    os.makedirs(args.out, exist_ok=True)
    started = time.perf_counter()

    def log(msg):
        print(f"[bench {time.perf_counter() - started:6.1f}s] {msg}", flush=True)

    try:
        profiles = emulation.device_profiles(cfg.profiles, args.profiles_dir) if cfg.profiles != [] else []
    except ValueError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    cores = cluster.core_split()
    cluster.pin_self(cores[0])
    torch.set_num_threads(1)
    report = {"settings": vars(cfg), "hardware": hardware(cores), "workloads": [], "skipped": {},
              "profiles": [p.name for p in profiles]}
    sizes = {"text": (cfg.text_prompts, cfg.text_tokens), "go2": (cfg.go2_frames, cfg.go2_tokens),
             "tiny": (cfg.go2_frames, cfg.go2_tokens)}
    if args.assisted_only:
        cfg.workloads, cfg.assisted = ["text"], True
    for name in list(cfg.workloads) if not args.assisted_only else []:
        try:
            workload = workloads.build(name, *sizes[name])
            if name == "text" and args.text_draft == "feature":
                workload = workloads.with_feature_draft(workload)
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
        bench = WorkloadBench(workload, cfg, cores, args.out, log)
        bench.calibrate()
        goal_runs = None
        if not cfg.fleet_only:
            bench.measured()
        if name != "text" and cfg.goal_seeds and not cfg.fleet_only:
            from specdec.models.loading import load_model
            from specdec.models.prompting import folder_prompt_template

            goal_runs = time_to_goal.episodes(bench.draft, load_model(workload.target, name="target"),
                                              time_to_goal.seeds(cfg.goal_seeds), workload.max_new_tokens,
                                              template=folder_prompt_template(workload.target))
            bench.out["closed_loop"] = time_to_goal.summary(goal_runs)
            ref = {r["mode"]: r for r in bench.out["rtt_sweep"] if r["rtt_ms"] == cfg.reference_rtt_ms}
            ref.setdefault("edge_only", next((r for r in bench.out["rtt_sweep"] if r["mode"] == "edge_only"), None))
            bench.out["time_to_goal"] = time_to_goal.time_to_goal(goal_runs, {m: r for m, r in ref.items() if r})
            log(f"  {name} closed loop: {bench.out['closed_loop']}")
        bench.emulated([p for p in profiles if p.applies_to(name)], goal_runs)
        report["workloads"].append(bench.out)
    if cfg.assisted and not args.skip_assisted and not cfg.fleet_only and "text" in cfg.workloads:
        from bench import assisted

        cluster.pin_self(set().union(cores[0] or set(), cores[1] or set()) or None)
        report["assisted"] = assisted.compare(workloads.build("text", cfg.assisted_prompts, cfg.assisted_tokens),
                                              gamma=cfg.reference_gamma, log=log)
    from bench import report as report_mod

    report["elapsed_s"] = time.perf_counter() - started
    with open(os.path.join(args.out, "results.json"), "w") as handle:
        json.dump(report, handle, indent=2, default=str)
    markdown = report_mod.write(report, args.out)
    print(markdown)
    log(f"done in {report['elapsed_s']:.0f} s -> {args.out}")
    invalid = report_mod.failed_validations(report)
    if invalid:
        log(f"cpu-self validation outside {VALIDATION_TOLERANCE:.0%}: {invalid}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
