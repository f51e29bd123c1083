#!/usr/bin/env python3
"""Recipe sweep for the Go2 VLM target: train variants side by side, score them in closed loop.

Each variant trains only the target (``training.go2_vlm.train.build(target_only=True)``) in its own
process, then drives the simulator alone (greedy) on *validation* seeds, disjoint from the
evaluation seeds 0..49 of the model card and from the training rollouts (those draw their
episode seeds at random from [0, 2^31)). Choosing a recipe on the evaluation seeds would
overfit them; the winner is then rebuilt by ``make models`` and evaluated there.

A variant is ``NAME:key=value,key=value``. Keys are TrainConfig fields, ``target.<field>`` /
``draft.<field>`` (a field of TARGET_SPEC / DRAFT_SPEC, e.g. ``target.vision_depth=3``) or ``image=WxH`` (the resolution the
processor resizes frames to; multiples of 16).

  python scripts/experiments/go2_recipe_sweep.py --device cuda --jobs 8 \\
      --variant base: --variant long:target_steps=6000 --variant res:image=128x96

Prints one JSON line per variant and a table; ``--out`` keeps the trained targets.
``--evaluate models/go2_vlm`` scores an existing pair on the same seeds (no training);
``--diagnose models/go2_vlm`` prints its teacher-forced accuracy on training and held-out rows.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def _apply(overrides: dict):
    """Patch the pair's shapes for this process and return the TrainConfig of ``overrides``."""
    from training.go2_vlm import build, config, data, pair, train

    specs, fields = {"target": {}, "draft": {}}, {}
    for key, value in overrides.items():
        if key == "image":
            w, h = (int(v) for v in value.lower().split("x"))
            for module in (pair, config, data, train):
                module.IMAGE_W, module.IMAGE_H = w, h
        elif key.split(".", 1)[0] in specs:
            which, field = key.split(".", 1)
            kind = type(getattr(getattr(pair, which.upper() + "_SPEC"), field))
            specs[which][field] = tuple(int(x) for x in value.split("/")) if kind is tuple else kind(value)
        else:
            fields[key] = value
    for which, changes in specs.items():
        if changes:
            name = which.upper() + "_SPEC"
            new = dataclasses.replace(getattr(pair, name), **changes)
            for module in (pair, config, build):
                setattr(module, name, new)
    return config.apply_overrides(config.TrainConfig(), fields)


def target_alone(folder: str, seeds: range, threads: int) -> dict:
    """The target of ``folder`` alone (greedy) on ``seeds``."""
    import torch

    from specdec.models.artefacts import go2_pair_paths
    from specdec.models.loading import load_model
    from training.go2_vlm.evaluate import closed_loop, greedy_policy
    from training.go2_vlm.pair import load_prompt_template

    torch.set_num_threads(threads)
    target = load_model(go2_pair_paths(folder).target, name="go2-vlm-target")
    summary = closed_loop(greedy_policy(target, template=load_prompt_template(folder)), seeds, "target", progress=False, log=lambda m: None)[1]
    return {"success_rate": summary["success_rate"], "successes": len(summary["successes"]),
            "episodes": summary["episodes"], "done_elsewhere": summary["said_done_elsewhere"],
            "failed_seeds": [f["seed"] for f in summary["failures"]], "failure_kinds": summary["failure_kinds"],
            # per failed episode: decisions taken right after a motion the controller stopped as stalled
            "failed_blocked_decisions": [f["blocked_decisions"] for f in summary["failures"]],
            "eval_seconds": summary["wall_s"]}


