#!/usr/bin/env python3
"""Cost of a k-token forward pass on this CPU with PyTorch's default linear weight layout and with
the transposed one (:mod:`specdec.models.kernels`), for k = 1, 2, 3, 5, 9: median of 12 passes
after a short prompt, one torch thread.

    python scripts/experiments/kernel_layout.py models/go2_vlm/target
"""

from __future__ import annotations

import sys
import time

import torch

from specdec.models.loading import load_model


def measure(folder: str) -> None:
    torch.set_num_threads(1)
    for layout in ("default", "transposed"):
        adapter = load_model(folder, transposed_linears=layout == "transposed")
        state = adapter.prefill(adapter.encode("Tell me about robots that walk on four legs."))
        length = state.length
        row = {}
        for k in (1, 2, 3, 5, 9):
            times = []
            for _ in range(12):
                t0 = time.perf_counter()
                adapter.forward_hidden(state, [5] * k, keep=k)
                times.append(time.perf_counter() - t0)
                adapter.truncate(state, length)
            row[k] = sorted(times)[len(times) // 2] * 1000
        print(layout, {k: f"{v:.1f} ms ({v / row[1]:.2f}x)" for k, v in row.items()})


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: kernel_layout.py MODEL_FOLDER")
    measure(sys.argv[1])
