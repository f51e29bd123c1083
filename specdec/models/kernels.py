"""CPU kernel choice for small-batch linear layers, applied to the model object itself.

On a CPU, a decode step and a verification pass multiply a few rows of activations by every
weight matrix. With PyTorch's default ``[out, in]`` weight layout the GEMM path for 4-9 rows is
far slower than for one (a 576 x 1536 projection: 0.12 ms for 1 row, 0.24 ms for 5; SmolLM2-135M
verifying 5 tokens cost 2.1x a one-token step). Stored transposed (``[in, out]`` contiguous, the
parameter a transposed view of it) the same ``F.linear`` takes the GEMV-friendly path: 5 rows
cost 1.3x one row. Same weights, same arithmetic per element: a layout change only.

It is applied to the loaded model object, so every mode that runs the model - our verifier, the
draft, and the baselines (``model.generate``, transformers' assisted generation) - gets it.
Measure with ``python scripts/experiments/kernel_layout.py MODEL_FOLDER``.
"""

from __future__ import annotations

import torch
from torch import nn


def use_transposed_linears(model: nn.Module) -> int:
    """Store every ``nn.Linear`` weight transposed in memory (shape and values unchanged); returns
    how many layers changed. Tied weights (an LM head sharing the embedding) change once, and stay
    tied (the parameter object is kept)."""
    seen = set()
    changed = 0
    for module in model.modules():
        if type(module) is not nn.Linear or id(module.weight) in seen:
            continue
        seen.add(id(module.weight))
        weight = module.weight
        if weight.device.type != "cpu" or weight.dim() != 2 or weight.t().is_contiguous():
            continue
        with torch.no_grad():
            weight.data = weight.data.t().contiguous().t()
        changed += 1
    return changed
