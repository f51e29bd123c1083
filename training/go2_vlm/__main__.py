"""python -m training.go2_vlm: train / evaluate the Go2 VLM pair, write its model card."""

from __future__ import annotations

import argparse
import json

from specdec.models.artefacts import go2_pair_dir

from .config import TrainConfig, apply_overrides
from .evaluate import EVAL_SEEDS, evaluate_and_save
from .build import build

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Train / evaluate the Go2 VLM pair (target + draft + exits).")
    ap.add_argument("--train", action="store_true", help="train (skipped when the artefacts exist, unless --force)")
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--eval", action="store_true", help="closed-loop evaluation on seeded episodes")
    ap.add_argument("--out", default=go2_pair_dir())
    ap.add_argument("--episodes", type=int, default=len(EVAL_SEEDS), help="evaluation episodes (seeds 0..n-1)")
    ap.add_argument("--report", default=None, help="write the evaluation JSON here (default: OUT/eval_report.json)")
    ap.add_argument("--quick", action="store_true", help="tiny training run for development (not the artefacts)")
    ap.add_argument("--card", action="store_true", help="write docs/models/go2_vlm.md from the reports")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override TrainConfig fields")
    ap.add_argument("--device", default="cpu", help="train on this torch device (cuda: same recipe, other bits "
                    "than the committed CPU-trained artefacts)")
    args = ap.parse_args(argv)
    if not (args.train or args.eval or args.card):
        ap.error("nothing to do: pass --train, --eval and/or --card")
    if args.train:
        cfg = TrainConfig()
        if args.quick:
            cfg = TrainConfig(episodes=20, target_steps=30, distill_target_episodes=10, distill_draft_episodes=10,
                              distill_steps=30, exit_episodes=5, exit_epochs=2)
        apply_overrides(cfg, dict(item.split("=", 1) for item in args.set))
        build(args.out, force=args.force, config=cfg, device=args.device)
    if args.eval:
        report = evaluate_and_save(args.out, args.episodes, args.report)
        brief = {k: report[k] for k in ("exit_agreement",)}
        for name in ("expert", "target", "draft", "speculative"):
            if name in report:
                brief[name] = {k: v for k, v in report[name].items() if k not in ("successes", "failures")}
        print(json.dumps(brief, indent=2))
    if args.card:
        from .card import write

        print(write(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

