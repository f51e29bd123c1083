"""Edge <-> cloud protocol, version 2, as plain dataclasses.

This module is the single source of truth for the protocol's fields. The ROS
interface package (``msg/msg/*.msg``) mirrors it field for field (a test checks
that), the ROS nodes convert between the two by field name, and the remote
(network) transport serialises these dataclasses directly. Nothing here imports
ROS or torch.

Design notes
------------
* Every message carries ``protocol_version``, ``session_id`` and ``seq``.
  ``seq`` is the sender's per-link sequence number: a receiver drops a message
  whose ``seq`` it has already seen (duplicate) and can detect reordering.
* Decoding positions are counted in generated tokens: ``position`` is the number
  of tokens already committed (accepted by the target) when a block starts.
* Greedy and sampling share one message shape: a draft block carries, for each
  drafted position, the draft's top-k truncated distribution it sampled from
  (``topk_ids``/``topk_probs``, ``k`` entries per position). With that sparse
  distribution the verifier's rejection sampling is exact. Greedy sends k=1
  with probability 1.
* The verifier's target has already consumed the prompt; each block is verified
  in one forward pass over ``[last committed token] + tokens``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import IntEnum
from typing import ClassVar, Dict, List, Type

PROTOCOL_VERSION = 4  # 2: SessionStart.prefill_wait_ms / grammar / cloud_finish_tokens, VerifyResult.continued;
# 3: SessionStart.return_states, VerifyResult.target_states (feature drafts);
# 4: greedy blocks may carry the draft's next-best tokens (topk > 1), VerifyResult.alternative


class DecodingMode(IntEnum):
    """How a decision is decoded (selectable per run)."""

    SPECULATIVE_EARLY_EXIT = 0  # speculative + early-exit hints + pre-drafting (default)
    SPECULATIVE = 1  # plain edge-cloud speculative decoding
    CLOUD_ONLY = 2  # edge sends image + prompt, the cloud decodes autoregressively
    EDGE_ONLY = 3  # the draft alone, no cloud


class EndReason(IntEnum):
    """Why a session ended (SessionEnd.reason)."""

    COMPLETED = 0
    CANCELLED = 1
    TIMEOUT = 2
    PROTOCOL_VERSION_MISMATCH = 3
    TOKENIZER_MISMATCH = 4
    UNKNOWN_SESSION = 5
    BAD_REQUEST = 6
    INTERNAL_ERROR = 7
    UNAUTHORIZED = 8
    OVERLOADED = 9


class FinishReason(IntEnum):
    """Why generation stopped (VerifyResult.finish_reason)."""

    NOT_FINISHED = 0
    STOP_TOKEN = 1
    MAX_NEW_TOKENS = 2


@dataclass
class Message:
    """Fields every protocol message carries."""

    protocol_version: int = PROTOCOL_VERSION
    session_id: str = ""
    seq: int = 0

    KIND: ClassVar[str] = ""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Message":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ProtocolError(f"{cls.__name__}: unknown fields {sorted(unknown)}")
        return cls(**data)


class ProtocolError(ValueError):
    """A message that is malformed or violates the protocol."""


@dataclass
class SessionStart(Message):
    """Edge -> cloud: open a decoding session for one decision."""

    KIND: ClassVar[str] = "session_start"
    robot_id: str = ""
    prompt: str = ""  # instruction text; both sides apply the same chat template
    tokenizer_fingerprint: str = ""  # see specdec.models.fingerprint; mismatch is refused
    image_format: str = ""  # "png" (lossless, so both sides see the same pixels) or "" for none
    image_data: bytes = b""  # encoded image the model conditions on
    mode: int = int(DecodingMode.SPECULATIVE_EARLY_EXIT)
    max_new_tokens: int = 32
    gamma: int = 4  # most draft tokens per block (blocks may be shorter: draft-length control)
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0  # draft/target truncation for sampling; 0 = full vocabulary
    seed: int = 0  # seeds the verifier's acceptance sampling
    stop_token_ids: List[int] = field(default_factory=list)
    # Block 0 follows within this many ms: hold the prefill for it and verify it in the same
    # forward pass (one pass instead of two for a short answer); 0 = prefill at once.
    prefill_wait_ms: float = 0.0
    grammar: str = ""  # constrain draft and target to this output grammar ("" = none; see engine.grammar)
    # After verifying a block the cloud decodes up to this many more tokens itself (fewer when the
    # answer ends): a short answer is finished without another round trip; 0 = never.
    cloud_finish_tokens: int = 0
    # The draft is conditioned on the target's hidden state (specdec.models.feature_draft): every
    # result carries the target's final states of the positions it committed.
    return_states: bool = False


@dataclass
class DraftBlock(Message):
    """Edge -> cloud: gamma draft tokens to verify in one target forward pass."""

    KIND: ClassVar[str] = "draft_block"
    round: int = 0  # verification round, 0-based, one block per round
    position: int = 0  # generated tokens committed before this block
    tokens: List[int] = field(default_factory=list)
    # entries per drafted position in topk_ids / topk_probs. Sampling: the draft's distribution.
    # Greedy: 1, or 1 + the draft's next-best tokens at each position, which the cloud verifies in
    # the same pass as branches (VerifyResult.alternative)
    topk: int = 1
    topk_ids: List[int] = field(default_factory=list)  # len(tokens) * topk
    topk_probs: List[float] = field(default_factory=list)  # draft probabilities, same layout
    predrafted: bool = False  # drafted on an early-exit hint before the last result came
    draft_ms: float = 0.0  # edge time spent drafting this block


@dataclass
class EarlyExitHint(Message):
    """Cloud -> edge, mid-verification: the exit head's guess of the result."""

    KIND: ClassVar[str] = "early_exit_hint"
    round: int = 0
    position: int = 0
    exit_layer: int = 0  # decoder layer index whose output the exit head read
    predicted_accepted: int = 0  # guessed number of accepted draft tokens
    predicted_next_token: int = 0  # guessed corrected / bonus token
    confidence: float = 0.0  # exit head's probability of the outcome it names (count and token), 0..1
    exit_ms: float = 0.0  # time from verification start to this hint


