#!/usr/bin/env python3
"""A quantized draft: what it costs in acceptance and what it saves in draft time (CPU).

Runs the Go2 pair (``models/go2_vlm``) speculatively on simulator frames with the draft in
float32 and in int8 (torch dynamic quantization, ``load_model(..., quantization="int8")``),
checks every output against the target's own greedy decode (quantization may change only
acceptance), and prints acceptance and the draft's mean milliseconds per drafted token.

    python scripts/experiments/quantized_draft.py --frames 40
"""

from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--gamma", type=int, default=4)
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    from go2_sim.dataset import rollouts
    from specdec.engine.local import LocalSpeculativeDecoder
    from specdec.models.loading import load_model

    folder = os.path.join(ROOT, "models", "go2_vlm")
    target = load_model(os.path.join(folder, "target"))
    frames = [(env.instruction, image[:, :, ::-1].copy())
              for env, *_rest, image, _info, _label in rollouts(args.frames, seed=args.seed, max_decisions=1)]
    reference = {}
    print(f"{len(frames)} simulator frames, gamma {args.gamma}, 1 torch thread")
    for quantization in ("none", "int8"):
        draft = load_model(os.path.join(folder, "draft"), quantization=quantization)
        accepted = drafted = 0
        draft_s = 0.0
        with LocalSpeculativeDecoder(draft, target, gamma=args.gamma, max_new_tokens=8) as runner:
            for index, (instruction, rgb) in enumerate(frames):
                result = runner.generate(instruction, rgb)
                stats = result.stats
                accepted += stats.accepted_tokens
                drafted += stats.drafted_tokens
                draft_s += stats.draft_ms / 1000
                if reference.setdefault(index, result.tokens) != result.tokens:
                    raise SystemExit(f"frame {index}: int8 draft changed the output - a losslessness bug")
        per_token = 1000 * draft_s / max(1, drafted)
        print(f"draft {quantization:5s}: acceptance {accepted / max(1, drafted):.3f} "
              f"({accepted}/{drafted} drafted tokens), {per_token:.2f} ms per drafted token")
    return 0


if __name__ == "__main__":
    sys.exit(main())
