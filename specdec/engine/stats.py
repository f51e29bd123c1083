"""Instrumentation of one decoded decision.

:class:`DecisionStats` uses the field names of ``msg/msg/DecisionStats.msg`` so a
ROS node can copy them (:meth:`DecisionStats.to_msg_fields`); it also keeps the
per-round log (:class:`RoundStats`) and a few derived rates.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

# Field names of msg/msg/DecisionStats.msg, in order.
MSG_FIELDS = (
    "mode",
    "latency_ms",
    "new_tokens",
    "rounds",
    "drafted_tokens",
    "accepted_tokens",
    "acceptance_rate",
    "hints",
    "hints_correct",
    "predrafts",
    "predraft_hits",
    "target_forward_passes",
    "draft_ms",
    "wait_ms",
    "cloud_compute_ms",
    "bytes_sent",
    "bytes_received",
)


@dataclass
class RoundStats:
    """One verification round as the edge saw it."""

    round: int
    position: int  # generated tokens committed before the block
    drafted: int  # draft tokens in the block
    accepted: int = 0  # as the result says it (the protocol's count)
    kept: int = 0  # drafted tokens the answer keeps (below)
    alternative: bool = False  # the result took one of the draft's next-best tokens (VerifyResult.alternative)
    next_token: int = -1
    predrafted: bool = False  # the block was drafted on the previous round's hint
    draft_ms: float = 0.0  # edge time drafting this block (0 extra when pre-drafted)
    wait_ms: float = 0.0  # edge blocked waiting for this result (not overlapped with pre-drafting)
    queue_ms: float = 0.0  # as reported by the verifier
    verify_ms: float = 0.0  # as reported by the verifier
    hint: bool = False  # an early-exit hint arrived for this round
    hint_accepted: int = -1  # first hint's predicted accepted count
    hint_next_token: int = -1
    hint_confidence: float = 0.0
    hint_correct: bool = False  # the first hint named the exact result
    exit_ms: float = 0.0  # verifier's time from verification start to the first hint
    hint_lead_ms: float = 0.0  # how long before the result the first hint arrived at the edge
    predraft_ms: float = 0.0  # edge time spent pre-drafting on hints as they arrived (the paper's policy)
    elapsed_ms: float = 0.0  # send -> result at the edge
    continued: int = 0  # tokens the cloud decoded itself after next_token (cloud_finish_tokens)
    # every hint of the round, in arrival order (one per exit layer):
    # (layer, accepted, next token, correct, the exit's probability of that outcome)
    layer_hints: List[Tuple[int, int, int, bool, float]] = field(default_factory=list)
    _hint_at: float = field(default=0.0, repr=False, compare=False)

    def add_hint(self, hint, predraft_ms: float = 0.0) -> None:
        """An ``EarlyExitHint`` for this round arrived (its correctness is known at the result)."""
        if not self.hint:
            self.hint = True
            self.hint_accepted = hint.predicted_accepted
            self.hint_next_token = hint.predicted_next_token
            self.hint_confidence = hint.confidence
            self.exit_ms = hint.exit_ms
            self._hint_at = time.perf_counter()
        self.predraft_ms += predraft_ms
        self.layer_hints.append((hint.exit_layer, hint.predicted_accepted, hint.predicted_next_token, False,
                                 hint.confidence))

    def set_result(self, result, blocked_ms: float, elapsed_ms: float, block: Sequence[int] = ()) -> None:
        """The round's ``VerifyResult`` for the drafted ``block``; scores the hints against it.

        ``kept`` counts the drafted tokens the target agreed with. It is ``accepted``, plus one when
        the result's own token is the block's next drafted token: a block cut at its stop token or
        at ``max_new_tokens`` names its last kept token as ``next_token`` (the protocol always
        names one), so a perfect draft of ``left 30 <|im_end|>`` has accepted 2 and kept 3. A result
        that took one of the draft's alternatives (``alternative``) kept the drafted tokens before it."""
        self.accepted = result.accepted
        self.alternative = result.alternative != -1
        if self.alternative:  # the last accepted token is a next-best one: the drafted one there was not kept
            self.kept = result.accepted - 1
        else:
            self.kept = result.accepted + int(result.accepted < len(block) and block[result.accepted] == result.next_token)
        self.next_token = result.next_token
        self.continued = len(result.continued)
        self.queue_ms = result.queue_ms
        self.verify_ms = result.verify_ms
        self.wait_ms = blocked_ms
        self.elapsed_ms = elapsed_ms
        right = (result.accepted, result.next_token)
        self.layer_hints = [(layer, a, t, (a, t) == right, p) for layer, a, t, _, p in self.layer_hints]
        if self.hint:
            self.hint_correct = (self.hint_accepted, self.hint_next_token) == right
            self.hint_lead_ms = (time.perf_counter() - self._hint_at) * 1000

    @property
    def full_accept(self) -> bool:
        return self.drafted > 0 and self.kept == self.drafted

    @property
    def first_rejected(self) -> bool:
        return self.drafted > 0 and self.kept == 0


