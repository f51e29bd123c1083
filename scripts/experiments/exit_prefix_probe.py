#!/usr/bin/env python3
"""Would an early exit that also sees the *previous* position's final hidden state reach the
issue's 70 % at half depth on SmolLM2-135M-Instruct?

At verification time the cloud already has the final-layer state of the last position it verified
in the previous round (the one that produced the bonus token), so an exit head for the first
position of the new block could read it next to its own intermediate state (the idea behind
EAGLE-style draft heads). This probe answers the question cheaply with ridge regressions onto the
final normed hidden state, read out through the target's LM head, on the labels `make models`
caches (``.cache/models/_work/labels-*.pt``; every 10th sequence held out, generated positions
only, as in the model card's agreement table):

* ``h_L``: the exit layer's (RMS-normalised) output alone (the committed adapters' input);
* ``final(t-1)``: the previous position's final state alone;
* ``h_L + final(t-1)``: both.

    python scripts/experiments/exit_prefix_probe.py --layer 15

Linear maps only: a lower bound on what a trained head could make of the same inputs, not an
upper one.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def _ridge(x, y, train, lam: float):
    import torch

    x1 = torch.cat([x, torch.ones(len(x), 1)], 1)
    a = x1[train].t() @ x1[train] + lam * torch.eye(x1.shape[1])
    return x1 @ torch.linalg.solve(a, x1[train].t() @ y[train])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layer", type=int, default=15, help="exit layer (must be one the labels captured)")
    ap.add_argument("--held-out-every", type=int, default=10)
    ap.add_argument("--ridge", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    import torch
    from transformers import AutoModelForCausalLM

    from specdec.models import artefacts
    from training.teacher import Labels

    torch.set_num_threads(args.threads)
    found = sorted(glob.glob(os.path.join(artefacts.cache_root(), "_work", "labels-*.pt")), key=os.path.getmtime)
    if not found:
        raise SystemExit("no cached labels under .cache/models/_work: run `make models` first")
    labels = Labels.from_dict(torch.load(found[-1], weights_only=False))
    if args.layer not in labels.hidden or labels.final is None:
        raise SystemExit(f"labels hold layers {sorted(labels.hidden)} and final={labels.final is not None}")
    head = AutoModelForCausalLM.from_pretrained(artefacts.text_target_dir()).get_output_embeddings().weight.detach().float()

    where = {(s, p): i for i, (s, p) in enumerate(zip(labels.seq.tolist(), labels.pos.tolist()))}
    prev = torch.tensor([where.get((s, p - 1), -1) for s, p in zip(labels.seq.tolist(), labels.pos.tolist())])
    has_prev = prev >= 0
    held = labels.seq % args.held_out_every == args.held_out_every - 1
    generated = torch.zeros(len(labels), dtype=torch.bool)
    generated[labels.generated_rows()] = True
    train, test = ~held & has_prev, held & has_prev & generated

    h = labels.hidden[args.layer].float()
    h = h / h.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt()
    final = labels.final.float()
    final_prev = torch.where(has_prev[:, None], final[prev.clamp_min(0)], torch.zeros_like(final))
    top1 = labels.topk_ids[:, 0]
    out = {"labels": os.path.basename(found[-1]), "layer": args.layer, "held_out_positions": int(test.sum())}
    for name, x in ((f"h{args.layer}", h), ("final(t-1)", final_prev), (f"h{args.layer} + final(t-1)",
                                                                         torch.cat([h, final_prev], 1))):
        pred = _ridge(x, final, train, args.ridge)
        out[name] = round(float(((pred[test] @ head.t()).argmax(-1) == top1[test]).float().mean()), 4)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
