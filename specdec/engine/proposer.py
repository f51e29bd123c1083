"""The edge's proposer: drafts blocks after a committed prefix with the draft model.

One :class:`Proposer` per decision holds what every block of that decision shares (the draft's
decode state, how tokens are picked, stop tokens, the grammar, the token budget) and the length
policy. Blocks are drafted with the one token loop (:class:`TokenLoop`), either all at once
(:meth:`propose`) or step by step while the cloud is busy (pre-drafting: :meth:`open`,
:meth:`extend`, :meth:`finish`).
"""

from __future__ import annotations

import time
from typing import List, Optional

from ..models.adapters import DecodeState, ModelAdapter
from .interfaces import DraftLengthPolicy, DraftProposal
from .token_loop import TokenLoop, TokenPicker


class Proposer:
    def __init__(self, draft: ModelAdapter, state: DecodeState, picker: TokenPicker, stop: frozenset,
                 max_new_tokens: int, policy: DraftLengthPolicy, grammar=None):
        self.draft = draft
        self.state = state
        self.picker = picker
        self.stop = stop
        self.max_new_tokens = max_new_tokens
        self.policy = policy
        self.grammar = grammar
        self.forward_passes = 0
        self.ms = 0.0

    def room(self, base: List[int]) -> int:
        """Most tokens a block after ``base`` may hold: the verifier adds one more token, and
        nothing follows a stop token."""
        if base and base[-1] in self.stop:
            return 0
        return max(0, min(self.policy.max_tokens, self.max_new_tokens - len(base) - 1))

    def open(self, base: List[int]) -> TokenLoop:
        return TokenLoop(self.draft, self.state, base, limit=self.room(base), picker=self.picker, stop=self.stop,
                         grammar=self.grammar)

    def extend(self, loop: TokenLoop, hidden: bool = False) -> bool:
        """One more draft step if the loop has room and the policy wants it."""
        if loop.finished or not self.policy.keep_drafting(loop.confidences, hidden):
            return False
        passes, ms = loop.forward_passes, loop.ms
        loop.step()
        self.forward_passes += loop.forward_passes - passes
        self.ms += loop.ms - ms
        return True

    def finish(self, loop: TokenLoop, hidden_ms: float = 0.0) -> DraftProposal:
        """The loop's tokens as a block, cut to what the policy sends."""
        while self.extend(loop):
            pass
        k = self.picker.recorded
        if k == 1:
            ids, probs = list(loop.tokens), [1.0] * len(loop.tokens)
        else:
            ids, probs = list(loop.topk_ids), list(loop.topk_probs)
        proposal = DraftProposal(list(loop.base), list(loop.tokens), list(loop.confidences), k, ids, probs,
                                 loop.ms, min(hidden_ms, loop.ms), loop.confidences[0] if loop.confidences else None)
        return proposal.truncated(self.policy.tokens_to_send(proposal))

    def propose(self, base: List[int]) -> DraftProposal:
        return self.finish(self.open(base))

    def guess_next(self, base: List[int]) -> Optional[int]:
        """The draft's most likely token after ``base`` (None at a stop or the token budget):
        the guess for the verifier's bonus token when every draft token is accepted."""
        if (base and base[-1] in self.stop) or len(base) + 1 >= self.max_new_tokens:
            return None
        t0 = time.perf_counter()
        loop = TokenLoop(self.draft, self.state, base, limit=1, picker=TokenPicker("greedy", self.picker.params),
                         stop=self.stop, grammar=self.grammar)
        loop.step()
        self.forward_passes += loop.forward_passes
        self.ms += (time.perf_counter() - t0) * 1000
        return loop.tokens[0] if loop.tokens else None
