#!/usr/bin/env python3
"""Image payload on the WAN: bytes per decision, and how often the decision changes, when the
edge downscales and/or JPEG-encodes the camera frame instead of sending a full-size PNG.

Speculative decoding is lossless, so a decision is the target's greedy output on the pixels the
cloud decodes: this script runs the Go2 target (``models/go2_vlm/target``) alone on expert
rollouts of the simulator, rendered larger than the 160x120 training frames (default 640x480,
same 4:3 field of view), once per encoding variant, and compares each variant's action text
with the full-size PNG's (today's payload) and with the expert's label.

    python scripts/experiments/image_payload.py --episodes 12 --width 640 --height 480

Also prints the bytes of a 1280x720 frame (the Go2 camera) per variant. Numbers are in
docs/image_payload.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# (label, image_format, size, jpeg_quality); the first is the reference: today's payload
VARIANTS = (
    ("full PNG", "png", "full", 90),
    ("processor PNG", "png", "processor", 90),
    ("processor JPEG q90", "jpeg", "processor", 90),
    ("processor JPEG q75", "jpeg", "processor", 75),
    ("processor JPEG q50", "jpeg", "processor", 50),
    ("160x120 JPEG q90", "jpeg", "160x120", 90),
    ("full JPEG q90", "jpeg", "full", 90),
)


def greedy_action(target, instruction: str, image) -> str:
    import torch

    inputs = target.encode(instruction, image)
    with torch.inference_mode():
        out = target.model.generate(**inputs.generate_kwargs(target.device), do_sample=False, max_new_tokens=8)
    return target.decode_text(out[0, len(inputs.input_ids):].tolist()).strip()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=12)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--max-decisions", type=int, default=20)
    parser.add_argument("--out", default=os.path.join(ROOT, "results", "image_payload.json"))
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    from go2_sim.camera import CameraConfig
    from go2_sim.dataset import rollouts
    from go2_sim.episode import Go2Episode
    from specdec.models.images import encode_image
    from specdec.models.loading import load_model

    target = load_model(os.path.join(ROOT, "models", "go2_vlm", "target"), name="go2-vlm-target")
    camera = CameraConfig(width=args.width, height=args.height, supersample=1)
    totals = {label: {"bytes": 0, "changed": 0, "expert_agree": 0, "encode_ms": 0.0} for label, *_ in VARIANTS}
    frames, started = 0, time.monotonic()
    for _env, _ep, _ep_seed, _step, image, _info, label in rollouts(
            args.episodes, seed=args.seed, max_decisions=args.max_decisions, camera_config=camera):
        rgb = image[:, :, ::-1].copy()
        reference = None
        for name, fmt, size, quality in VARIANTS:
            t0 = time.perf_counter()
            encoded = encode_image(rgb, fmt, size, processor=target.processor, jpeg_quality=quality)
            entry = totals[name]
            entry["encode_ms"] += (time.perf_counter() - t0) * 1000
            action = greedy_action(target, _env.instruction, encoded.image)
            reference = action if reference is None else reference
            entry["bytes"] += len(encoded.data)
            entry["changed"] += action != reference
            entry["expert_agree"] += action == label
        frames += 1
    go2_frame = Go2Episode(camera_config=CameraConfig(width=1280, height=720, supersample=1))
    go2_frame.reset(args.seed)
    go2_rgb = go2_frame.render()[:, :, ::-1].copy()
    rows = []
    for name, fmt, size, quality in VARIANTS:
        entry = totals[name]
        go2 = encode_image(go2_rgb, fmt, size if size != "processor" else "644x364", processor=target.processor,
                           jpeg_quality=quality)
        rows.append(dict(variant=name, frames=frames, mean_bytes=round(entry["bytes"] / frames),
                         changed=entry["changed"], changed_pct=round(100 * entry["changed"] / frames, 1),
                         expert_agree_pct=round(100 * entry["expert_agree"] / frames, 1),
                         encode_ms=round(entry["encode_ms"] / frames, 2),
                         bytes_1280x720=len(go2.data), size_1280x720="x".join(map(str, go2.size))))
    report = dict(frames=frames, render=f"{args.width}x{args.height}", episodes=args.episodes, seed=args.seed,
                  seconds=round(time.monotonic() - started, 1), rows=rows)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as handle:
        json.dump(report, handle, indent=1)
    print(f"{frames} decisions on {args.width}x{args.height} frames, {args.episodes} episodes, "
          f"seed {args.seed}, {report['seconds']} s")
    print("| variant | bytes/decision | decisions changed vs full PNG | agree with expert | encode ms |"
          " 1280x720 frame (Go2 camera) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['variant']} | {r['mean_bytes']:,} | {r['changed']} ({r['changed_pct']} %) | "
              f"{r['expert_agree_pct']} % | {r['encode_ms']} | {r['bytes_1280x720']:,} B ({r['size_1280x720']}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
