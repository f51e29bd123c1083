"""The one token loop: autoregressive decoding on a :class:`DecodeState`, one token per step.

Every place that decodes token by token uses :class:`TokenLoop` - the edge drafting a block,
pre-drafting while the cloud verifies, edge-only decisions, the verifier's cloud-only decode and
model evaluation - so stop tokens, limits, grammar constraints and reduced draft heads work the
same everywhere.

A step is one forward pass over the pending tokens (those not in the cache yet) and one token
choice. With a grammar constraint a token the grammar forces (the only one it allows) is
appended *without* a forward pass: it goes into the cache with the next step's tokens.

How the token is chosen is a :class:`TokenPicker`:

* ``greedy`` - the argmax;
* ``propose`` - a draft's sample from its top-``k`` distribution, recorded exactly (ids and
  probabilities) because the verifier's rejection sampling needs it;
* ``sample`` - a sample from the full warped distribution, as ``generate(do_sample=True)``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch

from ..models.adapters import DecodeState, ModelAdapter
from .sampling import SamplingParams, draft_sample, warp_logits


@dataclass
class TokenPicker:
    kind: str  # "greedy" | "propose" | "sample"
    params: SamplingParams
    generator: Optional[torch.Generator] = None
    record_k: int = 1  # "propose": entries of the draft distribution recorded per token
    alternatives: int = 0  # "greedy": next-best tokens recorded after each chosen one (branches to verify)

    def __post_init__(self):
        if self.kind not in ("greedy", "propose", "sample"):
            raise ValueError(f"unknown token picker {self.kind!r}")

    @property
    def recorded(self) -> int:
        """Entries per token in a loop's ``topk_ids`` / ``topk_probs`` (1: none are recorded)."""
        if self.kind == "propose":
            return self.record_k
        return 1 + self.alternatives if self.kind == "greedy" else 1

    @classmethod
    def for_target(cls, params: SamplingParams, generator) -> "TokenPicker":
        """The target's (or an edge-only model's) own choice, as ``generate`` makes it."""
        return cls("sample" if params.do_sample else "greedy", params, generator)

    @classmethod
    def for_draft(cls, params: SamplingParams, generator, record_k: int, alternatives: int = 0) -> "TokenPicker":
        """A draft proposing tokens for verification (greedy: with ``alternatives`` next-best tokens)."""
        if params.do_sample:
            return cls("propose", params, generator, record_k)
        return cls("greedy", params, generator, alternatives=alternatives)

    def pick(self, logits: torch.Tensor, ids: Optional[torch.Tensor] = None,
             allowed: Optional[torch.Tensor] = None) -> Tuple[int, float, List[int], List[float]]:
        """``(token, confidence, topk_ids, topk_probs)`` from one row of logits. ``ids`` maps
        columns to token ids (a reduced head); ``allowed`` masks columns (a grammar)."""
        if allowed is not None:
            logits = logits.masked_fill(~allowed, float("-inf"))
        if self.kind == "greedy":
            column = int(torch.argmax(logits))
            probs = torch.softmax(logits.float(), -1)
            token = column if ids is None else int(ids[column])
            if not self.alternatives:
                return token, float(probs[column]), [token], [1.0]
            top_p, top_c = probs.topk(min(1 + self.alternatives, probs.shape[-1]))
            columns = [column] + [int(c) for c, p in zip(top_c.tolist(), top_p.tolist()) if c != column and p > 0]
            columns = columns[:1 + self.alternatives]  # masked columns (probability 0) are never offered
            tokens = columns if ids is None else ids[torch.tensor(columns)].tolist()
            return token, float(probs[column]), tokens, [float(probs[c]) for c in columns]
        if self.kind == "propose":
            k = min(self.record_k, int(allowed.sum()) if allowed is not None else logits.shape[-1])
            column, columns, probs = draft_sample(logits, self.params.temperature, max(k, 1), self.generator)
            confidence = probs[columns.index(column)]
            if ids is not None:
                column = int(ids[column])
                columns = ids[torch.tensor(columns)].tolist()
            return column, confidence, columns, probs
        probs = torch.softmax(warp_logits(logits, self.params.temperature, self.params.top_k), dim=-1)
        column = int(torch.multinomial(probs.cpu(), 1, generator=self.generator))
        token = column if ids is None else int(ids[column])
        return token, float(probs[column]), [token], [1.0]


class TokenLoop:
    """Decodes after ``prompt + base`` on ``state`` (rolling its cache back where it diverges)."""

    def __init__(self, adapter: ModelAdapter, state: DecodeState, base: Sequence[int], *, limit: int,
                 picker: TokenPicker, stop: frozenset = frozenset(), grammar=None):
        self.adapter = adapter
        self.state = state
        self.base = list(base)
        self.limit = max(0, int(limit))
        self.picker = picker
        self.stop = stop
        self.grammar = grammar
        self.grammar_state = grammar.state_after(self.base) if grammar is not None else None
        self.tokens: List[int] = []
        self.confidences: List[float] = []
        self.topk_ids: List[int] = []
        self.topk_probs: List[float] = []
        self.forward_passes = 0
        self.ms = 0.0
        self._pending: Optional[List[int]] = None  # set by the first step (sync may roll back)

    @property
    def finished(self) -> bool:
        if len(self.tokens) >= self.limit:
            return True
        if self.tokens and self.tokens[-1] in self.stop:
            return True
        return self.grammar is not None and self.grammar.is_dead(self.grammar_state)

    def step(self) -> None:
        """One more token (one forward pass, or none when the grammar forces the token)."""
        if self.finished:
            return
        t0 = time.perf_counter()
        feed = self.next_feed()
        if feed is not None:
            self.take(self.adapter.forward_hidden(self.state, feed, keep=1))
        self.ms += (time.perf_counter() - t0) * 1000

    def next_feed(self) -> Optional[List[int]]:
        """The tokens the next forward pass must feed - or None after appending a token the
        grammar forces (no pass needed). With :meth:`take` this lets a caller run the pass itself,
        batched with other sequences (the verifier's cloud-only decodes)."""
        if self._pending is None:
            self._pending = self.adapter.sync(self.state, self.base + self.tokens)
        forced = self.grammar.forced(self.grammar_state) if self.grammar is not None else None
        if forced is None:
            return self._pending
        self._pending.append(forced)
        self._append(forced, 1.0, [forced], [1.0])
        return None

    def take(self, hidden: torch.Tensor) -> None:
        """Choose the next token from the pass's final hidden state (the row after the feed)."""
        self.forward_passes += 1
        logits = self.adapter.head_logits(hidden[-1:])[0]
        allowed = None
        if self.grammar is not None:
            allowed = self.grammar.allowed(self.grammar_state, self.adapter.head_ids, logits.device)
        token, confidence, ids, probs = self.picker.pick(logits, self.adapter.head_ids, allowed)
        self._pending = [token]
        self._append(token, confidence, ids, probs)
        self.adapter.settle()  # the token is known: an emulated device would be done only now

    def _append(self, token: int, confidence: float, ids: List[int], probs: List[float]) -> None:
        if self.grammar is not None:
            self.grammar_state = self.grammar.advance(self.grammar_state, token)
        self.tokens.append(token)
        self.confidences.append(confidence)
        k = self.picker.recorded
        if k > 1:  # sampling: the exact distribution; greedy: the next-best tokens; padded to k per token
            self.topk_ids.extend(ids + [ids[0]] * (k - len(ids)))
            self.topk_probs.extend(probs + [0.0] * (k - len(probs)))

    def run(self) -> "TokenLoop":
        while not self.finished:
            self.step()
        return self
