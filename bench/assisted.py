"""Reference point outside the project: transformers' assisted generation vs our engine.

Same draft/target pair, same prompts, no network, one process, one torch thread per side:

* ``target_alone``: ``target.generate()``;
* transformers' ``generate(assistant_model=draft)`` in every setting worth trying - a constant
  (gamma, 2 or 1 tokens) or the heuristic block schedule, with its confidence stop
  (``assistant_confidence_threshold``, 0.4 by default) on and off - the best of them is "HF at
  its best setting";
* our engine in process (edge and cloud threads over the in-process transport): fixed blocks, the
  confidence stop, the adaptive length, and adaptive with eager pre-drafting (drafting on the
  second core while the target verifies) - with the same draft as transformers, and with the
  draft conditioned on the target's states (``ours_feature_*``, when the workload has one).

Every output must be the target's greedy output. Besides tokens per second it reports our
*non-model time per round*: latency minus the model work that cannot overlap (edge prefill or the
cloud's, whichever is longer, draft steps, verification passes) - thread hand-offs, messages,
bookkeeping. The same models (and kernel layout, :mod:`specdec.models.kernels`) serve every row.
"""

from __future__ import annotations

import copy
import time
from typing import Callable, Dict, List, Tuple

import torch

HF_SETTINGS = {  # name -> (block schedule, assistant_confidence_threshold, assistant tokens: None = gamma)
    "hf_constant": ("constant", 0.0, None),
    "hf_constant_conf0.4": ("constant", 0.4, None),
    "hf_constant2_conf0.4": ("constant", 0.4, 2),
    "hf_constant1": ("constant", 0.0, 1),
    "hf_heuristic": ("heuristic", 0.0, None),
    "hf_heuristic_conf0.4": ("heuristic", 0.4, None),
}
ONE_BRANCH = {"max_branches": 1}  # VerifierSettings: the block's likeliest alternative only (choose_branches)
# name -> (LocalSpeculativeDecoder settings: the edge's, and verifier_kwargs for the cloud's;
#          decoding mode name; draft: the pair's "draft" or its "feature" draft)
OURS = {
    "ours_fixed": (dict(draft_length="fixed"), "SPECULATIVE", "draft"),
    "ours_confidence": (dict(draft_length="confidence", confidence_threshold=0.4), "SPECULATIVE", "draft"),
    "ours_adaptive": (dict(draft_length="adaptive"), "SPECULATIVE", "draft"),
    "ours_adaptive_eager": (dict(draft_length="adaptive", predraft_policy="eager"), "SPECULATIVE_EARLY_EXIT", "draft"),
    # the draft conditioned on the target's states (specdec.models.feature_draft): transformers'
    # assisted generation has no way to feed an assistant the target's states, so HF rows use "draft"
    "ours_feature_fixed": (dict(draft_length="fixed"), "SPECULATIVE", "feature"),
    "ours_feature_adaptive": (dict(draft_length="adaptive"), "SPECULATIVE", "feature"),
    # the draft's next-best token at each position verified as a branch of the same pass
    "ours_feature_1_alt1": (dict(draft_length="fixed", gamma=1, alternatives=1), "SPECULATIVE", "feature"),
    "ours_feature_2_alt1": (dict(draft_length="fixed", gamma=2, alternatives=1), "SPECULATIVE", "feature"),
    "ours_feature_fixed_alt1": (dict(draft_length="fixed", alternatives=1), "SPECULATIVE", "feature"),  # gamma 4
    "ours_feature_adaptive_alt1": (dict(draft_length="adaptive", alternatives=1), "SPECULATIVE", "feature"),
    # the same, the verifier taking one branch a block (a pass of gamma + 2 rows, not 2 gamma + 1)
    "ours_feature_fixed_alt1_b1": (dict(draft_length="fixed", alternatives=1, verifier_kwargs=ONE_BRANCH),
                                   "SPECULATIVE", "feature"),
    "ours_feature_adaptive_alt1_b1": (dict(draft_length="adaptive", alternatives=1, verifier_kwargs=ONE_BRANCH),
                                      "SPECULATIVE", "feature"),
}
# Every row of ours verifies block 0 in the target's prefill pass, as transformers' assisted generation
# does (its first target pass is the prompt and the first candidates) and as the robot runs.
OURS_COMMON = dict(merge_first_block=True)
# Both drafts store their weights bfloat16 (specdec.models.kernels.use_bf16_weights), for transformers'
# rows as for ours: what an edge runs, and a draft's weights never change the output.
DRAFT_QUANTIZATION = "bf16"


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def _non_model_ms(stats) -> float:
    """Latency not spent in model passes that cannot overlap (the edge's and the cloud's prefills run
    side by side), per round."""
    cloud_prefill = max(0.0, stats.cloud_compute_ms - stats.verify_ms)
    model = max(stats.prefill_ms, cloud_prefill) + stats.draft_ms + stats.verify_ms
    return max(0.0, stats.latency_ms - model) / max(stats.rounds, 1)


