"""What every trainer here shares: a warm-up + cosine learning-rate schedule and one clipped step."""

from __future__ import annotations

import math
from typing import Iterable, Optional

import torch


def warmup_cosine(opt: torch.optim.Optimizer, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over the first twentieth of ``total`` steps, then a cosine decay to zero."""
    total = max(1, int(total))
    warm = max(1, total // 20)
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / total))))


def clipped_step(opt: torch.optim.Optimizer, sched: Optional[object], params: Iterable[torch.nn.Parameter],
                 loss: torch.Tensor, clip: float = 1.0) -> float:
    """Backward, clip the gradient norm of ``params`` to ``clip``, step (and the schedule); the loss."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, clip)
    opt.step()
    if sched is not None:
        sched.step()
    return float(loss.detach())
