#!/usr/bin/env python3
"""Cost of a k-token forward pass (decoder body and LM head) on this CPU in each linear-layer
layout of :mod:`specdec.models.kernels` (PyTorch's default, transposed, the small-batch kernel),
for k = 1, 2, 3, 5, 9 (``--rows``): median of 15 passes after a short prompt, one torch thread. The
layouts take turns pass by pass on one loaded model, so a machine whose speed drifts moves them all alike.

    python scripts/experiments/kernel_layout.py models/go2_vlm/target
    python scripts/experiments/kernel_layout.py .cache/models/smollm2-135m-instruct \
        --rows 1 5 6 7 9 13 --layouts small_batch
"""

from __future__ import annotations

import argparse
import time

import torch

from specdec.models.kernels import available_layouts, use_layout
from specdec.models.loading import adapter_modules, load_model

ROWS = (1, 2, 3, 5, 9)


def measure(folder: str, rows=ROWS, layouts=None, repeats: int = 15) -> None:
    torch.set_num_threads(1)
    layouts = [x for x in available_layouts() if layouts is None or x in layouts]
    adapter = load_model(folder, linear_kernel="default")
    layers = adapter_modules(adapter)
    state = adapter.prefill(adapter.encode("Tell me about robots that walk on four legs."))
    length = state.length
    times = {(layout, k): [] for layout in layouts for k in rows}
    for _ in range(repeats):
        for layout in layouts:
            use_layout(layers, layout)
            for k in rows:
                t0 = time.perf_counter()
                adapter.forward(state, [5] * k, keep=k)
                times[layout, k].append(time.perf_counter() - t0)
                adapter.truncate(state, length)
    for layout in layouts:
        row = {k: sorted(times[layout, k])[repeats // 2] * 1000 for k in rows}
        print(f"{layout:12s}", "  ".join(f"{k}: {v:6.1f} ms ({v / row[rows[0]]:.2f}x)" for k, v in row.items()))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("--rows", type=int, nargs="+", default=list(ROWS), help="pass sizes (ratios are to the first)")
    parser.add_argument("--layouts", nargs="+", choices=available_layouts(), default=None)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    measure(args.folder, args.rows, args.layouts, args.repeats)