def compare(workload, gamma: int = 4, log: Callable[[str], None] = print) -> Dict[str, object]:
    from specdec.engine.local import LocalSpeculativeDecoder
    from specdec.models.loading import load_model
    from specdec.protocol import DecodingMode

    torch.set_num_threads(1)
    drafts = {"draft": load_model(workload.draft, name="draft", quantization=DRAFT_QUANTIZATION)}
    if workload.feature_draft:
        drafts["feature"] = load_model(workload.feature_draft, name="feature-draft", quantization=DRAFT_QUANTIZATION)
    ours = {name: spec for name, spec in OURS.items() if spec[2] in drafts}
    draft = drafts["draft"]
    target = load_model(workload.target, name="target")
    n_new = workload.max_new_tokens
    rows: Dict[str, List[Tuple[int, float]]] = {name: [] for name in ["target_alone", *HF_SETTINGS, *ours]}
    overhead: Dict[str, List[float]] = {name: [] for name in ours}
    tokens_per_round: Dict[str, List[float]] = {name: [] for name in ours}
    mismatches = []
    pad = target.tokenizer.pad_token_id if target.tokenizer.pad_token_id is not None else target.eos_token_ids[0]
    runners = {name: LocalSpeculativeDecoder(drafts[kind], target, max_new_tokens=n_new, **{
                   "gamma": gamma if settings["draft_length"] != "adaptive" else 2 * gamma, **OURS_COMMON, **settings})
               for name, (settings, _, kind) in ours.items()}
    try:
        for name, runner in runners.items():  # warm-up (and the adaptive policies' first estimates)
            runner.generate(workload.items[0][0], None, DecodingMode[ours[name][1]])
        for index, (prompt, image) in enumerate(workload.items):
            kwargs = target.encode(prompt, image).generate_kwargs()
            prompt_len = kwargs["input_ids"].shape[1]
            common = dict(do_sample=False, max_new_tokens=n_new, pad_token_id=pad)
            outputs: Dict[str, List[int]] = {}

            def run(name):
                if name == "target_alone":
                    with torch.inference_mode():
                        out, seconds = _timed(lambda: target.model.generate(**kwargs, **common))
                    outputs[name] = out[0, prompt_len:].tolist()
                elif name in HF_SETTINGS:
                    schedule, threshold, tokens = HF_SETTINGS[name]
                    assistant = draft.model
                    assistant.generation_config = copy.deepcopy(assistant.generation_config)
                    assistant.generation_config.num_assistant_tokens = tokens or gamma
                    assistant.generation_config.num_assistant_tokens_schedule = schedule
                    assistant.generation_config.assistant_confidence_threshold = threshold
                    with torch.inference_mode():
                        out, seconds = _timed(lambda: target.model.generate(**kwargs, assistant_model=assistant,
                                                                            **common))
                    outputs[name] = out[0, prompt_len:].tolist()
                else:
                    result, seconds = _timed(lambda: runners[name].generate(prompt, image,
                                                                            DecodingMode[ours[name][1]]))
                    outputs[name] = list(result.tokens)
                    overhead[name].append(_non_model_ms(result.stats))
                    tokens_per_round[name].append(result.stats.tokens_per_round)
                rows[name].append((len(outputs[name]), seconds))

            # every other prompt in reverse order: this machine's speed drifts within a prompt's runs,
            # and a drift then favours no decoder over the whole run
            for name in (list(rows) if index % 2 == 0 else list(rows)[::-1]):
                run(name)
            for name, tokens in outputs.items():
                if tokens != outputs["target_alone"]:
                    mismatches.append(f"{name} differs on prompt {prompt[:40]!r}")
            log("  assisted: " + "  ".join(f"{n} {sum(s for _, s in r[-1:]):.2f}s" for n, r in rows.items()))
    finally:
        for runner in runners.values():
            runner.close()
    if mismatches:
        raise AssertionError("; ".join(mismatches))
    result = {name: {"tokens": sum(n for n, _ in r), "seconds": sum(s for _, s in r),
                     "tokens_per_s": sum(n for n, _ in r) / max(sum(s for _, s in r), 1e-9)}
              for name, r in rows.items()}
    for name in ours:
        result[name]["non_model_ms_per_round"] = sorted(overhead[name])[len(overhead[name]) // 2]
        result[name]["tokens_per_round"] = sum(tokens_per_round[name]) / len(tokens_per_round[name])
    best_hf = max(HF_SETTINGS, key=lambda n: result[n]["tokens_per_s"])
    best_ours = max(ours, key=lambda n: result[n]["tokens_per_s"])
    best_same = max((n for n in ours if ours[n][2] == "draft"), key=lambda n: result[n]["tokens_per_s"])
    per_prompt = sorted((n_o / s_o) / (n_h / s_h) for (n_o, s_o), (n_h, s_h) in zip(rows[best_ours], rows[best_hf]))
    result.update(best_hf=best_hf, best_ours=best_ours, best_ours_same_draft=best_same,
                  ratio_per_prompt=per_prompt, max_new_tokens=n_new,
                  ratio_same_draft_vs_best_hf=result[best_same]["tokens_per_s"] / result[best_hf]["tokens_per_s"],
                  ratio_best_ours_vs_best_hf=result[best_ours]["tokens_per_s"] / result[best_hf]["tokens_per_s"],
                  ratio_best_ours_vs_target=result[best_ours]["tokens_per_s"] / result["target_alone"]["tokens_per_s"],
                  gamma=gamma, prompts=len(workload.items), threads=torch.get_num_threads(),
                  hf_settings={n: list(v) for n, v in HF_SETTINGS.items()},
                  ours_settings={n: dict(v[0], mode=v[1], draft=v[2]) for n, v in ours.items()})
    return result


def report_lines(assisted: dict, processor: str, table) -> List[str]:
    """The markdown section for ``docs/benchmarks.md`` (``table`` renders a header and rows)."""
    lines = [f"## Reference: transformers assisted generation vs our engine, measured on {processor} "
             "(text pair, in process, no network)", "",
             f"{assisted['prompts']} prompts, {assisted.get('max_new_tokens', '?')} new tokens each, gamma {assisted['gamma']} (adaptive: up to {2 * assisted['gamma']}), "
             f"{assisted['threads']} torch thread per side; every output checked identical to the target's "
             "greedy output. Non-model time: latency minus the model passes that cannot overlap, per round.", ""]
    names = ["target_alone", *assisted["hf_settings"], *assisted["ours_settings"]]
    rows = []
    for name in names:
        row = assisted[name]
        rows.append([name + (" (best HF)" if name == assisted["best_hf"] else "")
                     + (" (best ours)" if name == assisted["best_ours"] else ""),
                     f"{row['tokens_per_s']:.2f}",
                     f"{row['tokens_per_s'] / assisted[assisted['best_hf']]['tokens_per_s']:.2f}x",
                     f"{row.get('tokens_per_round', float('nan')):.2f}" if "tokens_per_round" in row else "",
                     f"{row['non_model_ms_per_round']:.1f}" if "non_model_ms_per_round" in row else ""])
    lines += table(["decoder", "tokens/s", "vs best HF", "tokens/round", "non-model ms/round"], rows)
    lines += ["", f"Best ours ({assisted['best_ours']}) vs transformers at its best setting ({assisted['best_hf']}): "
                  f"**{assisted['ratio_best_ours_vs_best_hf']:.3f}x** (bar 1.3x); vs the target alone: "
                  f"**{assisted['ratio_best_ours_vs_target']:.3f}x**."]
    spread = assisted.get("ratio_per_prompt")
    if spread:
        lines += [f"The same ratio prompt by prompt: median {spread[len(spread) // 2]:.2f}x, "
                  f"{spread[0]:.2f}-{spread[-1]:.2f}x (the decoders take turns on each prompt)."]
    if "best_ours_same_draft" in assisted:
        lines += [f"With transformers' draft (no target states), best ours ({assisted['best_ours_same_draft']}): "
                  f"{assisted['ratio_same_draft_vs_best_hf']:.2f}x transformers at its best. `ours_feature_*` rows use "
                  "the draft conditioned on the target's states, which transformers' assisted generation cannot feed."]
    lines += [""]
    return lines
