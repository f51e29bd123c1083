"""Edge side: decodes one decision with the draft model and (optionally) a cloud verifier.

:meth:`EdgeDecoder.decode` serves every :class:`DecodingMode`:

* ``SPECULATIVE_EARLY_EXIT`` (default) and ``SPECULATIVE`` - speculative decoding, the loop of
  :meth:`EdgeDecoder._speculative`:

  1. open the session: ``SessionStart`` (prompt, image, settings) goes out first, so the cloud's
     prefill overlaps with the draft's (with ``merge_first_block`` the cloud holds its prefill for
     block 0 and verifies both in one forward pass);
  2. prefill the draft and propose block 0;
  3. send the block; the pre-draft strategy starts working on the next one;
  4. await the result - early-exit hints (one per exit layer) re-aim the pre-draft when their exit
     is confident enough (``hint_min_confidence``);
  5. commit the accepted draft tokens and the cloud's token; stop on a finished result;
  6. the next block: the pre-drafted one if its guess was right, else a fresh one.

  How long each block is (:mod:`~specdec.engine.draft_length`) and what is drafted while waiting
  (:mod:`~specdec.engine.predraft`) are strategy objects; committed tokens only ever come from
  ``VerifyResult``, so no strategy can change the output.
* ``CLOUD_ONLY`` - send prompt + image; the cloud decodes autoregressively and returns the tokens
  in ``SessionEnd``.
* ``EDGE_ONLY`` - the draft alone, no cloud.

Each wait for the cloud is bounded by ``timeout_s``: a silent cloud raises
:class:`~specdec.transport.base.CloudTimeout`; a session the cloud refuses or ends raises
:class:`CloudError` with the protocol's reason code.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, replace
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from ..models.adapters import ModelAdapter, wrap_model
from ..models.images import WIRE_FORMATS, EncodedImage, ImageLike, encode_image, parse_image_size
from ..protocol import (
    DecodingMode,
    DraftBlock,
    EarlyExitHint,
    EndReason,
    FinishReason,
    Message,
    ProtocolError,
    SessionEnd,
    SessionStart,
    VerifyResult,
)
from ..transport.base import CloudTimeout, EdgeTransport
from .draft_length import make_policy
from .grammar import compile_grammar
from .interfaces import DraftLengthPolicy, DraftProposal, PredraftStrategy, RoundOutcome
from .predraft import NoPredraft, make_strategy
from .proposer import Proposer
from .sampling import SamplingParams, make_generator
from .stats import DecisionStats, RoundStats
from .token_loop import TokenLoop, TokenPicker


def _alternatives(block: DraftProposal, i: int) -> List[int]:
    """The next-best tokens a greedy block offered at position ``i`` (none for a sampled block)."""
    k = block.topk
    if k < 2 or not 0 <= i < len(block.tokens):
        return []
    return [t for t in block.topk_ids[i * k + 1:(i + 1) * k] if t != block.tokens[i]]


def accepted_tokens(block: DraftProposal, result: VerifyResult) -> List[int]:
    """The block's tokens a result commits (before its ``next_token``): the accepted prefix, its
    last token replaced by the alternative the target chose, if any."""
    if result.alternative == -1:
        return list(block.tokens[:result.accepted])
    return list(block.tokens[:result.accepted - 1]) + [result.alternative]


class CloudError(RuntimeError):
    """The cloud refused or ended the session (``reason`` is an :class:`EndReason`)."""

    def __init__(self, reason: int, detail: str = ""):
        try:
            name = EndReason(reason).name
        except ValueError:
            name = str(reason)
        super().__init__(f"cloud ended the session: {name}" + (f" ({detail})" if detail else ""))
        self.reason = reason
        self.detail = detail


@dataclass
class DecodeResult:
    tokens: List[int]  # generated token ids (stop token included, as generate() returns it)
    text: str  # decoded text, special tokens skipped
    stats: DecisionStats
    finish_reason: int = int(FinishReason.NOT_FINISHED)
    session_id: str = ""


PREDRAFT_POLICIES = ("hint", "eager")
DRAFT_LENGTHS = ("fixed", "confidence", "adaptive")
MAX_ALTERNATIVES = 8


@dataclass
class DecodeConfig:
    gamma: int = 4  # the longest draft block (every block with draft_length "fixed")
    max_new_tokens: int = 32
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0  # target's top-k (0 = full vocabulary), as in generate()
    draft_top_k: Optional[int] = None  # entries of the draft distribution sent per token (default: top_k or 64)
    seed: int = 0
    stop_token_ids: Optional[Sequence[int]] = None  # default: the draft's eos ids
    timeout_s: float = 30.0  # longest wait for any one cloud message
    predraft: bool = True  # pre-draft on early-exit hints (SPECULATIVE_EARLY_EXIT mode)
    # "hint": the paper's policy, pre-draft a whole block when the hint arrives.
    # "eager": ours (predraft.py), pre-draft from the moment a block is sent, re-aim on hints,
    # stop the moment the result arrives.
    predraft_policy: str = "hint"
    # pre-draft only on hints whose exit puts at least this probability on the outcome they name
    # (count and token); the others are recorded, not acted on. 0: act on every hint.
    hint_min_confidence: float = 0.0
    # "fixed": gamma tokens per block; "confidence": stop after a token below
    # confidence_threshold; "adaptive": the length that maximises expected tokens per second.
    # (the robot node defaults to "adaptive"; the library keeps "fixed": with a policy that learns
    # across decisions, a sampling seed reproduces a decision only for the same policy state)
    draft_length: str = "fixed"
    confidence_threshold: float = 0.4
    # greedy: the draft's next-best tokens sent after each drafted one; the cloud verifies them in the
    # same pass as one-token branches and, when the target picks one, commits one token more
    # (VerifyResult.alternative). Ignored when sampling.
    alternatives: int = 0
    merge_first_block: bool = False  # the cloud holds its prefill for block 0 (one pass for both)
    cloud_finish_tokens: int = 0  # after each verified block the cloud decodes up to this many tokens itself
    grammar: str = ""  # output grammar (a regular expression, engine.grammar) for draft and target
    # the camera frame on the wire: "png" (lossless) or "jpeg"; "full", "processor" (the draft
    # processor's input size) or "WxH"; both models condition on exactly the pixels sent
    image_format: str = "png"
    image_size: str = "full"
    jpeg_quality: int = 90
    end_wait_s: float = 0.25  # after the final result, wait this long for the cloud's cost totals

    def __post_init__(self):
        problems = []
        if self.gamma < 1:
            problems.append(f"gamma must be >= 1 (got {self.gamma})")
        if self.max_new_tokens < 1:
            problems.append(f"max_new_tokens must be >= 1 (got {self.max_new_tokens})")
        if self.do_sample and not self.temperature > 0:
            problems.append("sampling needs temperature > 0")
        if self.top_k < 0 or (self.draft_top_k is not None and self.draft_top_k < 0):
            problems.append("top_k and draft_top_k must be >= 0")
        if self.predraft_policy not in PREDRAFT_POLICIES:
            problems.append(f"predraft_policy must be 'hint' or 'eager', got {self.predraft_policy!r}")
        if self.draft_length not in DRAFT_LENGTHS:
            problems.append(f"draft_length must be one of {', '.join(DRAFT_LENGTHS)}, got {self.draft_length!r}")
        if not 0 <= self.alternatives <= MAX_ALTERNATIVES:
            problems.append(f"alternatives must be 0..{MAX_ALTERNATIVES} (got {self.alternatives})")
        if not 0.0 <= self.hint_min_confidence <= 1.0:
            problems.append(f"hint_min_confidence must be in [0, 1] (got {self.hint_min_confidence})")
        if not 0.0 <= self.confidence_threshold <= 1.0:
            problems.append(f"confidence_threshold must be in [0, 1] (got {self.confidence_threshold})")
        if not self.timeout_s > 0:
            problems.append(f"timeout_s must be > 0 (got {self.timeout_s})")
        if self.cloud_finish_tokens < 0:
            problems.append(f"cloud_finish_tokens must be >= 0 (got {self.cloud_finish_tokens})")
        if self.image_format not in WIRE_FORMATS:
            problems.append(f"image_format must be one of {', '.join(sorted(WIRE_FORMATS))}, got {self.image_format!r}")
        try:
            parse_image_size(self.image_size)
        except ValueError as exc:
            problems.append(str(exc))
        if not 1 <= self.jpeg_quality <= 95:
            problems.append(f"jpeg_quality must be 1..95 (got {self.jpeg_quality})")
        if problems:
            raise ValueError("; ".join(problems))


class _Session:
    """One decision's link to the cloud: sequence numbers and waits bounded by the timeout."""

    def __init__(self, transport: EdgeTransport, sid: str, timeout_s: float):
        self.transport = transport
        self.sid = sid
        self.timeout_s = timeout_s
        self.seq = 0

    def send(self, msg: Message) -> None:
        msg.session_id, msg.seq = self.sid, self.seq
        self.seq += 1
        self.transport.send(msg)

    def recv(self, what: str, deadline: Optional[float] = None) -> Message:
        """Next message of this session (others are dropped); CloudTimeout when none comes
        within the timeout (or by ``deadline``, a ``time.monotonic()`` value)."""
        deadline = time.monotonic() + self.timeout_s if deadline is None else deadline
        while True:
            left = deadline - time.monotonic()
            try:
                if left <= 0:
                    raise CloudTimeout()
                msg = self.transport.recv(left)
            except CloudTimeout:
                raise CloudTimeout(f"cloud did not answer {what} of session {self.sid[:8]} "
                                   f"within {self.timeout_s:g} s") from None
            if getattr(msg, "session_id", None) == self.sid:
                return msg

    def poll(self) -> Optional[Message]:
        """A waiting message of this session, or None at once."""
        while True:
            try:
                msg = self.transport.recv(0)
            except CloudTimeout:
                return None
            if getattr(msg, "session_id", None) == self.sid:
                return msg

    def abort(self, reason: EndReason, detail: str) -> None:
        try:
            self.send(SessionEnd(reason=int(reason), detail=detail))
        except Exception:
            pass