@dataclass
class DecisionStats:
    """Statistics of one decoded decision (names as in DecisionStats.msg)."""

    mode: int = 0
    latency_ms: float = 0.0
    new_tokens: int = 0
    rounds: int = 0
    drafted_tokens: int = 0
    accepted_tokens: int = 0
    acceptance_rate: float = 0.0
    hints: int = 0
    hints_correct: int = 0
    predrafts: int = 0
    predraft_hits: int = 0
    target_forward_passes: int = 0
    draft_ms: float = 0.0
    wait_ms: float = 0.0
    cloud_compute_ms: float = 0.0
    bytes_sent: int = 0
    bytes_received: int = 0
    # not in the message
    draft_forward_passes: int = 0
    verify_ms: float = 0.0  # sum of the verifier's per-round verify_ms
    prefill_ms: float = 0.0  # edge prefill (draft) time
    image_bytes: int = 0  # the camera frame as sent (after downscaling and encoding)
    finish_reason: int = 0
    round_log: List[RoundStats] = field(default_factory=list)

    # -- derived ---------------------------------------------------------------------------
    def finalize(self) -> "DecisionStats":
        self.rounds = len(self.round_log) if self.round_log else self.rounds
        if self.round_log:
            self.drafted_tokens = sum(r.drafted for r in self.round_log)
            self.accepted_tokens = sum(r.kept for r in self.round_log)
            self.hints = sum(r.hint for r in self.round_log)
            self.hints_correct = sum(r.hint_correct for r in self.round_log)
            self.verify_ms = sum(r.verify_ms for r in self.round_log)
        self.acceptance_rate = self.accepted_tokens / self.drafted_tokens if self.drafted_tokens else 0.0
        return self

    @property
    def hint_accuracy(self) -> float:
        return self.hints_correct / self.hints if self.hints else 0.0

    @property
    def predraft_hit_rate(self) -> float:
        return self.predraft_hits / self.predrafts if self.predrafts else 0.0

    @property
    def tokens_per_round(self) -> float:
        return self.new_tokens / self.rounds if self.rounds else 0.0

    @property
    def full_accept_rounds(self) -> int:
        return sum(r.full_accept for r in self.round_log)

    @property
    def partial_accept_rounds(self) -> int:
        return sum(0 < r.kept < r.drafted for r in self.round_log)

    @property
    def first_reject_rounds(self) -> int:
        return sum(r.first_rejected for r in self.round_log)

    def to_msg_fields(self) -> Dict[str, object]:
        """The DecisionStats.msg fields, ready to copy into the ROS message."""
        return {name: getattr(self, name) for name in MSG_FIELDS}

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out.update(hint_accuracy=self.hint_accuracy, predraft_hit_rate=self.predraft_hit_rate,
                   tokens_per_round=self.tokens_per_round)
        return out

    @staticmethod
    def merge(items: List["DecisionStats"]) -> "DecisionStats":
        """Sum of several decisions (rates recomputed; latency summed; round logs concatenated)."""
        total = DecisionStats(mode=items[0].mode if items else 0)
        for s in items:
            for name in ("latency_ms", "new_tokens", "rounds", "drafted_tokens", "accepted_tokens", "hints",
                         "hints_correct", "predrafts", "predraft_hits", "target_forward_passes", "draft_ms",
                         "wait_ms", "cloud_compute_ms", "bytes_sent", "bytes_received", "draft_forward_passes",
                         "verify_ms", "prefill_ms", "image_bytes"):
                setattr(total, name, getattr(total, name) + getattr(s, name))
            total.round_log.extend(s.round_log)
        total.acceptance_rate = total.accepted_tokens / total.drafted_tokens if total.drafted_tokens else 0.0
        return total


@dataclass
class VerifierStats:
    """Cloud-side totals over all sessions of a verifier."""

    sessions_started: int = 0
    sessions_refused: int = 0
    sessions_completed: int = 0
    sessions_timed_out: int = 0
    rounds: int = 0
    target_forward_passes: int = 0
    compute_ms: float = 0.0
    hints_sent: int = 0
    head_rows: int = 0  # LM-head rows computed at verification (lazily: up to the first rejection)
    branch_hits: int = 0  # rounds that committed one of the draft's alternatives (and the token after it)
    continued_tokens: int = 0  # tokens the cloud decoded itself after verified blocks (cloud_finish_tokens)
    batches: int = 0  # forward passes that verified, decoded or whole-prefilled for sessions (batched or alone)
    batched_rows: int = 0  # sessions served by those passes (batched_rows / batches: mean batch size)
    duplicates: int = 0  # duplicate blocks: answered from the result cache, or dropped while the original is queued
    stale: int = 0  # stale/unknown messages ignored
    errors: int = 0  # protocol errors answered with SessionEnd
    last_error: Optional[str] = None


def hint_outcomes_by_layer(stats: Sequence["DecisionStats"]) -> Dict[int, List[Tuple[float, bool]]]:
    """Progressive hints: for each exit layer, ``(confidence, right)`` of every hint it sent over the
    rounds of ``stats`` (a hint is right when it named the round's exact result)."""
    out: Dict[int, List[Tuple[float, bool]]] = {}
    for decision in stats:
        for r in decision.round_log:
            for layer, _, _, correct, confidence in r.layer_hints:
                out.setdefault(layer, []).append((confidence, correct))
    return dict(sorted(out.items()))


def hint_accuracy_by_layer(stats: Sequence["DecisionStats"]) -> Dict[int, Tuple[int, int]]:
    """For each exit layer, ``(hints right, hints sent)``."""
    return {layer: (sum(right for _, right in hints), len(hints))
            for layer, hints in hint_outcomes_by_layer(stats).items()}
