"""The engine's small interfaces: what a draft proposal is, and the two strategy slots of the
edge loop (how long to draft, what to pre-draft while the cloud verifies).

The edge loop (:class:`specdec.engine.drafter.EdgeDecoder`) reads send -> await -> commit; every
decision about *what* to draft lives behind one of these interfaces, so a new policy is a new
class, not a new branch in the loop:

* :class:`DraftLengthPolicy` - after each drafted token: draft one more? And how many of the
  drafted tokens to send (implementations in ``draft_length.py``: fixed gamma, a confidence
  stop, and the adaptive controller that maximises expected committed tokens per second).
* :class:`PredraftStrategy` - work the edge does while a block is being verified (``predraft.py``:
  none, the paper's draft-on-hint, and our eager interruptible pre-drafting).

Only the verifier's result decides what is committed; strategies only decide what is drafted
next, so none of them can change the output.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import List, Optional, Sequence


@dataclass
class DraftProposal:
    """A block of draft tokens proposed after ``base`` (the committed tokens it continues)."""

    base: List[int]
    tokens: List[int]
    confidences: List[float]  # draft probability of each token (the adaptive controller's predictor)
    topk: int = 1  # entries per token in topk_ids / topk_probs (the exact draft distribution when sampling)
    topk_ids: List[int] = field(default_factory=list)
    topk_probs: List[float] = field(default_factory=list)
    draft_ms: float = 0.0  # edge time spent drafting it
    hidden_ms: float = 0.0  # of which drafted while the cloud was busy with the previous block
    first_confidence: Optional[float] = None  # of the first token drafted, sent or not

    def truncated(self, n: int) -> "DraftProposal":
        """The first ``n`` tokens (the rest are not sent)."""
        if n >= len(self.tokens):
            return self
        k = self.topk
        return DraftProposal(list(self.base), self.tokens[:n], self.confidences[:n], k, self.topk_ids[:n * k],
                             self.topk_probs[:n * k], self.draft_ms, self.hidden_ms, self.first_confidence)


@dataclass
class RoundOutcome:
    """What one verification round taught the edge (fed back to the length policy)."""

    drafted: int
    accepted: int
    confidences: Sequence[float]  # of the drafted tokens
    verify_ms: float  # cloud-reported: target forward + acceptance
    queue_ms: float  # cloud-reported: waiting at the server
    wait_ms: float  # edge: send -> result (network + queue + verification)
    draft_ms_per_token: float  # edge: measured cost of one draft step (0 when unknown)
    first_confidence: Optional[float] = None  # of the block's first drafted token, even if not sent
    # block 0 verified in the cloud's prefill pass (merge_first_block): its times are the prefill's
    with_prefill: bool = False
    offered_alternatives: bool = False  # the block offered the draft's next-best tokens (greedy)
    alternative: bool = False  # the result took one of them (``accepted`` counts it)


class DraftLengthPolicy(ABC):
    """Decides how many tokens the edge drafts and sends per block."""

    #: the longest block this policy ever sends (the session's ``gamma`` on the wire)
    max_tokens: int

    @abstractmethod
    def keep_drafting(self, confidences: Sequence[float], hidden: bool = False) -> bool:
        """Draft one more token after the ones drafted so far (their ``confidences``)?
        ``hidden``: drafting now overlaps with the cloud's work (costs no latency)."""

    def tokens_to_send(self, proposal: DraftProposal) -> int:
        """How many of the proposal's tokens go into the block (default: all)."""
        return len(proposal.tokens)

    def observe(self, outcome: RoundOutcome) -> None:
        """Learn from a finished round (default: nothing)."""


class PredraftStrategy(ABC):
    """Work the edge does while a block is being verified; the next block when it fits."""

    @abstractmethod
    def on_send(self, committed: List[int], block: DraftProposal) -> None:
        """``block`` (continuing ``committed``) was just sent for verification."""

    @abstractmethod
    def on_hint(self, hinted: Optional[List[int]]) -> None:
        """An early-exit hint predicts the committed tokens after this round (None: a hint that
        names an impossible or final outcome: stop pre-drafting)."""

    def has_work(self) -> bool:
        """Something to draft now, instead of blocking on the transport."""
        return False

    def work(self) -> None:
        """Do one small unit of pre-drafting (one draft step) and return."""

    @abstractmethod
    def take(self, committed: List[int]) -> Optional[DraftProposal]:
        """The round ended with ``committed``: the pre-drafted block for it, or None."""
