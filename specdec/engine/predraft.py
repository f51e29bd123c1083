"""Pre-drafting: what the edge drafts while the cloud verifies a block.

Three :class:`~specdec.engine.interfaces.PredraftStrategy` implementations:

* :class:`NoPredraft` - plain speculative decoding: the edge waits for the result.
* :class:`HintPredraft` - the paper's policy: when an early-exit hint arrives, draft the whole
  next block from the hinted outcome (``committed + block[:predicted_accepted] +
  predicted_next_token``) at once; keep it if the result agrees.
* :class:`EagerPredraft` - ours: never idle. Right after a block is sent, pre-draft on the
  full-acceptance hypothesis (every token accepted, the bonus token equal to the draft's own next
  prediction); when a hint names another outcome, switch to it (work on a shared prefix stays in
  the draft cache); draft one token at a time so the edge looks at the transport between steps,
  and stop the moment the result arrives.

Every later hint of the same round (one per exit layer, deeper ones more accurate) re-aims the
pre-draft when it disagrees with the earlier one. Only what the edge drafts next depends on
these guesses: committed tokens come from the verifier's result alone, so the output is
unchanged (greedy: identical tokens; sampling: each drafted token is still drawn from the
draft's distribution given the prefix it is used after).
"""

from __future__ import annotations

from typing import List, Optional

from .interfaces import DraftProposal, PredraftStrategy
from .proposer import Proposer


def hint_saving_ms(right: float, depth: float, verify_ms: float, redraft_ms: float, exit_ms: float = 0.0,
                   wrong: float = 0.0) -> float:
    """Time one exit layer's hints are expected to save per round - the measure to choose a hint layer
    (and the confidence a hint needs, ``DecodeConfig.hint_min_confidence``) by: how early it fires x
    how often it is right. A right hint lets the edge draft the next block while the rest of the pass
    runs (``1 - depth`` of ``verify_ms``; hint and result take the same trip back, so the link adds
    nothing), up to the block's own drafting time ``redraft_ms``. ``right`` / ``wrong``: the fractions
    of rounds with a right / wrong hint acted on. The paper's policy drafts a whole block on a hint and
    cannot stop at the result, so a wrong one delays the real block by what its drafting runs past the
    result (an interruptible pre-draft, ``eager``, stops there: pass ``wrong=0``). ``exit_ms``: what
    computing the hint adds to the pass. Below zero: do not hint."""
    rest = max(0.0, 1.0 - depth) * verify_ms
    return right * min(redraft_ms, rest) - wrong * max(0.0, redraft_ms - rest) - exit_ms


class NoPredraft(PredraftStrategy):
    def on_send(self, committed: List[int], block: DraftProposal) -> None:
        pass

    def on_hint(self, hinted: Optional[List[int]]) -> None:
        pass

    def take(self, committed: List[int]) -> Optional[DraftProposal]:
        return None


class HintPredraft(PredraftStrategy):
    """The paper: a whole block drafted on each (new) hinted outcome."""

    def __init__(self, proposer: Proposer):
        self.proposer = proposer
        self.ready: Optional[DraftProposal] = None
        self.predrafts = 0  # rounds that ended with a pre-drafted block (kept or not)

    def on_send(self, committed: List[int], block: DraftProposal) -> None:
        self.ready = None

    def on_hint(self, hinted: Optional[List[int]]) -> None:
        if hinted is None or (self.ready is not None and self.ready.base == hinted):
            return
        if self.proposer.room(hinted) == 0:
            return
        self.ready = self.proposer.propose(hinted)
        self.ready.hidden_ms = self.ready.draft_ms  # drafted while the cloud verified

    def take(self, committed: List[int]) -> Optional[DraftProposal]:
        ready, self.ready = self.ready, None
        if ready is None or not ready.tokens:
            return None
        self.predrafts += 1
        return ready if ready.base == committed else None


class EagerPredraft(PredraftStrategy):
    """Ours: pre-draft from the moment a block is sent, one interruptible step at a time."""

    def __init__(self, proposer: Proposer):
        self.proposer = proposer
        self.loop = None
        self.predrafts = 0  # rounds that ended with pre-drafted tokens (kept or not)

    def _aim(self, base: Optional[List[int]]) -> None:
        if base is None or self.proposer.room(base) == 0:
            self.loop = None
        elif self.loop is None or self.loop.base != base:
            self.loop = self.proposer.open(base)

    def on_send(self, committed: List[int], block: DraftProposal) -> None:
        self.loop = None
        base = committed + block.tokens  # an empty block is a plain target step: guess its token
        bonus = self.proposer.guess_next(base)
        self._aim(None if bonus is None else base + [bonus])

    def on_hint(self, hinted: Optional[List[int]]) -> None:
        self._aim(hinted)

    def has_work(self) -> bool:
        loop = self.loop
        return loop is not None and not loop.finished and self.proposer.policy.keep_drafting(loop.confidences, True)

    def work(self) -> None:
        self.proposer.extend(self.loop, hidden=True)

    def take(self, committed: List[int]) -> Optional[DraftProposal]:
        loop, self.loop = self.loop, None
        if loop is None or not loop.tokens:
            return None
        self.predrafts += 1
        if loop.base != committed:
            return None
        return self.proposer.finish(loop, hidden_ms=loop.ms)  # what follows is drafted in the open


def make_strategy(kind: str, proposer: Proposer) -> PredraftStrategy:
    """``kind``: "none" | "hint" (the paper's) | "eager" (ours)."""
    if kind == "none":
        return NoPredraft()
    if kind == "hint":
        return HintPredraft(proposer)
    if kind == "eager":
        return EagerPredraft(proposer)
    raise ValueError(f"predraft_policy must be 'hint' or 'eager', got {kind!r}")