@dataclass
class VerifyResult(Message):
    """Cloud -> edge: the target's verdict on a draft block."""

    KIND: ClassVar[str] = "verify_result"
    round: int = 0
    position: int = 0
    accepted: int = 0  # draft tokens accepted, 0..len(tokens)
    next_token: int = 0  # corrected token (accepted < len) or bonus token
    # -1, or the draft's next-best token (a greedy block's topk_ids) that the target chose in place of
    # tokens[accepted - 1]: committed are tokens[:accepted - 1] + [alternative] + [next_token]
    alternative: int = -1
    finished: bool = False  # generation ended with next_token (or the last continued token)
    finish_reason: int = int(FinishReason.NOT_FINISHED)
    queue_ms: float = 0.0  # time the block waited at the server
    verify_ms: float = 0.0  # target forward + acceptance
    target_forward_passes: int = 0  # for this session so far (cost accounting)
    # tokens the cloud decoded itself after next_token (SessionStart.cloud_finish_tokens), committed too
    continued: List[int] = field(default_factory=list)
    # SessionStart.return_states: fp16 rows [accepted + 1, hidden] - the target's final normed hidden
    # state at the last token committed before this block and at each accepted token
    target_states: bytes = b""


@dataclass
class SessionEnd(Message):
    """Either direction: the session is over (normal end or error)."""

    KIND: ClassVar[str] = "session_end"
    reason: int = int(EndReason.COMPLETED)
    detail: str = ""  # human-readable reason
    tokens: List[int] = field(default_factory=list)  # generated tokens (cloud-only output)
    target_forward_passes: int = 0
    cloud_compute_ms: float = 0.0


MESSAGE_TYPES: Dict[str, Type[Message]] = {
    cls.KIND: cls for cls in (SessionStart, DraftBlock, EarlyExitHint, VerifyResult, SessionEnd)
}


def message_from_dict(kind: str, data: dict) -> Message:
    """Build the message of ``kind`` from a dict, refusing unknown kinds or fields."""
    try:
        cls = MESSAGE_TYPES[kind]
    except KeyError:
        raise ProtocolError(f"unknown message kind {kind!r}") from None
    msg = cls.from_dict(data)
    if msg.protocol_version != PROTOCOL_VERSION:
        raise ProtocolError(
            f"protocol version {msg.protocol_version} not supported (this side speaks {PROTOCOL_VERSION})"
        )
    return msg
