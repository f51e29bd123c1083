#!/usr/bin/env python3
"""The lean decode step against the model's own forward, side by side in one process (issue 13,
item 2; specdec.models.lean_step).

1. Single passes after a prefill - a decode step (1 token) and a verification block (5 tokens) -
   of the committed Go2 target and draft (a benchmark frame) and of the SmolLM2-135M-Instruct
   target (a chat prompt): the model's own forward and the lean step take turns, medians of
   ``--repeats`` each; the hidden states must be equal bit for bit.
2. Whole Go2 decisions in process (``LocalSpeculativeDecoder``, gamma 4, early-exit hints from every
   exit layer) on ``--frames`` benchmark frames, both models switched together, the two settings
   taking turns ``--rounds`` times: ms per decision, and the tokens and hints must be the same.

    python scripts/experiments/lean_step.py [--frames 30] [--rounds 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from bench.workloads import go2_workload  # noqa: E402
from specdec.engine.local import LocalSpeculativeDecoder  # noqa: E402
from specdec.models.early_exit import EarlyExitHeads  # noqa: E402
from specdec.models.loading import load_model  # noqa: E402

TEXT_TARGET = os.path.join(ROOT, ".cache", "models", "smollm2-135m-instruct")


def switch(adapters, lean: bool) -> None:
    for adapter in adapters:
        adapter.use_lean_step(lean)


@torch.inference_mode()
def passes(name: str, adapter, inputs, repeats: int) -> None:
    state = adapter.prefill(inputs)
    base = state.length
    for count in (1, 5):
        tokens = list(range(10, 10 + count))
        times, outputs = {False: [], True: []}, {}
        for _ in range(repeats):
            for lean in (False, True):
                switch([adapter], lean)
                start = time.perf_counter()
                outputs[lean] = adapter.forward_hidden(state, tokens)
                times[lean].append(time.perf_counter() - start)
                adapter.truncate(state, base)
        own, fast = (statistics.median(times[k]) * 1e3 for k in (False, True))
        same = torch.equal(outputs[False], outputs[True])
        print(f"{name:14s} {count} token(s): own {own:6.2f} ms  lean {fast:6.2f} ms  ({fast / own:.2f}x)  "
              f"bit-identical {same}", flush=True)


def decisions(draft, target, heads, items, rounds: int) -> None:
    times, results = {False: [], True: []}, {}
    with LocalSpeculativeDecoder(draft, target, exit_heads=heads, gamma=4, max_new_tokens=4) as decoder:
        for prompt, image in items[:3]:  # warm-up
            decoder.generate(prompt, image)
        for _ in range(rounds):
            for lean in (False, True):
                switch([draft, target], lean)
                start = time.perf_counter()
                results[lean] = [decoder.generate(prompt, image) for prompt, image in items]
                times[lean].append((time.perf_counter() - start) / len(items) * 1e3)
    own, fast = (statistics.median(times[k]) for k in (False, True))
    same = [r.tokens for r in results[False]] == [r.tokens for r in results[True]]
    hints = {k: (sum(r.stats.hints for r in v), sum(r.stats.hints_correct for r in v)) for k, v in results.items()}
    print(f"Go2 decisions ({len(items)} frames, medians of {rounds} rounds): own {own:.2f} ms  lean {fast:.2f} ms "
          f"({fast / own:.2f}x); same tokens {same}; hints sent/right own {hints[False]} lean {hints[True]}",
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=41)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = go2_workload(args.frames, 4)
    draft, target = load_model(work.draft), load_model(work.target)
    prompt, image = work.items[0]
    passes("Go2 target", target, target.encode(prompt, image), args.repeats)
    passes("Go2 draft", draft, draft.encode(prompt, image), args.repeats)
    if os.path.isdir(TEXT_TARGET):
        text = load_model(TEXT_TARGET)
        passes("SmolLM2 target", text, text.encode("What makes a good cup of tea?"), max(5, args.repeats // 4))
        del text
    decisions(draft, target, EarlyExitHeads.load(target.model, work.exits), work.items, args.rounds)


if __name__ == "__main__":
    main()
