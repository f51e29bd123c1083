"""Eager, interruptible pre-drafting: the edge never idles while a block is being verified.

The paper's pre-drafting (policy ``"hint"``) starts drafting the next block when the early-exit
hint arrives and drafts the whole block before looking at the transport again. Two gaps remain:
the edge idles from sending a block until the hint arrives, and a wrong hint keeps it busy for
up to gamma draft steps after the real result is already there.

Policy ``"eager"`` (ours) closes both:

1. Right after sending a block, pre-draft on the *full-acceptance* hypothesis: every draft token
   accepted and the bonus token equal to the draft's own next prediction.
2. When the hint arrives and names another outcome, switch to the hint's hypothesis (the draft
   cache rolls back to the common prefix; work on a shared prefix is kept).
3. Draft one token at a time and poll the transport in between: the moment the result arrives,
   keep what matches it and stop what does not.

Only what the edge drafts next depends on these guesses; committed tokens come from the
verifier's result alone, so the output is unchanged (greedy: identical tokens; sampling: the
draft still samples each token from its own distribution given the actual prefix).
"""

from __future__ import annotations

import time
from typing import List, Optional

import torch

from .sampling import draft_sample


class EagerPredrafter:
    """Drafts the next block token by token on the current hypothesis of the round's outcome."""

    def __init__(self, decoder, state, cfg, k: int, stop: frozenset, generator, stats):
        self.draft = decoder.draft
        self.state = state
        self.cfg = cfg
        self.k = k
        self.stop = stop
        self.generator = generator
        self.stats = stats
        self.base: Optional[List[int]] = None  # hypothesised committed tokens after this round
        self.tokens: List[int] = []
        self.ids: List[int] = []
        self.probs: List[float] = []
        self.ms = 0.0
        self.switches = 0

    # -- hypotheses ----------------------------------------------------------------------------
    def _count(self, base: List[int]) -> int:
        if not base or base[-1] in self.stop or len(base) >= self.cfg.max_new_tokens:
            return 0
        return max(0, min(self.cfg.gamma, self.cfg.max_new_tokens - len(base) - 1))

    def aim(self, base: List[int]) -> None:
        """Pre-draft after ``base`` from now on (keeps the work when ``base`` is unchanged)."""
        if self.base == base:
            return
        if self.base is not None:
            self.switches += 1
        self.base, self.tokens, self.ids, self.probs, self.ms = list(base), [], [], [], 0.0

    def aim_full_acceptance(self, committed: List[int], block_tokens: List[int]) -> None:
        """Hypothesis before any hint: the whole block accepted, bonus = the draft's next token."""
        if not block_tokens or any(t in self.stop for t in block_tokens):
            return
        t = time.perf_counter()
        with torch.inference_mode():
            pending = self.draft.sync(self.state, committed + block_tokens)
            logits = self.draft.forward(self.state, pending, keep=1)[-1]
        self.stats.draft_forward_passes += 1
        self._spend(t)
        self.aim(committed + block_tokens + [int(torch.argmax(logits))])

    # -- work ------------------------------------------------------------------------------------
    @property
    def complete(self) -> bool:
        return self.base is None or len(self.tokens) >= self._count(self.base) or (
            bool(self.tokens) and self.tokens[-1] in self.stop)

    def step(self) -> None:
        """Draft one more token on the current hypothesis."""
        if self.complete:
            return
        t = time.perf_counter()
        with torch.inference_mode():
            pending = self.draft.sync(self.state, self.base + self.tokens)
            logits = self.draft.forward(self.state, pending, keep=1)[-1]
        if self.cfg.do_sample:
            token, top_ids, top_probs = draft_sample(logits, self.cfg.temperature, self.k, self.generator)
            self.ids.extend(top_ids)
            self.probs.extend(top_probs)
        else:
            token = int(torch.argmax(logits))
        self.tokens.append(token)
        self.stats.draft_forward_passes += 1
        self._spend(t)

    def finish(self) -> None:
        while not self.complete:
            self.step()

    def _spend(self, t0: float) -> None:
        elapsed = (time.perf_counter() - t0) * 1000
        self.ms += elapsed
        self.stats.draft_ms += elapsed

    def block_for(self, actual: List[int]):
        """The pre-drafted block if it was drafted after ``actual``, completed; else None."""
        if self.base != actual or not self.tokens:
            return None
        self.finish()
        from .drafter import _Block

        if self.cfg.do_sample:
            return _Block(list(self.base), list(self.tokens), self.k, list(self.ids), list(self.probs), self.ms)
        return _Block(list(self.base), list(self.tokens), 1, list(self.tokens), [1.0] * len(self.tokens), self.ms)
