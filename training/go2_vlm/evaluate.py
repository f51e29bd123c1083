"""Closed-loop evaluation of the Go2 VLM pair (expert, target, draft, speculative decoding)."""

from __future__ import annotations

import hashlib
import json
from typing import Dict, List, Optional, Sequence

import torch

from specdec.models.artefacts import go2_pair_paths

from .pair import bgr_to_rgb, load_pair, read_json


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


@torch.no_grad()
def greedy_decode(adapter, prompt: str, image, max_new_tokens: int = 8, exit_heads=None,
                  exit_stats: Optional[Dict[int, List[int]]] = None) -> List[int]:
    """The model alone, greedy, token by token through its adapter (the reference the speculative
    output must equal). With ``exit_heads``, counts per exit layer how often the exit's top-1
    equals the final layer's at every generated position (``exit_stats[layer] = [agree, total]``)."""
    state = adapter.prefill(adapter.encode(prompt, image))
    pending = [state.prompt_ids[-1]]
    stop = set(adapter.eos_token_ids)
    out: List[int] = []
    exit_top: Dict[int, int] = {}
    handle = None
    if exit_heads is not None:
        handle = exit_heads.attach(lambda layer, logits: exit_top.__setitem__(layer, int(logits[0, -1].argmax())))
    try:
        for _ in range(max_new_tokens):
            exit_top.clear()
            token = int(adapter.forward(state, pending, keep=1)[-1].argmax())
            if exit_stats is not None:
                for layer, top in exit_top.items():
                    agree_total = exit_stats.setdefault(layer, [0, 0])
                    agree_total[0] += int(top == token)
                    agree_total[1] += 1
            out.append(token)
            if token in stop:
                break
            pending = [token]
    finally:
        if handle is not None:
            handle.remove()
    return out


def greedy_policy(adapter, max_new_tokens: int = 8):
    """``env -> action text``: ``adapter`` alone, greedy, on the episode's current frame."""
    def policy(env) -> str:
        return adapter.decode_text(greedy_decode(adapter, env.instruction, bgr_to_rgb(env.render()),
                                                 max_new_tokens))

    return policy


def _summary(res: dict) -> dict:
    results = res["results"]
    return {"episodes": res["episodes"], "success_rate": res["success_rate"], "reached_rate": res["reached_rate"],
            "mean_decisions": round(res["mean_decisions"], 2),
            "invalid_actions": sum(r.invalid for r in results),
            "said_done_elsewhere": sum(r.said_done and not r.success for r in results),
            "successes": [r.seed for r in results if r.success],
            # what went wrong, episode by episode: where the robot ended and its last actions
            "failures": [{"seed": r.seed, "said_done": r.said_done, "decisions": r.decisions,
                          "final_distance_m": round(r.final_distance, 2),
                          "final_bearing_deg": round(r.final_bearing_deg, 1), "last_actions": r.actions[-6:]}
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
                  include_expert: bool = True, validation_seeds: Sequence[int] = ()) -> dict:
    """Closed loop on seeded episodes: expert, target alone, draft alone, speculative decoding;
    and the target alone on ``validation_seeds`` (``target_validation``), the seeds recipes are
    chosen on.

    Speculative decoding runs with the exit heads (early-exit hints + pre-drafting) and, at every
    decision, is also checked against the target alone on the same frame (lossless check).
    """
    from specdec.engine.local import LocalSpeculativeDecoder
    from specdec.protocol import DecodingMode

    from go2_sim.expert import expert_policy

    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        draft, target, heads = load_pair(out_dir)
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
            return env.instruction, hashlib.sha1(image.tobytes()).hexdigest()

        def target_policy(env):
            image = bgr_to_rgb(env.render())
            toks = greedy_decode(target, env.instruction, image, exit_heads=heads, exit_stats=exit_stats)
            target_tokens[frame_key(env, image)] = toks
            return target.decode_text(toks)

        target_res, report["target"] = run("target", target_policy)
        report["exit_agreement"] = {str(layer): round(a / max(1, n), 4) for layer, (a, n) in sorted(exit_stats.items())}
        report["exit_positions"] = {str(layer): n for layer, (a, n) in sorted(exit_stats.items())}

        if validation_seeds:
            val = list(validation_seeds)
            report["target_validation"] = closed_loop(greedy_policy(target), val, "target (validation)",
                                                      max_decisions, progress, log)[1]
            report["target_validation"]["seeds"] = [val[0], val[-1]]
        report["draft"] = run("draft", greedy_policy(draft))[1]

        spec = {"drafted": 0, "accepted": 0, "rounds": 0, "tokens": 0, "hints": 0, "hints_correct": 0,
                "decisions": 0, "mismatches": 0, "reference_decodes": 0}
        with LocalSpeculativeDecoder(draft, target, exit_heads=heads, gamma=gamma, max_new_tokens=8) as runner:
            def spec_policy(env):
                image = bgr_to_rgb(env.render())
                result = runner.generate(env.instruction, image, DecodingMode.SPECULATIVE_EARLY_EXIT)
                st = result.stats
                spec["drafted"] += st.drafted_tokens
                spec["accepted"] += st.accepted_tokens
                spec["rounds"] += st.rounds
                spec["tokens"] += st.new_tokens
                spec["hints"] += st.hints
                spec["hints_correct"] += st.hints_correct
                spec["decisions"] += 1
                reference = target_tokens.get(frame_key(env, image))
                if reference is None:
                    reference = greedy_decode(target, env.instruction, image)
                    spec["reference_decodes"] += 1
                if list(result.tokens) != reference:
                    spec["mismatches"] += 1
                return result.text

            spec_res, report["speculative"] = run("speculative", spec_policy)
        same = all(a.actions == b.actions and a.success == b.success
                   for a, b in zip(target_res["results"], spec_res["results"]))
        report["speculative"].update(
            acceptance_rate=round(spec["accepted"] / max(1, spec["drafted"]), 4),
            tokens_per_round=round(spec["tokens"] / max(1, spec["rounds"]), 3),
            hint_accuracy=round(spec["hints_correct"] / max(1, spec["hints"]), 4),
            decisions=spec["decisions"], lossless_mismatches=spec["mismatches"],
            reference_decodes=spec["reference_decodes"],
            same_outcomes_as_target=same, **{k: spec[k] for k in ("drafted", "accepted", "rounds")})
        return report
    finally:
        torch.set_num_threads(old_threads)


def evaluate_and_save(out_dir: Optional[str] = None, episodes: int = len(EVAL_SEEDS), path: Optional[str] = None,
                      log=print) -> dict:
    """:func:`evaluate_pair` on seeds 0..episodes-1, written to ``path`` (default: the eval report)
    with the fingerprints of the weights it evaluated."""
    report = evaluate_pair(out_dir, seeds=range(episodes), log=log, validation_seeds=VALIDATION_SEEDS)
    paths = go2_pair_paths(out_dir)
    report["weights"] = (read_json(paths.train_report) or {}).get("fingerprints")
    with open(path or paths.eval_report, "w") as f:
        json.dump(report, f, indent=2, sort_keys=True)
        f.write("\n")
    return report


