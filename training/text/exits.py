"""Early-exit adapters for a text target, from the command line (:mod:`training.train_exits`).

    python -m training.text.exits --target .cache/models/smollm2-135m-instruct \\
        --layers 6 10 15 --data text:chat=192,prose=96 --out /tmp/exits.safetensors

Prints and writes (``--report``) the per-exit top-1 agreement with the final layer on held-out
sequences, next to the untrained "logit lens" baseline. ``make models`` trains the committed
exits with the same functions (recipe ``EXIT_RECIPE`` in ``scripts/make_models.py``).
"""

from __future__ import annotations

import argparse
import json
import os

import torch

from ..train_exits import format_table, load_target, pick_device, set_threads, train_exit_heads
from .data import cached_labels, make_source


def main(argv=None) -> int:
    from tqdm import tqdm

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, help="HF folder of the target model")
    parser.add_argument("--layers", type=int, nargs="+", required=True, help="exit layer indices (0-based)")
    parser.add_argument("--data", default="text", help="data source spec (see training.text.data)")
    parser.add_argument("--out", required=True, help="adapter file (or folder) to write")
    parser.add_argument("--adapter", default="mlp", choices=["linear", "mlp"])
    parser.add_argument("--rank", type=int, default=128)
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--held-out-every", type=int, default=10, help="hold out every N-th sequence")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--labels-cache", default=None, help="reuse/save the labelled data here (.pt)")
    parser.add_argument("--report", default=None, help="write the JSON report here")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)

    set_threads(args.threads)
    device = pick_device(args.device)
    model, tokenizer = load_target(args.target, device, getattr(torch, args.dtype))
    source = make_source(args.data)
    with tqdm(total=len(source) or None, desc="labelling") as bar:
        labels = cached_labels(source, model, tokenizer, args.layers, args.labels_cache, progress=bar)
    train, held = labels.split_by_sequence(args.held_out_every)
    heads, report = train_exit_heads(
        model, train, args.layers, adapter=args.adapter, rank=args.rank, epochs=args.epochs,
        batch=args.batch, lr=args.lr, seed=args.seed, held_out=held,
    )
    report["data"] = args.data
    path = heads.save(args.out, extra_metadata={"training": json.dumps(report, sort_keys=True)})
    print(format_table(report))
    print(f"saved {path} ({os.path.getsize(path) / 1e6:.2f} MB)")
    if args.report:
        with open(args.report, "w") as handle:
            json.dump(report, handle, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
