#!/usr/bin/env python3
"""What verifier_server's glibc heap settings (``cloud_verifier_bridge.server.bounded_malloc``) cost
the target's forward passes.

Each setting runs in a process of its own, pinned to one core with one torch thread, as the
benchmark's server runs: the heap settings first (as ``verifier_server`` applies them, before the
model loads), then the SmolLM2 target, then a 111-token prefill of the benchmark's longest text
prompt and 5-token verification passes with their 5 rows of logits, medians of ``--repeats``.

    python scripts/experiments/server_heap.py --repeats 8

Settings: glibc's defaults; the fixed 256 KiB mmap threshold alone (the server's setting until
2026-12-05: it also pins glibc's trim threshold at 128 KiB); a 256 KiB mmap threshold with a 64 MiB
trim threshold; the server's settings now (4 MiB / 64 MiB). Prints JSON: per setting, the medians
and the process's RSS at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SETTINGS = {
    "glibc defaults": None,
    "mmap 256 KiB (trim 128 KiB)": {"mmap_threshold": 256 * 1024, "trim_threshold": None},
    "mmap 256 KiB, trim 64 MiB": {"mmap_threshold": 256 * 1024, "trim_threshold": 64 * 1024 * 1024},
    "mmap 4 MiB, trim 64 MiB (the server's)": {},
}

CHILD = r"""
import json, os, statistics, sys, time
sys.path.insert(0, {root!r})
setting = json.loads({setting!r})
if setting is not None:
    from cloud_verifier_bridge.server import bounded_malloc
    bounded_malloc(**setting, trim_every_s=3600)  # trim_threshold None: the old settings, glibc's own
import torch
torch.set_num_threads(1)
from bench import workloads
from specdec.models.loading import load_model
work = workloads.build("text", 4, 8)
target = load_model(work.target, name="target")
prompt = max((p for p, _ in work.items), key=lambda p: len(target.encode(p, None).input_ids))
inputs = target.encode(prompt, None)
prefill, verify = [], []
with torch.inference_mode():
    for _ in range({repeats}):
        t0 = time.perf_counter()
        state = target.prefill(inputs)
        prefill.append((time.perf_counter() - t0) * 1000)
    for _ in range({repeats}):
        t0 = time.perf_counter()
        target.head_logits(target.forward_hidden(state, [inputs.input_ids[-1]] * 5, keep=5))
        verify.append((time.perf_counter() - t0) * 1000)
rss = [l for l in open("/proc/self/status") if l.startswith("VmRSS")][0].split()[1]
print(json.dumps({{"prompt_tokens": len(inputs.input_ids), "prefill_ms": round(statistics.median(prefill[1:]), 1),
                  "verify_5_ms": round(statistics.median(verify[1:]), 1), "rss_mb": round(int(rss) / 1024)}}))
"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--core", type=int, default=max(os.sched_getaffinity(0)))
    args = parser.parse_args(argv)
    out = {}
    for name, setting in SETTINGS.items():
        code = CHILD.format(root=ROOT, setting=json.dumps(setting), repeats=args.repeats)
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                             preexec_fn=lambda: os.sched_setaffinity(0, {args.core}))
        if run.returncode:
            print(run.stderr[-2000:], file=sys.stderr)
            return 1
        out[name] = json.loads(run.stdout.strip().splitlines()[-1])
        print(f"{name}: {out[name]}", file=sys.stderr, flush=True)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