class EdgeDecoder:
    """Decodes decisions on the edge with a draft model and (optionally) a cloud verifier."""

    def __init__(self, draft: ModelAdapter, transport: Optional[EdgeTransport] = None, *, robot_id: str = "edge",
                 **config):
        self.draft = wrap_model(draft)
        self.transport = transport
        self.robot_id = robot_id
        self.config = DecodeConfig(**config)
        # learnt across decisions: draft-length policies (their cost and acceptance estimates),
        # compiled grammars, and how long block 0 takes (for merge_first_block)
        self._policies: Dict[Tuple, DraftLengthPolicy] = {}
        self._grammars: Dict[str, object] = {}
        self._first_block_ms: Optional[float] = None

    # -- entry ------------------------------------------------------------------------------
    def decode(self, prompt: str, image: ImageLike = None, mode: DecodingMode = DecodingMode.SPECULATIVE_EARLY_EXIT,
               *, session_id: Optional[str] = None, **overrides) -> DecodeResult:
        """Decode one decision; ``overrides`` replace :class:`DecodeConfig` fields for this call."""
        cfg = replace(self.config, **overrides) if overrides else self.config
        mode = DecodingMode(mode)
        if mode != DecodingMode.EDGE_ONLY and self.transport is None:
            raise ValueError(f"{mode.name} needs a transport to a cloud verifier")
        stats = DecisionStats(mode=int(mode))
        t_start = time.perf_counter()
        sid = session_id or uuid.uuid4().hex
        sent0 = getattr(self.transport, "bytes_sent", 0)
        recv0 = getattr(self.transport, "bytes_received", 0)
        frame = None
        if image is not None:  # what goes on the wire, and the pixels both models condition on
            frame = encode_image(image, cfg.image_format, cfg.image_size, processor=self.draft.processor,
                                 jpeg_quality=cfg.jpeg_quality)
            stats.image_bytes = len(frame.data)
        with torch.inference_mode():
            if mode == DecodingMode.EDGE_ONLY:
                tokens, finish = self._edge_only(cfg, prompt, frame, stats)
            elif mode == DecodingMode.CLOUD_ONLY:
                tokens, finish = self._cloud_only(cfg, _Session(self.transport, sid, cfg.timeout_s), prompt, frame,
                                                  stats, t_start)
            else:
                tokens, finish = self._speculative(cfg, _Session(self.transport, sid, cfg.timeout_s), prompt, frame,
                                                   mode, stats, t_start)
        if not stats.latency_ms:
            stats.latency_ms = (time.perf_counter() - t_start) * 1000
        stats.new_tokens = len(tokens)
        stats.finish_reason = int(finish)
        stats.bytes_sent = getattr(self.transport, "bytes_sent", 0) - sent0
        stats.bytes_received = getattr(self.transport, "bytes_received", 0) - recv0
        stats.finalize()
        return DecodeResult(tokens=tokens, text=self.draft.decode_text(tokens), stats=stats,
                            finish_reason=int(finish), session_id=sid)

    # -- settings ---------------------------------------------------------------------------
    def _stop_ids(self, cfg: DecodeConfig) -> frozenset:
        ids = self.draft.eos_token_ids if cfg.stop_token_ids is None else cfg.stop_token_ids
        return frozenset(int(t) for t in ids)

    def _params(self, cfg: DecodeConfig) -> SamplingParams:
        return SamplingParams(cfg.do_sample, cfg.temperature, cfg.top_k)

    def _draft_k(self, cfg: DecodeConfig) -> int:
        k = cfg.draft_top_k if cfg.draft_top_k else (cfg.top_k if cfg.top_k else 64)
        return max(1, min(int(k), self.draft.vocab_size))

    def _grammar(self, cfg: DecodeConfig):
        if not cfg.grammar:
            return None
        if cfg.grammar not in self._grammars:
            self._grammars[cfg.grammar] = compile_grammar(cfg.grammar, self.draft, self._stop_ids(cfg))
        return self._grammars[cfg.grammar]

    def _policy(self, cfg: DecodeConfig) -> DraftLengthPolicy:
        key = (cfg.draft_length, cfg.gamma, cfg.confidence_threshold)
        if key not in self._policies:
            self._policies[key] = make_policy(cfg.draft_length, cfg.gamma, cfg.confidence_threshold)
        return self._policies[key]

    def _prefill(self, prompt: str, frame: Optional[EncodedImage], stats: DecisionStats):
        t = time.perf_counter()
        state = self.draft.prefill(self.draft.encode(prompt, frame.image if frame is not None else None))
        self.draft.settle()
        stats.draft_forward_passes += 1
        stats.prefill_ms = (time.perf_counter() - t) * 1000
        return state

    def _start_msg(self, cfg: DecodeConfig, prompt: str, frame: Optional[EncodedImage], mode: DecodingMode,
                   stop: frozenset) -> SessionStart:
        wait_ms = 0.0
        if cfg.merge_first_block and mode != DecodingMode.CLOUD_ONLY:
            # long enough for block 0 to follow (learnt), so the cloud can verify it with the prefill
            wait_ms = 250.0 if self._first_block_ms is None else 1.5 * self._first_block_ms + 10.0
        return SessionStart(
            robot_id=self.robot_id,
            prompt=prompt,
            tokenizer_fingerprint=self.draft.fingerprint,
            image_format=frame.format if frame is not None else "",
            image_data=frame.data if frame is not None else b"",
            mode=int(mode),
            max_new_tokens=cfg.max_new_tokens,
            gamma=cfg.gamma,
            do_sample=cfg.do_sample,
            temperature=cfg.temperature,
            top_k=cfg.top_k,
            seed=cfg.seed,
            stop_token_ids=sorted(stop),
            prefill_wait_ms=wait_ms,
            grammar=cfg.grammar,
            cloud_finish_tokens=cfg.cloud_finish_tokens if mode != DecodingMode.CLOUD_ONLY else 0,
            return_states=self._needs_states and mode != DecodingMode.CLOUD_ONLY,
        )

    # -- modes ------------------------------------------------------------------------------
    def _edge_only(self, cfg: DecodeConfig, prompt: str, frame: Optional[EncodedImage], stats: DecisionStats):
        stop = self._stop_ids(cfg)
        state = self._prefill(prompt, frame, stats)
        picker = TokenPicker.for_target(self._params(cfg), make_generator(cfg.seed, "draft"))
        loop = TokenLoop(self.draft, state, [], limit=cfg.max_new_tokens, picker=picker, stop=stop,
                         grammar=self._grammar(cfg)).run()
        stats.draft_forward_passes += loop.forward_passes
        stats.draft_ms += loop.ms
        finish = FinishReason.STOP_TOKEN if loop.tokens and loop.tokens[-1] in stop else FinishReason.MAX_NEW_TOKENS
        return loop.tokens, finish

    def _cloud_only(self, cfg: DecodeConfig, session: _Session, prompt: str, frame: Optional[EncodedImage],
                    stats: DecisionStats, t_start: float):
        stop = self._stop_ids(cfg)
        session.send(self._start_msg(cfg, prompt, frame, DecodingMode.CLOUD_ONLY, stop))
        t = time.perf_counter()
        try:
            while True:
                msg = session.recv("the cloud-only request")
                if isinstance(msg, SessionEnd):
                    break
        except CloudTimeout:
            session.abort(EndReason.TIMEOUT, "edge timed out waiting for the cloud")
            raise
        stats.wait_ms += (time.perf_counter() - t) * 1000
        stats.latency_ms = (time.perf_counter() - t_start) * 1000
        if msg.reason != EndReason.COMPLETED:
            raise CloudError(msg.reason, msg.detail)
        stats.target_forward_passes = msg.target_forward_passes
        stats.cloud_compute_ms = msg.cloud_compute_ms
        tokens = list(msg.tokens)
        finish = FinishReason.STOP_TOKEN if tokens and tokens[-1] in stop else FinishReason.MAX_NEW_TOKENS
        return tokens, finish

    def _speculative(self, cfg: DecodeConfig, session: _Session, prompt: str, frame: Optional[EncodedImage],
                     mode: DecodingMode, stats: DecisionStats, t_start: float):
        stop = self._stop_ids(cfg)
        policy = self._policy(cfg)
        grammar = self._grammar(cfg)
        # 1. Open the session: the cloud starts encoding the prompt and image right away.
        session.send(self._start_msg(cfg, prompt, frame, mode, stop))
        picker = TokenPicker.for_draft(self._params(cfg), make_generator(cfg.seed, "draft"), self._draft_k(cfg),
                                       cfg.alternatives)
        try:
            # 2. Prefill the draft and propose block 0.
            proposer = Proposer(self.draft, self._prefill(prompt, frame, stats), picker, stop, cfg.max_new_tokens,
                                policy, grammar)
            hints = mode == DecodingMode.SPECULATIVE_EARLY_EXIT and cfg.predraft
            strategy = make_strategy(cfg.predraft_policy, proposer) if hints else NoPredraft()
            committed: List[int] = []
            block, predrafted = proposer.propose(committed), False
            self._first_block_ms = (time.perf_counter() - t_start) * 1000
            finish = FinishReason.NOT_FINISHED
            while finish == FinishReason.NOT_FINISHED:
                # 3. Send the block; 4. await its result (pre-drafting meanwhile).
                result, rs = self._round(session, len(stats.round_log), committed, block, predrafted, strategy,
                                         stop, cfg)
                stats.round_log.append(rs)
                stats.wait_ms += rs.wait_ms
                stats.target_forward_passes = result.target_forward_passes
                policy.observe(RoundOutcome(len(block.tokens), result.accepted, block.confidences, result.verify_ms,
                                            result.queue_ms, rs.elapsed_ms,
                                            proposer.ms / proposer.forward_passes if proposer.forward_passes else 0.0,
                                            block.first_confidence,
                                            with_prefill=cfg.merge_first_block and len(stats.round_log) == 1,
                                            offered_alternatives=block.topk > 1 and not cfg.do_sample,
                                            alternative=result.alternative != -1))
                # 5. Commit what the cloud accepted, plus its own token(s).
                self._take_states(proposer.state, committed, result)
                committed = committed + accepted_tokens(block, result) + [result.next_token] + list(result.continued)
                if result.finished:
                    finish = FinishReason(result.finish_reason) if result.finish_reason else FinishReason.MAX_NEW_TOKENS
                    break
                if len(committed) >= cfg.max_new_tokens:
                    raise ProtocolError(f"cloud did not finish at max_new_tokens={cfg.max_new_tokens}")
                # 6. The next block: pre-drafted if the guess was right, else drafted now.
                block = strategy.take(committed)
                predrafted = block is not None
                if predrafted:
                    stats.predraft_hits += 1
                else:
                    block = proposer.propose(committed)
            stats.latency_ms = (time.perf_counter() - t_start) * 1000
        except CloudTimeout:
            session.abort(EndReason.TIMEOUT, "edge timed out waiting for the cloud")
            raise
        except CloudError:
            raise
        except BaseException as exc:
            session.abort(EndReason.CANCELLED, f"edge error: {type(exc).__name__}")
            raise
        stats.predrafts = getattr(strategy, "predrafts", 0)
        stats.draft_forward_passes += proposer.forward_passes
        stats.draft_ms += proposer.ms
        self._collect_end(session, cfg, stats)
        return committed, finish

    def _round(self, session: _Session, round_no: int, committed: List[int], block: DraftProposal, predrafted: bool,
               strategy: PredraftStrategy, stop: frozenset, cfg: DecodeConfig) -> Tuple[VerifyResult, RoundStats]:
        """Send ``block``, pre-draft while waiting, and return its result (hints re-aim the strategy)."""
        session.send(DraftBlock(round=round_no, position=len(committed), tokens=block.tokens, topk=block.topk,
                                topk_ids=block.topk_ids, topk_probs=block.topk_probs, predrafted=predrafted,
                                draft_ms=block.draft_ms))
        t_sent = time.perf_counter()
        deadline = time.monotonic() + cfg.timeout_s  # for this round's result, hints included
        rs = RoundStats(round=round_no, position=len(committed), drafted=len(block.tokens), predrafted=predrafted,
                        draft_ms=block.draft_ms - block.hidden_ms)
        strategy.on_send(committed, block)
        blocked = 0.0
        while True:
            msg = session.poll() if strategy.has_work() else None
            if msg is None and strategy.has_work():
                strategy.work()  # never wait while there is pre-drafting to do
                continue
            if msg is None:
                t_wait = time.perf_counter()
                msg = session.recv(f"round {round_no}", deadline)
                blocked += time.perf_counter() - t_wait
            if isinstance(msg, VerifyResult):
                if msg.round == round_no:
                    break
                continue  # duplicate or stale result
            if isinstance(msg, EarlyExitHint):
                if msg.round == round_no:
                    t_hint = time.perf_counter()
                    if msg.confidence >= cfg.hint_min_confidence:
                        strategy.on_hint(self._hinted(committed, block, msg, stop))
                    rs.add_hint(msg, (time.perf_counter() - t_hint) * 1000)
                continue
            if isinstance(msg, SessionEnd):
                raise CloudError(msg.reason, msg.detail)
        if not 0 <= msg.accepted <= len(block.tokens):
            raise ProtocolError(f"round {round_no}: cloud accepted {msg.accepted} of {len(block.tokens)} tokens")
        if msg.alternative != -1 and msg.alternative not in _alternatives(block, msg.accepted - 1):
            raise ProtocolError(f"round {round_no}: cloud chose token {msg.alternative}, not one of the draft's "
                                f"alternatives at position {msg.accepted - 1}")
        if len(msg.continued) > cfg.cloud_finish_tokens:
            raise ProtocolError(f"round {round_no}: cloud continued {len(msg.continued)} tokens, more than asked")
        rs.set_result(msg, blocked * 1000, (time.perf_counter() - t_sent) * 1000, block.tokens)
        return msg, rs

    @property
    def _needs_states(self) -> bool:
        return bool(getattr(self.draft, "needs_target_states", False))

    def _take_states(self, state, committed: List[int], result: VerifyResult) -> None:
        """A feature draft learns the target's states of the positions this round committed."""
        if not self._needs_states:
            return
        try:
            rows = self.draft.decode_states(result.target_states)
        except ValueError as exc:
            raise ProtocolError(f"round {result.round}: {exc}") from None
        if rows.shape[0] != result.accepted + 1:
            raise ProtocolError(f"round {result.round}: {rows.shape[0]} target states for "
                                f"{result.accepted} accepted tokens (expected {result.accepted + 1})")
        self.draft.receive_states(state, len(committed), rows)

    def _hinted(self, committed: List[int], block: DraftProposal, hint: EarlyExitHint,
                stop: frozenset) -> Optional[List[int]]:
        """The committed tokens the hint predicts after this round; None for an impossible
        outcome (bad count or token id) or one that ends generation."""
        accepted = hint.predicted_accepted
        if not (0 <= accepted <= len(block.tokens) and 0 <= hint.predicted_next_token < self.draft.token_count):
            return None
        if any(t in stop for t in block.tokens[:accepted]):
            return None
        return committed + block.tokens[:accepted] + [hint.predicted_next_token]

    def _collect_end(self, session: _Session, cfg: DecodeConfig, stats: DecisionStats) -> None:
        """The cloud follows a finished result with SessionEnd carrying its cost totals."""
        deadline = time.monotonic() + min(cfg.end_wait_s, cfg.timeout_s)
        while True:
            try:
                msg = session.recv("the session end", deadline)
            except CloudTimeout:
                return
            if isinstance(msg, SessionEnd):
                stats.target_forward_passes = max(stats.target_forward_passes, msg.target_forward_passes)
                stats.cloud_compute_ms = msg.cloud_compute_ms
                return
