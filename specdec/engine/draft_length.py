"""How many tokens to draft per block: fixed, a confidence stop, or adaptive.

A drafted token pays only if the target accepts it, and every token the edge drafts and the
cloud verifies costs time: draft steps on the edge (unless they overlap with the cloud's work),
and a longer verification pass. Three policies:

* :class:`FixedLength` - always ``gamma`` tokens (the paper's setting).
* :class:`ConfidenceStop` - ``gamma`` at most, but stop after a token whose draft probability is
  below ``threshold`` (transformers' ``assistant_confidence_threshold``).
* :class:`AdaptiveLength` - after each drafted token, continue only while the expected committed
  tokens per second of the round still grow, from what it measures: the draft's cost per token,
  the verifier's cost for a block of ``n`` tokens, the link's round trip, and how often tokens of
  a given draft confidence are accepted (a calibration table learnt online). A slow link makes
  every round expensive, so it drafts longer blocks; a cheap verification of long blocks (a GPU)
  does too; a draft that is rarely right drafts little or nothing (an empty block is a plain
  target decode step).

All three only choose how many draft tokens are proposed; acceptance stays the verifier's, so
no policy can change the output.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

from .interfaces import DraftLengthPolicy, DraftProposal, RoundOutcome


class FixedLength(DraftLengthPolicy):
    def __init__(self, gamma: int):
        self.max_tokens = int(gamma)

    def keep_drafting(self, confidences: Sequence[float], hidden: bool = False) -> bool:
        return len(confidences) < self.max_tokens


class ConfidenceStop(DraftLengthPolicy):
    def __init__(self, gamma: int, threshold: float):
        self.max_tokens = int(gamma)
        self.threshold = float(threshold)

    def keep_drafting(self, confidences: Sequence[float], hidden: bool = False) -> bool:
        if len(confidences) >= self.max_tokens:
            return False
        return not confidences or confidences[-1] >= self.threshold


class _Ema:
    def __init__(self, alpha: float = 0.2, value: Optional[float] = None):
        self.alpha = alpha
        self.value = value

    def add(self, x: float) -> None:
        self.value = x if self.value is None else self.value + self.alpha * (x - self.value)


class AcceptanceCalibration:
    """P(the target accepts a draft token | the draft's probability of it), learnt online.

    Ten probability bins; each starts with ``prior`` pseudo-observations at the bin's centre (a
    draft that is as calibrated as it claims), so early estimates are sane and measurements take
    over as they come.
    """

    BINS = 10

    def __init__(self, prior: float = 2.0):
        self.prior = prior
        self.accepted = [0.0] * self.BINS
        self.tested = [0.0] * self.BINS

    def _bin(self, confidence: float) -> int:
        return min(self.BINS - 1, max(0, int(confidence * self.BINS)))

    def p_accept(self, confidence: float) -> float:
        b = self._bin(confidence)
        centre = (b + 0.5) / self.BINS
        return (self.accepted[b] + self.prior * centre) / (self.tested[b] + self.prior)

    def observe(self, confidences: Sequence[float], accepted: int) -> None:
        """Tokens before the first rejection were tested and accepted; the first rejected one was
        tested and refused; the rest were never tested."""
        for i, confidence in enumerate(confidences[:accepted + 1]):
            b = self._bin(confidence)
            self.tested[b] += 1
            self.accepted[b] += 1.0 if i < accepted else 0.0


class AdaptiveLength(DraftLengthPolicy):
    """Chooses each block's length to maximise expected committed tokens per second.

    For a block of ``n`` drafted tokens with predicted acceptance ``a_1..a_n`` the round commits
    ``E(n) = 1 + sum_j prod_{i<=j} a_i`` tokens in expectation - plus, when blocks offer the draft's
    next-best tokens, ``h`` for the rejection at ``j`` (probability ``prod_{i<j} a_i (1 - a_j)``),
    ``h`` being how often the target's token there is one of them (measured) - and takes
    ``C(n) = draft + link + verify(n)``. After each drafted token it continues while
    ``E(n+1) / C(n+1) > E(n) / C(n)`` (the next token's acceptance predicted by the last one's),
    and sends the prefix with the best ``E / C``. Until the costs are measured it assumes a
    verification cost that grows by ``verify_growth`` per token.

    ``explore_every``: rounds that would draft nothing still draft one token every this many
    rounds, so acceptance estimates keep up with what the draft can do.
    """

    def __init__(self, max_tokens: int = 8, *, verify_growth: float = 0.1, explore_every: int = 8):
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1 (got {max_tokens})")
        self.max_tokens = int(max_tokens)
        self.verify_growth = verify_growth
        self.explore_every = explore_every
        self.calibration = AcceptanceCalibration()
        self.alternative_hits = [0.0, 2.0]  # [taken, rejections where they were offered], a pessimistic prior
        self.first_confidences: List[float] = []  # recent first-token confidences (what drafting one reveals)
        self.draft_ms = _Ema(0.2)
        self.link_ms = _Ema(0.2)  # send -> result minus the cloud's own time
        self.verify_ms: Dict[int, _Ema] = {}
        self._rounds_without_draft = 0

    # -- cost model ---------------------------------------------------------------------------
    def verify_cost(self, n: int) -> float:
        """Expected verification time of a block of ``n`` draft tokens (ms)."""
        known = {k: e.value for k, e in self.verify_ms.items() if e.value is not None}
        if n in known:
            return known[n]
        if not known:
            return 1.0 + self.verify_growth * n  # relative units until measured
        if len(known) == 1:
            (k, v), = known.items()
            return v * (1 + self.verify_growth * n) / (1 + self.verify_growth * k)
        ks = sorted(known)  # least-squares line through the measured sizes
        mean_k = sum(ks) / len(ks)
        mean_v = sum(known[k] for k in ks) / len(ks)
        var = sum((k - mean_k) ** 2 for k in ks)
        slope = max(0.0, sum((k - mean_k) * (known[k] - mean_v) for k in ks) / var) if var else 0.0
        return max(1e-3, mean_v + slope * (n - mean_k))

    def _fixed_ms(self) -> float:
        return self.link_ms.value or 0.0

    def _draft_cost(self, hidden: bool) -> float:
        if hidden:
            return 0.0
        if self.draft_ms.value is not None:
            return self.draft_ms.value
        return 0.2 * self.verify_cost(0)  # a draft is typically a few times cheaper than the target

    @property
    def alternative_rate(self) -> float:
        """How often the target's token at a rejection was one of the draft's alternatives."""
        taken, tested = self.alternative_hits
        return taken / tested

    def expected_tokens(self, confidences: Sequence[float]) -> List[float]:
        """``E(n)`` for n = 0..len(confidences)."""
        out, running, total, h = [1.0], 1.0, 1.0, self.alternative_rate
        for c in confidences:
            a = self.calibration.p_accept(c)
            total += running * (1 - a) * h  # rejected here, but the target took an alternative: one more
            running *= a
            total += running
            out.append(total)
        return out

    # -- policy ------------------------------------------------------------------------------------
    def keep_drafting(self, confidences: Sequence[float], hidden: bool = False) -> bool:
        n = len(confidences)
        if n >= self.max_tokens:
            return False
        step = self._draft_cost(hidden)
        fixed = self._fixed_ms() + n * step
        if n == 0:
            return self._worth_a_first_token(fixed, step)
        e = self.expected_tokens([*confidences, confidences[-1]])  # the next token's predicted by the last one's
        now = e[-2] / (fixed + self.verify_cost(n))
        more = e[-1] / (fixed + step + self.verify_cost(n + 1))
        return more > now

    def _worth_a_first_token(self, fixed: float, step: float) -> bool:
        """Draft a block's first token? Drafting it reveals its confidence, and the block is sent
        empty (a plain target step) if that is low; so compare the rate without drafting with the
        expected rate over recent first-token confidences, each with the better of send / drop."""
        if self._rounds_without_draft + 1 >= self.explore_every or not self.first_confidences:
            return True
        without = 1.0 / (fixed + self.verify_cost(0))
        drop = 1.0 / (fixed + step + self.verify_cost(0))
        expected = 0.0
        for c in self.first_confidences:
            expected += max(drop, self.expected_tokens([c])[1] / (fixed + step + self.verify_cost(1)))
        return expected / len(self.first_confidences) > without

    def tokens_to_send(self, proposal: DraftProposal) -> int:
        e = self.expected_tokens(proposal.confidences)
        fixed = self._fixed_ms() + max(0.0, proposal.draft_ms - proposal.hidden_ms)
        best, best_rate = 0, -1.0
        for n, expected in enumerate(e):
            rate = expected / (fixed + self.verify_cost(n))
            if rate > best_rate * (1 + 1e-9):
                best, best_rate = n, rate
        return best

    def observe(self, outcome: RoundOutcome) -> None:
        self._rounds_without_draft = 0 if outcome.drafted else self._rounds_without_draft + 1
        if outcome.drafted:
            kept = outcome.accepted - outcome.alternative  # the drafted tokens the target took
            self.calibration.observe(outcome.confidences, kept)
            if outcome.offered_alternatives and kept < outcome.drafted:
                self.alternative_hits[0] += outcome.alternative
                self.alternative_hits[1] += 1
        if outcome.first_confidence is not None:
            self.first_confidences = (self.first_confidences + [outcome.first_confidence])[-64:]
        if outcome.draft_ms_per_token > 0:
            self.draft_ms.add(outcome.draft_ms_per_token)
        if outcome.with_prefill:
            return  # a prefill's time says nothing about a round's verification or the link
        if outcome.verify_ms > 0:
            self.verify_ms.setdefault(outcome.drafted, _Ema(0.2)).add(outcome.verify_ms)
        self.link_ms.add(max(0.0, outcome.wait_ms - outcome.verify_ms - outcome.queue_ms))


def make_policy(kind: str, gamma: int, threshold: float = 0.4) -> DraftLengthPolicy:
    """``kind``: "fixed" | "confidence" | "adaptive" (``gamma`` is the longest block)."""
    if kind == "fixed":
        return FixedLength(gamma)
    if kind == "confidence":
        return ConfidenceStop(gamma, threshold)
    if kind == "adaptive":
        return AdaptiveLength(gamma)
    raise ValueError(f"draft_length must be 'fixed', 'confidence' or 'adaptive', got {kind!r}")
