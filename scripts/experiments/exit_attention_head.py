#!/usr/bin/env python3
"""Experiment (issue 4): can an early exit at half depth of SmolLM2-135M reach 70 % top-1 agreement
if the exit head has attention, not only an MLP?

The head is copies of target decoder layers (default: the last two, 28 and 29) applied to the
layer-L hidden states of whole sequences, followed by the target's frozen final norm and LM head,
trained to match the target's top-16 next-token distribution (renormalised). Agreement is measured
like ``training.text.evaluate``: top-1 against the final layer on the generated positions of
the held-out sequences (every 10th). Uses the labels cache that ``make models`` writes
(.cache/models/_work/labels-*.pt, hidden states of layers 3..27).

    python scripts/experiments/exit_attention_head.py --layer 14 --copy 28,29 --epochs 4 --lr 5e-4

Measured (2026-11-22, 1 CPU thread, 511 s): 34.8 % after training, against 30.3 % for the
committed MLP adapter at the same layer; not pursued further.
"""

from __future__ import annotations

import argparse
import copy
import glob
import math
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layer", type=int, default=14)
    ap.add_argument("--copy", default="28,29", help="target layers copied into the head")
    ap.add_argument("--epochs", type=float, default=4.0)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    from transformers import AutoModelForCausalLM

    from specdec.models import artefacts
    from training.teacher import Labels

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cached = sorted(glob.glob(os.path.join(artefacts.cache_root(), "_work", "labels-*.pt")))
    if not cached:
        raise SystemExit("no labels cache: run 'make models' first")
    labels = Labels.from_dict(torch.load(cached[-1], weights_only=False))
    model = AutoModelForCausalLM.from_pretrained(artefacts.text_target_dir(), dtype=torch.float32).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    head = torch.nn.ModuleList([copy.deepcopy(model.model.layers[i]) for i in map(int, args.copy.split(","))])
    for p in head.parameters():
        p.requires_grad_(True)

    sequences = []  # (hidden [T, H], top-k ids, top-k logp, first generated index, first position)
    for s in range(len(labels.sequences)):
        rows = torch.nonzero(labels.seq == s).flatten()
        rows = rows[torch.argsort(labels.pos[rows])]
        first = int(labels.pos[rows[0]])
        sequences.append((labels.hidden[args.layer][rows].float(), labels.topk_ids[rows], labels.topk_logp[rows],
                          max(0, labels.prompt_lens[s] - first), first))
    held = [i for i in range(len(sequences)) if i % 10 == 9]
    train = [i for i in range(len(sequences)) if i % 10 != 9]

    def logits(hidden, first):
        x = hidden[None]
        positions = torch.arange(x.shape[1])[None] + first
        rope = model.model.rotary_emb(x, positions)
        mask = torch.full((x.shape[1], x.shape[1]), float("-inf")).triu(1)[None, None]
        for layer in head:
            out = layer(x, attention_mask=mask, position_ids=positions, position_embeddings=rope)
            x = out[0] if isinstance(out, tuple) else out
        return model.lm_head(model.model.norm(x))[0]

    def agreement():
        agree = total = 0
        with torch.no_grad():
            for i in held:
                hidden, ids, _, gen, first = sequences[i]
                pred = logits(hidden, first).argmax(-1)
                agree += int((pred[gen:] == ids[gen:, 0]).sum())
                total += len(pred) - gen
        return agree / max(total, 1)

    print(f"before training: {agreement():.4f}", flush=True)
    steps = max(1, int(args.epochs * len(train)))
    opt = torch.optim.AdamW(head.parameters(), lr=args.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))
    gen = torch.Generator().manual_seed(0)
    start = time.time()
    for step in range(steps):
        hidden, ids, logp_teacher, _, first = sequences[train[int(torch.randint(len(train), (1,), generator=gen))]]
        logp = torch.log_softmax(logits(hidden, first), -1)
        loss = -(torch.softmax(logp_teacher, -1) * logp.gather(-1, ids)).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if (step + 1) % 200 == 0:
            print(f"step {step + 1}/{steps} loss {loss.item():.3f} {time.time() - start:.0f}s", flush=True)
    print(f"after training: {agreement():.4f} (layer {args.layer}, head = copies of layers {args.copy}, "
          f"{time.time() - start:.0f}s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
