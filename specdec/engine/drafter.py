"""Edge side: drafts blocks with the draft model and drives one decoding session.

:class:`EdgeDecoder` decodes one decision in any :class:`DecodingMode`:

* ``SPECULATIVE_EARLY_EXIT`` (default): draft ``gamma`` tokens, send a
  ``DraftBlock``, wait. On an ``EarlyExitHint`` pre-draft the next block from
  the hinted state (``committed + draft[:predicted_accepted] +
  predicted_next_token``) while the cloud finishes verifying. When the
  ``VerifyResult`` arrives, keep the pre-draft if the hint was right and send it
  at once (``predrafted=True``); otherwise roll the draft cache back and redraft.
  Hints only ever decide what the edge drafts next - the committed output
  comes from ``VerifyResult`` alone - so a wrong hint never changes the output.
* ``SPECULATIVE``: the same without hints/pre-drafting.
* ``CLOUD_ONLY``: send prompt + image; the cloud decodes autoregressively and
  returns the tokens in ``SessionEnd``.
* ``EDGE_ONLY``: the draft model alone, no cloud.

Each wait for the cloud is bounded by ``timeout_s``: a silent cloud raises
:class:`~specdec.transport.base.CloudTimeout`; a session the cloud refuses or ends
raises :class:`CloudError` with the protocol's reason code.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, replace
from typing import List, Optional, Sequence

import torch

from ..models.adapters import DecodeState, ModelAdapter, wrap_model
from ..models.images import ImageLike, encode_png
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
from .predraft import EagerPredrafter
from .sampling import SamplingParams, choose_token, draft_sample, make_generator
from .stats import DecisionStats, RoundStats


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


@dataclass
class DecodeConfig:
    gamma: int = 4
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
    # "eager": ours (predraft.py), pre-draft from the moment a block is sent, switch on the hint,
    # stop the moment the result arrives.
    predraft_policy: str = "hint"
    end_wait_s: float = 0.25  # after the final result, wait this long for the cloud's cost totals


@dataclass
class _Block:
    base: List[int]  # committed tokens the block continues
    tokens: List[int]
    topk: int
    topk_ids: List[int]
    topk_probs: List[float]
    draft_ms: float


class EdgeDecoder:
    """Decodes decisions on the edge with a draft model and (optionally) a cloud verifier."""

    def __init__(self, draft: ModelAdapter, transport: Optional[EdgeTransport] = None, *, robot_id: str = "edge",
                 **config):
        self.draft = wrap_model(draft)
        self.transport = transport
        self.robot_id = robot_id
        self.config = DecodeConfig(**config)

    # -- entry ------------------------------------------------------------------------------
    def decode(self, prompt: str, image: ImageLike = None, mode: DecodingMode = DecodingMode.SPECULATIVE_EARLY_EXIT,
               *, session_id: Optional[str] = None, **overrides) -> DecodeResult:
        """Decode one decision; ``overrides`` replace :class:`DecodeConfig` fields for this call."""
        cfg = replace(self.config, **overrides) if overrides else self.config
        mode = DecodingMode(mode)
        if cfg.gamma < 1:
            raise ValueError(f"gamma must be >= 1 (got {cfg.gamma})")
        if cfg.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1 (got {cfg.max_new_tokens})")
        if cfg.do_sample and not cfg.temperature > 0:
            raise ValueError("sampling needs temperature > 0")
        if cfg.predraft_policy not in ("hint", "eager"):
            raise ValueError(f"predraft_policy must be 'hint' or 'eager', got {cfg.predraft_policy!r}")
        if mode != DecodingMode.EDGE_ONLY and self.transport is None:
            raise ValueError(f"{mode.name} needs a transport to a cloud verifier")
        stats = DecisionStats(mode=int(mode))
        t_start = time.perf_counter()
        sid = session_id or uuid.uuid4().hex
        sent0 = getattr(self.transport, "bytes_sent", 0)
        recv0 = getattr(self.transport, "bytes_received", 0)
        with torch.inference_mode():
            if mode == DecodingMode.EDGE_ONLY:
                tokens, finish = self._edge_only(cfg, prompt, image, stats)
            elif mode == DecodingMode.CLOUD_ONLY:
                tokens, finish = self._cloud_only(cfg, sid, prompt, image, stats, t_start)
            else:
                tokens, finish = self._speculative(cfg, sid, prompt, image, mode, stats, t_start)
        if not stats.latency_ms:
            stats.latency_ms = (time.perf_counter() - t_start) * 1000
        stats.new_tokens = len(tokens)
        stats.finish_reason = int(finish)
        stats.bytes_sent = getattr(self.transport, "bytes_sent", 0) - sent0
        stats.bytes_received = getattr(self.transport, "bytes_received", 0) - recv0
        stats.finalize()
        return DecodeResult(tokens=tokens, text=self.draft.decode_text(tokens), stats=stats,
                            finish_reason=int(finish), session_id=sid)

    # -- helpers ----------------------------------------------------------------------------
    def _stop_ids(self, cfg: DecodeConfig) -> frozenset:
        ids = self.draft.eos_token_ids if cfg.stop_token_ids is None else cfg.stop_token_ids
        return frozenset(int(t) for t in ids)

    def _params(self, cfg: DecodeConfig) -> SamplingParams:
        return SamplingParams(cfg.do_sample, cfg.temperature, cfg.top_k)

    def _draft_k(self, cfg: DecodeConfig) -> int:
        k = cfg.draft_top_k if cfg.draft_top_k else (cfg.top_k if cfg.top_k else 64)
        return max(1, min(int(k), self.draft.vocab_size))

    def _prefill(self, prompt: str, image: ImageLike, stats: DecisionStats) -> DecodeState:
        t = time.perf_counter()
        state = self.draft.prefill(self.draft.encode(prompt, image))
        stats.draft_forward_passes += 1
        stats.prefill_ms = (time.perf_counter() - t) * 1000
        return state

    def _make_block(self, state: DecodeState, base: List[int], count: int, cfg: DecodeConfig, k: int,
                    stop: frozenset, generator, stats: DecisionStats) -> _Block:
        """Draft up to ``count`` tokens after ``prompt + base`` (rolling the cache back as needed)."""
        t = time.perf_counter()
        draft = self.draft
        tokens: List[int] = []
        ids: List[int] = []
        probs: List[float] = []
        pending = draft.sync(state, base)
        for _ in range(count):
            logits = draft.forward(state, pending, keep=1)[-1]
            if cfg.do_sample:
                token, top_ids, top_probs = draft_sample(logits, cfg.temperature, k, generator)
                ids.extend(top_ids)
                probs.extend(top_probs)
            else:
                token = int(torch.argmax(logits))
            tokens.append(token)
            if token in stop:
                break
            pending = [token]
        stats.draft_forward_passes += len(tokens)
        elapsed = (time.perf_counter() - t) * 1000
        stats.draft_ms += elapsed
        if cfg.do_sample:
            return _Block(list(base), tokens, k, ids, probs, elapsed)
        return _Block(list(base), tokens, 1, list(tokens), [1.0] * len(tokens), elapsed)

    def _recv(self, sid: str, timeout: float, what: str, deadline: Optional[float] = None) -> Message:
        """Next message of this session (others are dropped); CloudTimeout when none comes
        within ``timeout`` seconds (or by ``deadline``, a ``time.monotonic()`` value)."""
        deadline = time.monotonic() + timeout if deadline is None else deadline
        while True:
            left = deadline - time.monotonic()
            try:
                if left <= 0:
                    raise CloudTimeout()
                msg = self.transport.recv(left)
            except CloudTimeout:
                raise CloudTimeout(
                    f"cloud did not answer {what} of session {sid[:8]} within {timeout:g} s") from None
            if getattr(msg, "session_id", None) == sid:
                return msg

    def _poll(self, sid: str) -> Optional[Message]:
        """A waiting message of this session, or None at once (others' messages are dropped)."""
        while True:
            try:
                msg = self.transport.recv(0)
            except CloudTimeout:
                return None
            if getattr(msg, "session_id", None) == sid:
                return msg

    def _abort(self, sid: str, seq: int, reason: EndReason, detail: str) -> None:
        try:
            self.transport.send(SessionEnd(session_id=sid, seq=seq, reason=int(reason), detail=detail))
        except Exception:
            pass

    def _start_msg(self, cfg: DecodeConfig, sid: str, prompt: str, image: ImageLike, mode: DecodingMode,
                   stop: frozenset) -> SessionStart:
        return SessionStart(
            session_id=sid,
            seq=0,
            robot_id=self.robot_id,
            prompt=prompt,
            tokenizer_fingerprint=self.draft.fingerprint,
            image_format="png" if image is not None else "",
            image_data=encode_png(image) if image is not None else b"",
            mode=int(mode),
            max_new_tokens=cfg.max_new_tokens,
            gamma=cfg.gamma,
            do_sample=cfg.do_sample,
            temperature=cfg.temperature,
            top_k=cfg.top_k,
            seed=cfg.seed,
            stop_token_ids=sorted(stop),
        )

    # -- modes ------------------------------------------------------------------------------
    def _edge_only(self, cfg: DecodeConfig, prompt: str, image: ImageLike, stats: DecisionStats):
        stop = self._stop_ids(cfg)
        params = self._params(cfg)
        generator = make_generator(cfg.seed, "draft")
        state = self._prefill(prompt, image, stats)
        tokens: List[int] = []
        pending = [state.prompt_ids[-1]]
        finish = FinishReason.MAX_NEW_TOKENS
        t = time.perf_counter()
        for _ in range(cfg.max_new_tokens):
            logits = self.draft.forward(state, pending, keep=1)[-1]
            token = choose_token(logits, params, generator)
            tokens.append(token)
            if token in stop:
                finish = FinishReason.STOP_TOKEN
                break
            pending = [token]
        stats.draft_forward_passes += len(tokens)
        stats.draft_ms += (time.perf_counter() - t) * 1000
        return tokens, finish

    def _cloud_only(self, cfg: DecodeConfig, sid: str, prompt: str, image: ImageLike, stats: DecisionStats,
                    t_start: float):
        stop = self._stop_ids(cfg)
        self.transport.send(self._start_msg(cfg, sid, prompt, image, DecodingMode.CLOUD_ONLY, stop))
        t = time.perf_counter()
        try:
            while True:
                msg = self._recv(sid, cfg.timeout_s, "the cloud-only request")
                if isinstance(msg, SessionEnd):
                    break
        except CloudTimeout:
            self._abort(sid, 1, EndReason.TIMEOUT, "edge timed out waiting for the cloud")
            raise
        stats.wait_ms += (time.perf_counter() - t) * 1000
        stats.latency_ms = (time.perf_counter() - t_start) * 1000
        if msg.reason != EndReason.COMPLETED:
            raise CloudError(msg.reason, msg.detail)
        stats.target_forward_passes = msg.target_forward_passes
        stats.cloud_compute_ms = msg.cloud_compute_ms
        tokens = list(msg.tokens)
        if tokens and tokens[-1] in stop:
            finish = FinishReason.STOP_TOKEN
        else:
            finish = FinishReason.MAX_NEW_TOKENS
        return tokens, finish

    def _speculative(self, cfg: DecodeConfig, sid: str, prompt: str, image: ImageLike, mode: DecodingMode,
                     stats: DecisionStats, t_start: float):
        stop = self._stop_ids(cfg)
        use_hints = mode == DecodingMode.SPECULATIVE_EARLY_EXIT and cfg.predraft
        k = self._draft_k(cfg)
        generator = make_generator(cfg.seed, "draft")
        seq = 0
        self.transport.send(self._start_msg(cfg, sid, prompt, image, mode, stop))
        seq += 1
        try:
            state = self._prefill(prompt, image, stats)
            committed: List[int] = []

            def draft_after(base: List[int]) -> _Block:
                count = min(cfg.gamma, cfg.max_new_tokens - len(base) - 1)
                return self._make_block(state, base, max(count, 0), cfg, k, stop, generator, stats)

            block = draft_after(committed)
            predrafted = False
            round_no = 0
            finish = FinishReason.NOT_FINISHED
            while True:
                msg_out = DraftBlock(
                    session_id=sid, seq=seq, round=round_no, position=len(committed), tokens=block.tokens,
                    topk=block.topk, topk_ids=block.topk_ids, topk_probs=block.topk_probs,
                    predrafted=predrafted, draft_ms=block.draft_ms,
                )
                seq += 1
                rs = RoundStats(round=round_no, position=len(committed), drafted=len(block.tokens),
                                predrafted=predrafted, draft_ms=block.draft_ms)
                self.transport.send(msg_out)
                deadline = time.monotonic() + cfg.timeout_s  # for this round's result, hints included
                predraft: Optional[_Block] = None
                eager = None
                if use_hints and cfg.predraft_policy == "eager":
                    eager = EagerPredrafter(self, state, cfg, k, stop, generator, stats)
                    eager.aim_full_acceptance(committed, block.tokens)
                t_hint = 0.0
                blocked = 0.0
                while True:
                    msg = None
                    if eager is not None and not eager.complete:
                        msg = self._poll(sid)  # never wait while there is pre-drafting to do
                        if msg is None:
                            eager.step()
                            continue
                    if msg is None:
                        t_wait = time.perf_counter()
                        msg = self._recv(sid, cfg.timeout_s, f"round {round_no}", deadline)
                        blocked += time.perf_counter() - t_wait
                    if isinstance(msg, VerifyResult):
                        if msg.round != round_no:
                            continue  # duplicate or stale result
                        break
                    if isinstance(msg, EarlyExitHint):
                        if msg.round != round_no or rs.hint:
                            continue  # stale or repeated hint
                        t_hint = time.perf_counter()
                        rs.hint = True
                        rs.hint_accepted = msg.predicted_accepted
                        rs.hint_next_token = msg.predicted_next_token
                        rs.hint_confidence = msg.confidence
                        rs.exit_ms = msg.exit_ms
                        if eager is not None:
                            if self._hint_usable(msg, block):
                                eager.aim(committed + block.tokens[:msg.predicted_accepted]
                                          + [msg.predicted_next_token])
                        elif use_hints:
                            predraft = self._predraft(block, committed, msg, cfg, stop, draft_after)
                            if predraft is not None:
                                stats.predrafts += 1
                                rs.predraft_ms = predraft.draft_ms
                        continue
                    if isinstance(msg, SessionEnd):
                        raise CloudError(msg.reason, msg.detail)
                rs.wait_ms = blocked * 1000
                stats.wait_ms += rs.wait_ms
                if not 0 <= msg.accepted <= len(block.tokens):
                    raise ProtocolError(
                        f"round {round_no}: cloud accepted {msg.accepted} of {len(block.tokens)} tokens")
                rs.accepted = msg.accepted
                rs.next_token = msg.next_token
                rs.queue_ms = msg.queue_ms
                rs.verify_ms = msg.verify_ms
                if rs.hint:
                    rs.hint_correct = rs.hint_accepted == msg.accepted and rs.hint_next_token == msg.next_token
                    rs.hint_lead_ms = (time.perf_counter() - t_hint) * 1000
                stats.round_log.append(rs)
                stats.target_forward_passes = msg.target_forward_passes
                committed = committed + block.tokens[:msg.accepted] + [msg.next_token]
                if msg.finished:
                    finish = FinishReason(msg.finish_reason) if msg.finish_reason else FinishReason.MAX_NEW_TOKENS
                    break
                if len(committed) >= cfg.max_new_tokens:
                    raise ProtocolError(f"cloud did not finish at max_new_tokens={cfg.max_new_tokens}")
                if eager is not None and eager.tokens:
                    stats.predrafts += 1
                    rs.predraft_ms = eager.ms
                    predraft = eager.block_for(committed)  # None when the guess was wrong
                if predraft is not None and predraft.base == committed:
                    block, predrafted = predraft, True
                    stats.predraft_hits += 1
                else:
                    block, predrafted = draft_after(committed), False
                round_no += 1
            stats.latency_ms = (time.perf_counter() - t_start) * 1000
        except CloudTimeout:
            self._abort(sid, seq, EndReason.TIMEOUT, "edge timed out waiting for the cloud")
            raise
        except CloudError:
            raise
        except BaseException as exc:
            self._abort(sid, seq, EndReason.CANCELLED, f"edge error: {type(exc).__name__}")
            raise
        self._collect_end(sid, cfg, stats)
        return committed, finish

    def _predraft(self, block: _Block, committed: List[int], hint: EarlyExitHint, cfg: DecodeConfig,
                  stop: frozenset, draft_after) -> Optional[_Block]:
        """Draft the next block from the hinted state, or None when the hint ends generation."""
        accepted = hint.predicted_accepted
        if not self._hint_usable(hint, block):
            return None
        hinted = committed + block.tokens[:accepted] + [hint.predicted_next_token]
        if hinted[-1] in stop or len(hinted) >= cfg.max_new_tokens:
            return None
        if any(t in stop for t in block.tokens[:accepted]):
            return None
        return draft_after(hinted)

    def _hint_usable(self, hint: EarlyExitHint, block: _Block) -> bool:
        """A hint naming an impossible outcome (bad count or token id) is ignored."""
        return (0 <= hint.predicted_accepted <= len(block.tokens)
                and 0 <= hint.predicted_next_token < self.draft.vocab_size)

    def _collect_end(self, sid: str, cfg: DecodeConfig, stats: DecisionStats) -> None:
        """The cloud follows a finished result with SessionEnd carrying its cost totals."""
        deadline = time.monotonic() + min(cfg.end_wait_s, cfg.timeout_s)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                msg = self._recv(sid, left, "the session end")
            except CloudTimeout:
                return
            if isinstance(msg, SessionEnd):
                stats.target_forward_passes = max(stats.target_forward_passes, msg.target_forward_passes)
                stats.cloud_compute_ms = msg.cloud_compute_ms
                return