def diagnose(folder: str, threads: int, limit: int = 1500) -> dict:
    """Teacher-forced verb / answer accuracy of the target of ``folder`` on the default recipe's
    training rows and held-out rows: all samples, samples with the instructed object's twin in
    view, and ``done`` samples (is the twin decision underfit, or only not generalised?); and
    how well its image features tell each object's colour and shape (``train.shape_accuracy``)."""
    import torch
    from transformers import Qwen2VLForConditionalGeneration

    from training.go2_vlm.data import TWIN_CLOSE_TOKENS, assemble_dataset, expert_chunks, training_rows, twin_tokens
    from specdec.models.artefacts import go2_pair_paths
    from training.go2_vlm.config import TrainConfig
    from training.go2_vlm.train import answer_accuracy, shape_accuracy

    torch.set_num_threads(threads)
    cfg = TrainConfig()
    data = assemble_dataset(expert_chunks(cfg, progress=False), cfg, log=lambda m: None)
    model = Qwen2VLForConditionalGeneration.from_pretrained(go2_pair_paths(folder).target).eval()
    twin = twin_tokens(data) >= TWIN_CLOSE_TOKENS
    done = torch.tensor([a == "done" for a in data.actions])
    gen = torch.Generator().manual_seed(0)
    out = {}
    for split, rows in (("train", training_rows(data, cfg.other_hidden_frac, cfg.seed)),
                        ("held_out", torch.nonzero(data.held_out).flatten())):
        for subset, mask in (("all", None), ("twin_in_view", twin), ("done", done)):
            r = rows if mask is None else rows[mask[rows]]
            if len(r) > limit:
                r = r[torch.randperm(len(r), generator=gen)[:limit]]
            out[f"{split}/{subset}"] = dict(samples=len(r), **answer_accuracy(model, data, r))
        frames = torch.unique(data.frame[rows])
        frames = frames[torch.randperm(len(frames), generator=gen)[:limit // 4]]
        out[f"{split}/image_features"] = shape_accuracy(model, data, frames)
    return out


def run_one(name: str, overrides: dict, out: str, device: str, seeds: range, threads: int) -> dict:
    from training.go2_vlm.build import build

    cfg = _apply(overrides)
    cfg.workers, cfg.threads = 2, threads
    folder = os.path.join(out, name)
    report = build(folder, force=True, config=cfg, progress=False, log=lambda m: None, device=device,
                   target_only=True)
    return {"name": name, "overrides": overrides, **target_alone(folder, seeds, threads),
            "held_out": report["target"]["held_out"], "train_seconds": report["target"]["seconds"],
            "vision_warmup": report.get("vision_warmup"),
            "data_seconds": report["data"]["seconds"]}


def parse_variant(text: str):
    name, _, rest = text.partition(":")
    overrides = dict(item.split("=", 1) for item in rest.split(",") if item)
    return name, overrides


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", action="append", default=[], help="NAME:key=value,...")
    ap.add_argument("--evaluate", default=None, metavar="DIR",
                    help="no training: score the pair folder DIR (e.g. models/go2_vlm) on the validation seeds")
    ap.add_argument("--diagnose", default=None, metavar="DIR",
                    help="no training: teacher-forced accuracy of DIR's target on training / held-out rows")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--jobs", type=int, default=1, help="variants trained at once (one process each)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per variant")
    ap.add_argument("--seeds", default=None, help="seeds FIRST:END (default: the validation seeds of make models-eval)")
    ap.add_argument("--out", default="/tmp/go2_sweep")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # child mode: run this variant
    args = ap.parse_args(argv)
    if args.seeds is None:
        from training.go2_vlm.evaluate import VALIDATION_SEEDS

        args.seeds = f"{VALIDATION_SEEDS[0]}:{VALIDATION_SEEDS[-1] + 1}"
    first, end = (int(v) for v in args.seeds.split(":"))
    if args.evaluate:
        print(json.dumps({"folder": args.evaluate, **target_alone(args.evaluate, range(first, end), args.threads)}))
        return 0
    if args.diagnose:
        print(json.dumps({"folder": args.diagnose, **diagnose(args.diagnose, args.threads)}, indent=1))
        return 0
    if not args.variant:
        ap.error("give --variant (one or more), --evaluate DIR or --diagnose DIR")
    variants = dict(parse_variant(v) for v in args.variant)
    if args.one:
        row = run_one(args.one, variants[args.one], args.out, args.device, range(first, end), args.threads)
        print("RESULT " + json.dumps(row), flush=True)
        return 0
    os.makedirs(args.out, exist_ok=True)
    pending, running, rows = list(variants), [], []
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    while pending or running:
        while pending and len(running) < args.jobs:
            name = pending.pop(0)
            cmd = [sys.executable, os.path.abspath(__file__), "--one", name, "--device", args.device,
                   "--threads", str(args.threads), "--seeds", args.seeds, "--out", args.out]
            cmd += [f"--variant={v}" for v in args.variant]
            log = open(os.path.join(args.out, f"{name}.log"), "w")
            running.append((name, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log))
        time.sleep(2)
        for item in list(running):
            name, proc, log = item
            if proc.poll() is None:
                continue
            running.remove(item)
            log.close()
            with open(os.path.join(args.out, f"{name}.log")) as f:
                found = [json.loads(line[7:]) for line in f if line.startswith("RESULT ")]
            row = found[0] if found else {"name": name, "error": f"exit {proc.returncode}"}
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("\n| variant | success | done at the wrong object | held-out verb acc | train s |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        if "error" in r:
            print(f"| {r['name']} | {r['error']} | | | |")
            continue
        print(f"| {r['name']} | {r['successes']}/{r['episodes']} ({100 * r['success_rate']:.0f}%) | "
              f"{r['done_elsewhere']} | {100 * r['held_out']['verb_acc']:.1f}% | {r['train_seconds']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
