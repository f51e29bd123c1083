"""Closed-loop evaluation of the Go2 VLM pair (expert, target, draft, speculative decoding)."""

from __future__ import annotations

import hashlib
import json
from typing import Dict, List, Optional, Sequence

import torch

# The engine is imported with the module, not when an evaluation starts: a long training run then
# uses the engine as it was when the run began, whatever changes in the tree meanwhile.
from specdec.engine.local import LocalSpeculativeDecoder
from specdec.engine.sampling import SamplingParams
from specdec.engine.token_loop import TokenLoop, TokenPicker
from specdec.models.artefacts import go2_pair_paths
from specdec.protocol import DecodingMode
from go2_sim.expert import search_turn

from .pair import bgr_to_rgb, load_pair, load_prompt_template, read_json


def eval_up_to_date(out_dir: Optional[str] = None) -> bool:
    """The pair's evaluation report is of its current weights."""
    paths = go2_pair_paths(out_dir)
    train = read_json(paths.train_report) or {}
    report = read_json(paths.eval_report) or {}
    return bool(train) and report.get("weights") == train.get("fingerprints")


EVAL_SEEDS = tuple(range(50))
# Recipes are chosen on these (disjoint from EVAL_SEEDS; training rollouts draw their episode
# seeds at random from [0, 2^31)), so the evaluation seeds stay an unbiased measurement.
VALIDATION_SEEDS = tuple(range(1000, 1100))
BENCH_FRAMES = 200  # held-out benchmark frames (bench.workloads.go2_workload) for the acceptance bar


@torch.no_grad()
def greedy_decode(adapter, prompt: str, image, max_new_tokens: int = 8, exit_heads=None,
                  exit_stats: Optional[Dict[int, List[int]]] = None) -> List[int]:
    """The model alone, greedy, token by token (the engine's :class:`TokenLoop`, the reference the
    speculative output must equal). With ``exit_heads``, counts per exit layer how often the exit's
    top-1 equals the final layer's at every generated position (``exit_stats[layer] = [agree, total]``)."""
    state = adapter.prefill(adapter.encode(prompt, image))
    loop = TokenLoop(adapter, state, [], limit=max_new_tokens, picker=TokenPicker("greedy", SamplingParams()),
                     stop=frozenset(adapter.eos_token_ids))
    exit_top: Dict[int, int] = {}
    handle = None
    if exit_heads is not None:
        handle = exit_heads.attach(lambda layer, logits: exit_top.__setitem__(layer, int(logits[0, -1].argmax())))
    try:
        while not loop.finished:
            exit_top.clear()
            loop.step()
            if exit_stats is not None:
                for layer, top in exit_top.items():
                    agree_total = exit_stats.setdefault(layer, [0, 0])
                    agree_total[0] += int(top == loop.tokens[-1])
                    agree_total[1] += 1
    finally:
        if handle is not None:
            handle.remove()
    return loop.tokens


def greedy_policy(adapter, max_new_tokens: int = 8, template: str = ""):
    """``env -> action text``: ``adapter`` alone, greedy, on the episode's current frame (the
    prompt: ``template`` around the instruction, specdec.models.prompting)."""
    def policy(env) -> str:
        image = bgr_to_rgb(env.render())
        return adapter.decode_text(greedy_decode(adapter, env.prompt(template), image, max_new_tokens))

    return policy


class SpeculativeTally:
    """Sums the engine's statistics (:class:`specdec.engine.stats.DecisionStats`) over decisions.

    ``acceptance_rate`` is the engine's: drafted tokens the target agreed with / drafted tokens (a
    drafted end token the target agrees with counts, :attr:`RoundStats.kept`).

    ``hint_accuracy`` is the engine's (the first hint of every round named the exact result);
    ``open_hint_accuracy`` counts only rounds that were followed by another round - the ones whose
    hint can save a drafting pass (a decision's last round ends it, nothing is pre-drafted).
    """

    FIELDS = ("decisions", "drafted", "accepted", "rounds", "tokens", "hints", "hints_correct",
              "open_hints", "open_hints_correct", "predrafts", "predraft_hits", "lossless_mismatches")

    def __init__(self):
        self.counts = dict.fromkeys(self.FIELDS, 0)

    def add(self, stats, lossless: bool = True) -> None:
        c = self.counts
        c["decisions"] += 1
        c["drafted"] += stats.drafted_tokens
        c["accepted"] += stats.accepted_tokens
        c["rounds"] += stats.rounds
        c["tokens"] += stats.new_tokens
        c["hints"] += stats.hints
        c["hints_correct"] += stats.hints_correct
        c["predrafts"] += stats.predrafts
        c["predraft_hits"] += stats.predraft_hits
        c["lossless_mismatches"] += int(not lossless)
        for rs in stats.round_log[:-1]:
            c["open_hints"] += int(rs.hint)
            c["open_hints_correct"] += int(rs.hint and rs.hint_correct)

    def summary(self) -> dict:
        c = self.counts
        return {"acceptance_rate": round(c["accepted"] / max(1, c["drafted"]), 4),
                "tokens_per_round": round(c["tokens"] / max(1, c["rounds"]), 3),
                "hint_accuracy": round(c["hints_correct"] / max(1, c["hints"]), 4),
                "open_hint_accuracy": round(c["open_hints_correct"] / max(1, c["open_hints"]), 4),
                "predraft_hit_rate": round(c["predraft_hits"] / max(1, c["predrafts"]), 4), **c}


