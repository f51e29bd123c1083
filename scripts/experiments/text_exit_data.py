#!/usr/bin/env python3
"""Is the text exit short of data? The committed exits train on 28k positions (``EXIT_RECIPE``:
352 target answers); a rank-512 head overfits them and the attention exit fits its training
sequences 70.8 % but the evaluation prompts 52 %. This labels many more target answers (the
training chat prompts of both pools and prose, the target in bfloat16 on AMX), trains the layer's
exit head (the committed adapter kind and recipe) on growing shares of them, and scores each on
the 1,288 positions ``make models-eval`` scores (the target's 24-token greedy decodes of the 56
held-out prompts, float32): top-1 agreement with the final layer, chat and prose apart, and the
selective exit (fires where its top token has p >= 0.4).

    python scripts/experiments/text_exit_data.py --layer 21 --chat 4000 --prose 2000 --threads 2

Labels are cached in ``.cache/models/_work/``; nothing is saved to ``models/`` unless ``--save``.

2026-12-05, 2-core Intel Xeon, ``--chat 4000 --prose 2000 --shares 0.25 1.0 --heads 128:1:1e-4
128:3:1e-3 512:3:1e-3`` (648,512 positions, labelled in 12 min; each head 11-139 s): on the
evaluation positions the committed head (28k positions, 1 epoch at lr 1e-4) agrees 48.1 %; on 147k
positions 52.4 % with that schedule, 60.6 % with 3 epochs at lr 1e-3 (rank 512: 59.7 %); on 582k
positions 57.8 % / 63.0 % (rank 512: 62.9 %). Version 2 of ``EXIT_RECIPE`` follows from it.
``--score FILE`` scores every layer of an exit file on the same positions (a second training's
spread).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from specdec.models import artefacts  # noqa: E402
from specdec.models.early_exit import EarlyExitHeads  # noqa: E402
from training.teacher import Labels, labelling_model  # noqa: E402
from training.text import corpus  # noqa: E402
from training.text.data import cached_labels, text_source  # noqa: E402
from training.text.evaluate import reference_decode  # noqa: E402
from training.train_exits import evaluate_exits, load_target, set_threads, train_exit_heads  # noqa: E402


def eval_reference(target, tokenizer, layers, work: str) -> Labels:
    """The target's 24-token greedy decodes of the 56 held-out prompts with the states of ``layers``,
    every position (what ``make models-eval`` scores are its generated rows); cached in ``work``."""
    path = os.path.join(work, f"exit-eval-ref-{'-'.join(str(layer) for layer in layers)}.pt")
    if os.path.isfile(path):
        return Labels.from_dict(torch.load(path, weights_only=False))
    ref = reference_decode(target, tokenizer, corpus.eval_prompts(), 24, list(layers))
    torch.save(ref.to_dict(), path)
    return ref


def score(heads: EarlyExitHeads, ref: Labels, layer: int) -> dict:
    out = {}
    for kind in ("chat", "prose", "all"):
        keep = [i for i, k in enumerate(ref.kinds) if kind in ("all", k)]
        rows = torch.nonzero(torch.isin(ref.seq, torch.tensor(keep))).flatten()
        r = evaluate_exits(heads, ref.subset(rows), thresholds=(0.4,))[layer]
        out[kind] = {"agreement": round(r["agreement"], 4), "positions": int(rows.numel()),
                     "p>=0.4": {k: round(v, 4) for k, v in r["fires"][0.4].items()}}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layer", type=int, default=21)
    parser.add_argument("--chat", type=int, default=4000, help="training chat prompts (corpus order)")
    parser.add_argument("--prose", type=int, default=2000, help="training prose openings")
    parser.add_argument("--new", type=int, default=96, help="tokens the target answers (prose: half)")
    parser.add_argument("--shares", type=float, nargs="+", default=[0.0625, 0.25, 1.0],
                        help="shares of the labelled sequences to train on")
    parser.add_argument("--heads", nargs="+", default=["128:1:1e-4"],
                        help="exit heads to train on each share, RANK:EPOCHS:LR (the committed recipe: 128:1:1e-4)")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--label-batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--save", default="", help="write the exit trained on the last share here")
    parser.add_argument("--score", default="", help="only score every layer of this exit file (e.g. a second "
                                                    "training of the recipe) on the same positions")
    args = parser.parse_args()
    set_threads(args.threads)
    work = os.path.join(artefacts.cache_root(), "_work")
    os.makedirs(work, exist_ok=True)
    target, tokenizer = load_target(artefacts.text_target_dir(), torch.device("cpu"))
    if args.score:
        heads = EarlyExitHeads.load(target, args.score)
        ref = eval_reference(target, tokenizer, heads.exit_layers, work)
        ref = ref.subset(ref.generated_rows())
        for layer in list(heads.exit_layers):
            heads.exit_layers = [layer]
            print(json.dumps({"exits": args.score, "layer": layer, "eval": score(heads, ref, layer)}), flush=True)
        return
    layer = args.layer
    ref = eval_reference(target, tokenizer, [layer], work)
    ref = ref.subset(ref.generated_rows())
    committed = EarlyExitHeads.load(target, artefacts.committed_text_exits_sweep_path())
    committed.exit_layers = [layer]
    print(json.dumps({"committed_exit": score(committed, ref, layer)}), flush=True)

    source = text_source(chat=args.chat, prose=args.prose, new=args.new, batch_size=args.label_batch)
    t0 = time.time()
    labeller = labelling_model(target, "bfloat16")
    labels = cached_labels(source, labeller, tokenizer, [layer],
                           os.path.join(work, f"exit-data-{layer}-c{args.chat}-p{args.prose}-n{args.new}-bf16.pt"))
    del labeller
    train, held = labels.split_by_sequence(10)
    print(json.dumps({"sequences": len(labels.sequences), "positions": len(labels), "train_positions": len(train),
                      "label_seconds": round(time.time() - t0, 1)}), flush=True)
    order = torch.randperm(len(labels.sequences), generator=torch.Generator().manual_seed(0))  # chat and prose mixed
    for share in args.shares:
        chosen = order[:int(round(share * len(order)))]
        part = train.subset(torch.nonzero(torch.isin(train.seq, chosen)).flatten())
        for spec in args.heads:
            rank, epochs, lr = spec.split(":")
            heads, report = train_exit_heads(target, part, [layer], adapter="mlp", rank=int(rank),
                                             epochs=float(epochs), batch=args.batch, lr=float(lr), seed=0,
                                             held_out=held, progress=False, log=lambda m: None)
            print(json.dumps({"share": share, "train_positions": len(part), "head": spec,
                              "train_seconds": report["train_seconds"],
                              "held_out": report["per_layer"][str(layer)]["agreement"],
                              "eval": score(heads, ref, layer)}), flush=True)
    if args.save:
        heads.save(args.save, extra_metadata={"training": json.dumps(report, sort_keys=True)})


if __name__ == "__main__":
    main()
