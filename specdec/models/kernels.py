"""CPU kernel choice for small-batch linear layers, applied to the model object itself.

On a CPU, a decode step and a verification pass multiply a few rows of activations by every
weight matrix. With PyTorch's default ``[out, in]`` weight layout the GEMM path for 4-9 rows is
far slower than for one (a 576 x 1536 projection: 0.12 ms for 1 row, 0.24 ms for 5; SmolLM2-135M
verifying 5 tokens cost 2.1x a one-token step). Stored transposed (``[in, out]`` contiguous, the
parameter a transposed view of it) the same ``F.linear`` takes the GEMV-friendly path: 5 rows
cost 1.3x one row. Same weights, same arithmetic per element: a layout change only.

Which layout wins depends on the shapes and the BLAS build: on this project's 2-core x86-64 machine
SmolLM2-135M verifies 2-3 rows faster in the default layout (1.10-1.16x a one-row pass against
1.38-1.47x transposed) while the small Go2 models run faster transposed. :func:`choose_layout`
therefore times the model's own linear shapes at the row counts decoding and verification use, in
both layouts, and keeps the faster (``load_model(..., transposed_linears="auto")``, the default).

It is applied to the loaded model object, so every mode that runs the model - our verifier, the
draft, and the baselines (``model.generate``, transformers' assisted generation) - gets it.
Measure whole passes with ``python scripts/experiments/kernel_layout.py MODEL_FOLDER``.
"""

from __future__ import annotations

import time
from typing import Sequence

import torch
from torch import nn

ROWS = (1, 2, 3, 5)  # a decode step and verification passes of 1-4 draft tokens


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


def _pass_ms(model: nn.Module, rows: Sequence[int], repeats: int) -> float:
    total = 0.0
    for n in rows:
        ids = torch.full((1, n), 5, dtype=torch.long, device=next(model.parameters()).device)
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(input_ids=ids, use_cache=False)
            best = min(best, time.perf_counter() - t0)
        total += best
    return total * 1000


def use_default_linears(model: nn.Module) -> None:
    """Undo :func:`use_transposed_linears` (PyTorch's ``[out, in]`` storage)."""
    for module in model.modules():
        if type(module) is nn.Linear and module.weight.device.type == "cpu" and not module.weight.is_contiguous():
            with torch.no_grad():
                module.weight.data = module.weight.data.contiguous()


@torch.inference_mode()
def choose_layout(model: nn.Module, rows: Sequence[int] = ROWS, repeats: int = 3) -> str:
    """Store the model's linear weights in the layout whose whole forward passes of ``rows`` tokens
    (a decode step, verifications of 1-4 draft tokens) are faster on this CPU in this thread, and
    say which (``"transposed"`` or ``"default"``). Whole passes, because a layer timed alone keeps
    its weights in cache and misses the memory-bound regime decoding is in. A model that cannot run
    on token ids alone keeps the transposed layout."""
    try:
        use_default_linears(model)
        default = _pass_ms(model, rows, repeats)
        use_transposed_linears(model)
        transposed = _pass_ms(model, rows, repeats)
    except Exception:  # e.g. a model that needs more than token ids: the layout measured best so far
        use_transposed_linears(model)
        return "transposed"
    if default < transposed:
        use_default_linears(model)
        return "default"
    return "transposed"