def bench_frames(n_frames: int, template: str = "") -> list:
    """``(prompt, RGB image)`` of the benchmark's Go2 workload (expert rollouts on seeds no
    training run draws): the held-out frames the acceptance bar is measured on."""
    from bench.workloads import go2_workload

    return go2_workload(n_frames, max_new_tokens=8, template=template).items


@torch.no_grad()
def evaluate_frames(draft, target, heads, items: Sequence[tuple], gamma: int = 4, progress: bool = True) -> dict:
    """Speculative decoding (early-exit hints, pre-drafting) on fixed ``(instruction, image)``
    items, each checked against the target alone, and the draft alone: how often its whole
    greedy answer is the target's (``draft_alone_agreement``)."""
    from tqdm import tqdm

    tally, same = SpeculativeTally(), 0
    with LocalSpeculativeDecoder(draft, target, exit_heads=heads, gamma=gamma, max_new_tokens=8,
                                 draft_length="fixed") as runner:
        for instruction, image in tqdm(items, desc="eval frames", disable=not progress, leave=False):
            reference = greedy_decode(target, instruction, image)
            result = runner.generate(instruction, image, DecodingMode.SPECULATIVE_EARLY_EXIT)
            tally.add(result.stats, list(result.tokens) == reference)
            same += int(greedy_decode(draft, instruction, image) == reference)
    from training.costs import cost_ratio

    return {"frames": len(items), "gamma": gamma, "draft_alone_agreement": round(same / max(1, len(items)), 4),
            "per_token_cost": cost_ratio(draft, target, *items[0]) if items else None, **tally.summary()}


SEARCH_TURN = search_turn()
FAILURE_KINDS = ("said done elsewhere", "never found", "back-and-forth", "at the object, no done", "other")


def failure_kind(result) -> str:
    """What went wrong in a failed episode (a :class:`go2_sim.closed_loop.EpisodeResult`), from its
    end state and its actions: ``done`` said away from the object (usually at its same-colour
    twin); still searching at the end (the search turn in most of the last ten decisions); turning
    or strafing back and forth (at least four reversals in the last eight decisions, as in front of
    an obstacle); at the object but never saying ``done``; anything else."""
    last = result.actions[-10:]
    if result.said_done:
        return "said done elsewhere"
    if result.reached:
        return "at the object, no done"
    if sum(a == SEARCH_TURN for a in last) >= 6:
        return "never found"
    opposite = {"left": "right", "right": "left", "strafe_left": "strafe_right", "strafe_right": "strafe_left"}
    verbs = [a.split(" ")[0] for a in result.actions[-8:]]
    reversals = sum(opposite.get(a) == b for a, b in zip(verbs, verbs[1:]))
    return "back-and-forth" if reversals >= 4 else "other"


def _summary(res: dict) -> dict:
    results = res["results"]
    failed = [failure_kind(r) for r in results if not r.success]
    return {"episodes": res["episodes"], "success_rate": res["success_rate"], "reached_rate": res["reached_rate"],
            "mean_decisions": round(res["mean_decisions"], 2),
            "invalid_actions": sum(r.invalid for r in results),
            "said_done_elsewhere": sum(r.said_done and not r.success for r in results),
            "failure_kinds": {kind: failed.count(kind) for kind in FAILURE_KINDS},
            "successes": [r.seed for r in results if r.success],
            # what went wrong, episode by episode: where the robot ended and its last actions
            "failures": [{"seed": r.seed, "said_done": r.said_done, "decisions": r.decisions,
                          "final_distance_m": round(r.final_distance, 2),
                          "final_bearing_deg": round(r.final_bearing_deg, 1), "last_actions": r.actions[-6:],
                          "blocked_decisions": r.blocked_decisions}
                         for r in results if not r.success],
            "wall_s": round(res["wall_s"], 1)}


def closed_loop(policy, seeds: Sequence[int], name: str, max_decisions: int = 40, progress: bool = True,
                log=print):
    """``policy`` drives the simulated Go2 on ``seeds``: (the closed loop's result, its summary)."""
    from tqdm import tqdm

    from go2_sim.closed_loop import evaluate

    seeds = list(seeds)
    bar = tqdm(total=len(seeds), desc=f"eval {name}", disable=not progress, leave=False)

    def on_decision(env, text):
        if env.seed != getattr(on_decision, "seed", None):
            on_decision.seed = env.seed
            bar.update(1)

    res = evaluate(policy, seeds, max_decisions=max_decisions, on_decision=on_decision)
    bar.close()
    summary = _summary(res)
    log(f"go2 eval {name}: success {summary['success_rate']:.2f} ({summary['wall_s']} s)")
    return res, summary


