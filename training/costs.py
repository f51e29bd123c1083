"""What a decoded token costs, measured the same way for every pair: one torch thread, thread CPU
time, best of a few repeats - what other processes on a shared machine do shows up far less than
in wall time. A draft is measured as it proposes (its reduced head when it has one)."""

from __future__ import annotations

import time

import torch


@torch.no_grad()
def token_cost_ms(adapter, inputs, steps: int = 24, repeats: int = 5) -> float:
    """CPU milliseconds of one decoding step of ``adapter`` after the prompt ``inputs``
    (:class:`~specdec.models.adapters.PromptInputs`): its decoder on one token, then its head."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        best = float("inf")
        for _ in range(repeats):
            state = adapter.prefill(inputs)
            token = state.prompt_ids[-1]
            start = time.thread_time()
            for _ in range(steps):
                index = int(adapter.head_logits(adapter.forward_hidden(state, [token], 1)).argmax())
                token = index if adapter.head_ids is None else int(adapter.head_ids[index])
            best = min(best, (time.thread_time() - start) * 1000 / steps)
        return best
    finally:
        torch.set_num_threads(threads)


def cost_ratio(draft, target, prompt: str, image=None) -> dict:
    """``{"draft_ms", "target_ms", "ratio"}`` of one decoded token on the same prompt."""
    draft_ms = token_cost_ms(draft, draft.encode(prompt, image))
    target_ms = token_cost_ms(target, target.encode(prompt, image))
    return {"draft_ms": round(draft_ms, 2), "target_ms": round(target_ms, 2), "ratio": round(draft_ms / target_ms, 3)}
