#!/usr/bin/env python3
"""How long Python's cyclic garbage collector stops a process that holds the text pair, and what
freezing the loaded objects (``gc.freeze()``, :func:`specdec.models.loading.freeze_loaded_objects`)
changes.

A process that has loaded a target holds some 370,000 tracked Python objects (modules, configs,
parameters' wrappers); a full collection walks all of them. This decodes the held-out prompts in
process (the text pair, its feature draft, exit hints on) while ``gc.callbacks`` times every
collection, first as loaded, then after freezing the objects the loading left.

    python scripts/experiments/gc_pauses.py --threads 1 --prompts 8

Prints JSON: per phase, the collections of each generation, their longest and total time, and the
decisions' latencies.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


class CollectionTimer:
    """Times every collection through ``gc.callbacks``."""

    def __init__(self):
        self.records = []
        self._start = None

    def __call__(self, phase, info):
        if phase == "start":
            self._start = time.perf_counter()
        elif self._start is not None:
            self.records.append((info["generation"], (time.perf_counter() - self._start) * 1000))
            self._start = None

    def summary(self) -> dict:
        out = {}
        for gen in (0, 1, 2):
            ms = [m for g, m in self.records if g == gen]
            out[f"gen{gen}"] = {"collections": len(ms), "longest_ms": round(max(ms, default=0.0), 2),
                                "total_ms": round(sum(ms), 1)}
        return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=3, help="passes over the prompts per phase")
    args = parser.parse_args(argv)
    import torch

    from bench import workloads
    from specdec.engine.local import LocalSpeculativeDecoder
    from specdec.models.early_exit import EarlyExitHeads
    from specdec.models.loading import freeze_loaded_objects, load_model
    from specdec.protocol import DecodingMode

    torch.set_num_threads(args.threads)
    work = workloads.with_feature_draft(workloads.build("text", args.prompts, args.tokens))
    target = load_model(work.target, name="target")
    draft = load_model(work.draft, name="draft")
    heads = EarlyExitHeads.load(target.model, work.exits)
    timer = CollectionTimer()
    report = {"tracked_objects_loaded": len(gc.get_objects()), "python": sys.version.split()[0]}
    with LocalSpeculativeDecoder(draft, target, exit_heads=heads, max_new_tokens=args.tokens) as decoder:
        decoder.generate(work.items[0][0], None, DecodingMode.SPECULATIVE_EARLY_EXIT)  # warm-up
        for phase in ("as loaded", "frozen"):
            if phase == "frozen":
                freeze_loaded_objects()
            timer.records.clear()
            gc.callbacks.append(timer)
            latencies = []
            try:
                for _ in range(args.rounds):
                    for prompt, image in work.items:
                        for mode in (DecodingMode.SPECULATIVE, DecodingMode.SPECULATIVE_EARLY_EXIT):
                            t0 = time.perf_counter()
                            decoder.generate(prompt, image, mode)
                            latencies.append((time.perf_counter() - t0) * 1000)
            finally:
                gc.callbacks.remove(timer)
            t0 = time.perf_counter()
            gc.collect()
            report[phase] = {**timer.summary(), "decisions": len(latencies),
                             "decision_ms_median": round(statistics.median(latencies), 1),
                             "full_collection_now_ms": round((time.perf_counter() - t0) * 1000, 1)}
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
