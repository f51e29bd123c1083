#!/usr/bin/env python3
"""Tokens per second of the text pair in process, per draft-length policy, next to the target
alone: the benchmark's prompts (bench.workloads.text_workload), the draft conditioned on the
target's states, one torch thread, LocalSpeculativeDecoder. Every output is checked against the
target's greedy output.

    python scripts/experiments/draft_length_in_process.py --repeats 2

2026-12-02, 2-core x86-64: fixed 1-token blocks 1.04-1.07x the target alone, fixed 2 1.02-1.05x,
fixed 4 0.80-0.82x, confidence stop 1.02-1.04x, adaptive 1.00x (1.39 / 1.59 / 1.68 / 1.43 /
1.22-1.26 tokens per round).
"""

from __future__ import annotations

import argparse
import time

import torch

from bench import workloads
from specdec.engine.local import LocalSpeculativeDecoder
from specdec.models.loading import load_model
from specdec.protocol import DecodingMode

POLICIES = [("fixed", 1), ("fixed", 2), ("fixed", 3), ("fixed", 4), ("confidence", 4), ("adaptive", 8)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(1)
    w = workloads.text_workload(args.prompts, args.tokens)
    draft = load_model(w.feature_draft, name="feature-draft")
    target = load_model(w.target, name="target")
    reference = {}
    for _ in range(args.repeats):
        n, seconds = 0, 0.0
        with torch.inference_mode():
            for prompt, image in w.items:
                kwargs = target.encode(prompt, image).generate_kwargs()
                start = kwargs["input_ids"].shape[1]
                t0 = time.perf_counter()
                out = target.model.generate(**kwargs, do_sample=False, max_new_tokens=args.tokens)
                seconds += time.perf_counter() - t0
                reference[prompt] = out[0, start:].tolist()
                n += len(reference[prompt])
        alone = n / seconds
        print(f"target alone: {alone:.2f} tokens/s", flush=True)
        for kind, gamma in POLICIES:
            runner = LocalSpeculativeDecoder(draft, target, gamma=gamma, max_new_tokens=args.tokens,
                                             draft_length=kind)
            try:
                runner.generate(w.items[0][0], None, DecodingMode.SPECULATIVE)  # warm-up
                n, seconds, per_round = 0, 0.0, []
                for prompt, image in w.items:
                    t0 = time.perf_counter()
                    result = runner.generate(prompt, image, DecodingMode.SPECULATIVE)
                    seconds += time.perf_counter() - t0
                    if list(result.tokens) != reference[prompt]:
                        raise AssertionError(f"{kind} {gamma}: output differs from the target's on {prompt[:40]!r}")
                    n += len(result.tokens)
                    per_round.append(result.stats.tokens_per_round)
            finally:
                runner.close()
            print(f"{kind:>10} up to {gamma}: {n / seconds:6.2f} tokens/s = {n / seconds / alone:.2f}x the target alone, "
                  f"{sum(per_round) / len(per_round):.2f} tokens per round", flush=True)


if __name__ == "__main__":
    main()
