"""Reference point outside the project: transformers' assisted generation vs our engine.

Same draft/target pair, same prompts, no network, one process: ``target.generate(...,
assistant_model=draft)`` (constant gamma, and transformers' default heuristic schedule) against
our engine's in-process mode (edge and cloud threads over the in-process transport, plain
speculative decoding at the same gamma) and against the target alone. Outputs must be
identical (greedy); tokens per second are reported side by side.
"""

from __future__ import annotations

import copy
import time
from typing import Callable, Dict

import torch


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def compare(workload, gamma: int = 4, log: Callable[[str], None] = print) -> Dict[str, object]:
    from specdec.engine.local import LocalSpeculativeDecoder
    from specdec.models.loading import load_model
    from specdec.protocol import DecodingMode

    draft = load_model(workload.draft, name="draft")
    target = load_model(workload.target, name="target")
    n_new = workload.max_new_tokens
    rows = {"target_alone": [], "hf_assisted_constant": [], "hf_assisted_heuristic": [], "ours_in_process": []}
    mismatches = []
    runner = LocalSpeculativeDecoder(draft, target, gamma=gamma, max_new_tokens=n_new)
    try:
        runner.generate(workload.items[0][0], None, DecodingMode.SPECULATIVE)  # warm-up
        for prompt, image in workload.items:
            kwargs = target.encode(prompt, image).generate_kwargs()
            prompt_len = kwargs["input_ids"].shape[1]
            common = dict(do_sample=False, max_new_tokens=n_new, pad_token_id=target.tokenizer.pad_token_id if target.tokenizer.pad_token_id is not None else target.eos_token_ids[0])

            def hf(schedule=None):
                assistant = draft.model
                if schedule:
                    assistant.generation_config = copy.deepcopy(assistant.generation_config)
                    assistant.generation_config.num_assistant_tokens = gamma
                    assistant.generation_config.num_assistant_tokens_schedule = schedule
                    with torch.inference_mode():
                        return target.model.generate(**kwargs, assistant_model=assistant, **common)
                with torch.inference_mode():
                    return target.model.generate(**kwargs, **common)

            alone, t_alone = _timed(lambda: hf(None))
            constant, t_const = _timed(lambda: hf("constant"))
            heuristic, t_heur = _timed(lambda: hf("heuristic"))
            ours, t_ours = _timed(lambda: runner.generate(prompt, image, DecodingMode.SPECULATIVE))
            reference = alone[0, prompt_len:].tolist()
            for name, tokens, seconds in (("target_alone", reference, t_alone),
                                          ("hf_assisted_constant", constant[0, prompt_len:].tolist(), t_const),
                                          ("hf_assisted_heuristic", heuristic[0, prompt_len:].tolist(), t_heur),
                                          ("ours_in_process", list(ours.tokens), t_ours)):
                rows[name].append((len(tokens), seconds))
                if tokens != reference:
                    mismatches.append(f"{name} differs on prompt {prompt[:40]!r}")
            log(f"  assisted: alone {t_alone:.2f}s  hf-const {t_const:.2f}s  hf-heur {t_heur:.2f}s  "
                f"ours {t_ours:.2f}s")
    finally:
        runner.close()
    if mismatches:
        raise AssertionError("; ".join(mismatches))
    result = {name: {"tokens": sum(n for n, _ in r), "seconds": sum(s for _, s in r),
                     "tokens_per_s": sum(n for n, _ in r) / max(sum(s for _, s in r), 1e-9)}
              for name, r in rows.items()}
    result["ratio_ours_vs_hf_constant"] = (result["ours_in_process"]["tokens_per_s"]
                                           / result["hf_assisted_constant"]["tokens_per_s"])
    result["ratio_ours_vs_hf_heuristic"] = (result["ours_in_process"]["tokens_per_s"]
                                            / result["hf_assisted_heuristic"]["tokens_per_s"])
    result["gamma"] = gamma
    result["prompts"] = len(workload.items)
    result["threads"] = torch.get_num_threads()
    return result
