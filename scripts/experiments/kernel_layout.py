#!/usr/bin/env python3
"""Cost of a k-token forward pass (decoder body and LM head) on this CPU in each linear-layer
layout of :mod:`specdec.models.kernels` (PyTorch's default, transposed, the small-batch kernel),
for k = 1, 2, 3, 5, 9: median of 15 passes after a short prompt, one torch thread. The layouts take
turns pass by pass on one loaded model, so a machine whose speed drifts moves them all alike.

    python scripts/experiments/kernel_layout.py models/go2_vlm/target
"""

from __future__ import annotations

import sys
import time

import torch

from specdec.models.kernels import available_layouts, use_layout
from specdec.models.loading import adapter_modules, load_model

ROWS = (1, 2, 3, 5, 9)


def measure(folder: str, repeats: int = 15) -> None:
    torch.set_num_threads(1)
    adapter = load_model(folder, linear_kernel="default")
    layers = adapter_modules(adapter)
    state = adapter.prefill(adapter.encode("Tell me about robots that walk on four legs."))
    length = state.length
    times = {(layout, k): [] for layout in available_layouts() for k in ROWS}
    for _ in range(repeats):
        for layout in available_layouts():
            use_layout(layers, layout)
            for k in ROWS:
                t0 = time.perf_counter()
                adapter.forward(state, [5] * k, keep=k)
                times[layout, k].append(time.perf_counter() - t0)
                adapter.truncate(state, length)
    for layout in available_layouts():
        row = {k: sorted(times[layout, k])[repeats // 2] * 1000 for k in ROWS}
        print(f"{layout:12s}", "  ".join(f"{k}: {v:6.1f} ms ({v / row[1]:.2f}x)" for k, v in row.items()))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: kernel_layout.py MODEL_FOLDER")
    measure(sys.argv[1])