def evaluate_pair(out_dir: Optional[str] = None, seeds: Sequence[int] = EVAL_SEEDS, gamma: int = 4,
                  max_decisions: int = 40, threads: int = 2, progress: bool = True, log=print,
                  include_expert: bool = True, validation_seeds: Sequence[int] = (),
                  bench_frame_count: int = 0) -> dict:
    """Closed loop on seeded episodes: expert, target alone, draft alone, speculative decoding;
    the target alone on ``validation_seeds`` (``target_validation``), the seeds recipes are
    chosen on; and :func:`evaluate_frames` on ``bench_frame_count`` benchmark frames.

    Speculative decoding runs with the exit heads (early-exit hints + pre-drafting) and, at every
    decision, is also checked against the target alone on the same frame (lossless check).
    """
    from go2_sim.expert import expert_policy

    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        draft, target, heads = load_pair(out_dir)
        template = load_prompt_template(out_dir)
        seeds = list(seeds)
        report: Dict[str, object] = {"seeds": [seeds[0], seeds[-1]] if seeds else [], "episodes": len(seeds),
                                     "gamma": gamma, "max_decisions": max_decisions}

        def run(name, policy):
            return closed_loop(policy, seeds, name, max_decisions, progress, log)

        if include_expert:
            report["expert"] = run("expert", expert_policy)[1]

        exit_stats: Dict[int, List[int]] = {}
        # the target's tokens per (instruction, frame): the speculative run's lossless reference
        # wherever it sees the same frame (it does, while both follow the same trajectory)
        target_tokens: Dict[tuple, List[int]] = {}

        def frame_key(env, image) -> tuple:
            return env.prompt(template), hashlib.sha1(image.tobytes()).hexdigest()

        def target_policy(env):
            image = bgr_to_rgb(env.render())
            toks = greedy_decode(target, env.prompt(template), image, exit_heads=heads, exit_stats=exit_stats)
            target_tokens[frame_key(env, image)] = toks
            return target.decode_text(toks)

        target_res, report["target"] = run("target", target_policy)
        report["exit_agreement"] = {str(layer): round(a / max(1, n), 4) for layer, (a, n) in sorted(exit_stats.items())}
        report["exit_positions"] = {str(layer): n for layer, (a, n) in sorted(exit_stats.items())}

        if validation_seeds:
            val = list(validation_seeds)
            report["target_validation"] = closed_loop(greedy_policy(target, template=template), val, "target (validation)",
                                                      max_decisions, progress, log)[1]
            report["target_validation"]["seeds"] = [val[0], val[-1]]
        report["draft"] = run("draft", greedy_policy(draft, template=template))[1]

        tally, reference_decodes = SpeculativeTally(), 0
        with LocalSpeculativeDecoder(draft, target, exit_heads=heads, gamma=gamma, max_new_tokens=8,
                                     draft_length="fixed") as runner:
    
            def spec_policy(env):
                nonlocal reference_decodes
                image = bgr_to_rgb(env.render())
                result = runner.generate(env.prompt(template), image, DecodingMode.SPECULATIVE_EARLY_EXIT)
                reference = target_tokens.get(frame_key(env, image))
                if reference is None:
                    reference = greedy_decode(target, env.prompt(template), image)
                    reference_decodes += 1
                tally.add(result.stats, list(result.tokens) == reference)
                return result.text

            spec_res, report["speculative"] = run("speculative", spec_policy)
        same = all(a.actions == b.actions and a.success == b.success
                   for a, b in zip(target_res["results"], spec_res["results"]))
        report["speculative"].update(reference_decodes=reference_decodes, same_outcomes_as_target=same,
                                     **tally.summary())
        if bench_frame_count:
            report["bench_frames"] = evaluate_frames(draft, target, heads, bench_frames(bench_frame_count, template),
                                                     gamma, progress)
            log(f"go2 eval bench frames: acceptance {report['bench_frames']['acceptance_rate']:.3f}")
        return report
    finally:
        torch.set_num_threads(old_threads)


def evaluate_and_save(out_dir: Optional[str] = None, episodes: int = len(EVAL_SEEDS), path: Optional[str] = None,
                      log=print) -> dict:
    """:func:`evaluate_pair` on seeds 0..episodes-1, written to ``path`` (default: the eval report)
    with the fingerprints of the weights it evaluated."""
    report = evaluate_pair(out_dir, seeds=range(episodes), log=log, validation_seeds=VALIDATION_SEEDS,
                           bench_frame_count=BENCH_FRAMES)
    paths = go2_pair_paths(out_dir)
    report["weights"] = (read_json(paths.train_report) or {}).get("fingerprints")
    with open(path or paths.eval_report, "w") as f:
        json.dump(report, f, indent=2, sort_keys=True)
        f.write("\n")
    return report


