"""Cloud side: verifies draft blocks with the target model, one state per session.

:class:`Verifier` is transport-agnostic: ``handle(msg, emit)`` processes one
protocol message and answers through ``emit`` (thread-safe, non-blocking: it is
also called from inside the target's forward pass to ship an early-exit hint).
``serve(transport, stop_event)`` runs the receive loop over a
:class:`~specdec.transport.base.CloudTransport`.

Message handling
----------------
* ``SessionStart``: the protocol version and tokenizer fingerprint must match
  (else ``SessionEnd`` with ``PROTOCOL_VERSION_MISMATCH`` / ``TOKENIZER_MISMATCH``);
  bad parameters give ``BAD_REQUEST``, too many open sessions ``OVERLOADED``.
  The prompt (and PNG image) is encoded with the target's chat template and
  ``prompt[:-1]`` prefilled. ``CLOUD_ONLY`` sessions are decoded autoregressively
  right away and answered with ``SessionEnd(COMPLETED, tokens=...)``.
* ``DraftBlock`` for the expected round: one target forward over
  ``[last committed token] + tokens`` (with the early-exit hook attached in
  ``SPECULATIVE_EARLY_EXIT`` mode), acceptance (greedy or rejection sampling),
  stop-token / ``max_new_tokens`` truncation, ``VerifyResult``. When generation is
  finished the session is closed and ``SessionEnd(COMPLETED)`` with the cost
  totals follows the final result.
* Duplicates - a block whose ``seq`` was already seen, or a block for an already
  verified round with the same tokens - are answered by resending the cached
  ``VerifyResult`` (no target forward). This works for a while (``linger_s``)
  after the session closed, too.
* Stale blocks - an already verified round with *different* tokens - are
  ignored (counted in ``stats.stale``): the edge has moved on. A block for a
  session that is already closed (timed out, cancelled, finished) is answered
  with that session's ``SessionEnd`` again.
* Out-of-order blocks - a future round, or the expected round at the wrong
  ``position`` - are a protocol error: ``SessionEnd(BAD_REQUEST)`` and the
  session is closed (an ordered transport never produces them).
* ``SessionEnd`` from the edge closes the session (no answer).
* Sessions idle longer than ``session_timeout_s`` are closed by ``expire()``
  (called by ``serve``) with ``SessionEnd(TIMEOUT)``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from ..models.adapters import DecodeState, ModelAdapter
from ..models.images import decode_image
from ..models.early_exit import EarlyExitHeads
from ..protocol import (
    PROTOCOL_VERSION,
    DecodingMode,
    DraftBlock,
    EarlyExitHint,
    EndReason,
    FinishReason,
    Message,
    SessionEnd,
    SessionStart,
    VerifyResult,
)
from .sampling import AcceptFn, SamplingParams, choose_token, greedy_accept, make_generator, rejection_accept
from .stats import VerifierStats

log = logging.getLogger(__name__)

Emit = Callable[[Message], None]


@dataclass
class _Session:
    start: SessionStart
    state: Optional[DecodeState]
    params: SamplingParams
    stop: frozenset
    generator: torch.Generator
    hints: bool
    committed: List[int] = field(default_factory=list)
    next_round: int = 0
    results: Dict[int, VerifyResult] = field(default_factory=dict)
    blocks: Dict[int, Tuple[int, Tuple[int, ...]]] = field(default_factory=dict)
    seen_seq: set = field(default_factory=set)
    out_seq: int = 0
    forward_passes: int = 0
    compute_ms: float = 0.0
    last_active: float = 0.0
    end: Optional[SessionEnd] = None  # set once closed


class Verifier:
    """Holds the target and per-session state; answers protocol messages.

    Parameters
    ----------
    target: the target :class:`ModelAdapter`.
    exit_heads: :class:`EarlyExitHeads` for the target, or a path to load them from
        (refused with :class:`EarlyExitError` when they do not fit), or None.
    exit_layer: which exit layer emits the hint (default: the first one).
    greedy_rule / sampling_rule: acceptance rules (defaults: greedy prefix match,
        rejection sampling); replaceable for experiments and tests.
    """

    def __init__(
        self,
        target: ModelAdapter,
        exit_heads=None,
        *,
        exit_layer: Optional[int] = None,
        session_timeout_s: float = 60.0,
        linger_s: float = 30.0,
        max_sessions: int = 64,
        max_gamma: int = 64,
        max_new_tokens_limit: int = 4096,
        greedy_rule: AcceptFn = greedy_accept,
        sampling_rule: AcceptFn = rejection_accept,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.target = target
        if isinstance(exit_heads, (str, os.PathLike)):
            exit_heads = EarlyExitHeads.load(target.model, os.fspath(exit_heads))
        self.exit_heads: Optional[EarlyExitHeads] = exit_heads
        if exit_heads is not None:
            if exit_layer is None:
                exit_layer = exit_heads.exit_layers[0]
            if exit_layer not in exit_heads.exit_layers:
                raise ValueError(f"exit layer {exit_layer} not in the heads' layers {exit_heads.exit_layers}")
        self.exit_layer = exit_layer
        self.session_timeout_s = session_timeout_s
        self.linger_s = linger_s
        self.max_sessions = max_sessions
        self.max_gamma = max_gamma
        self.max_new_tokens_limit = max_new_tokens_limit
        self.greedy_rule = greedy_rule
        self.sampling_rule = sampling_rule
        self.clock = clock
        self.stats = VerifierStats()
        self._sessions: Dict[str, _Session] = {}
        self._closed: Dict[str, Tuple[float, _Session]] = {}
        self._lock = threading.RLock()

    # -- public -----------------------------------------------------------------------------
    @property
    def open_sessions(self) -> List[str]:
        with self._lock:
            return list(self._sessions)

    def serve(self, transport, stop_event: threading.Event, poll_s: float = 0.05) -> None:
        """Receive loop: handle messages until ``stop_event`` is set; expire idle sessions."""
        last_expire = self.clock()
        timed = hasattr(transport, "recv_with_time")
        while not stop_event.is_set():
            if timed:
                msg, arrived = transport.recv_with_time(poll_s)
            else:
                msg, arrived = transport.recv(poll_s), None
            if msg is not None:
                self.handle(msg, transport.send, received_at=arrived)
            now = self.clock()
            if now - last_expire >= min(1.0, self.session_timeout_s / 4):
                self.expire(transport.send, now)
                last_expire = now

    def handle(self, msg: Message, emit: Emit, received_at: Optional[float] = None) -> None:
        """Process one message from an edge; answers go through ``emit``."""
        received_at = self.clock() if received_at is None else received_at
        with self._lock, torch.inference_mode():
            try:
                if msg.protocol_version != PROTOCOL_VERSION:
                    self._refuse(msg, emit, EndReason.PROTOCOL_VERSION_MISMATCH,
                                 f"protocol version {msg.protocol_version} not supported "
                                 f"(this verifier speaks {PROTOCOL_VERSION})")
                elif isinstance(msg, SessionStart):
                    self._on_start(msg, emit)
                elif isinstance(msg, DraftBlock):
                    self._on_block(msg, emit, received_at)
                elif isinstance(msg, SessionEnd):
                    self._on_end(msg)
                else:
                    self.stats.stale += 1
                    log.warning("ignoring unexpected %s from an edge", type(msg).__name__)
            except Exception as exc:  # never let one session kill the server
                log.exception("verifier failed on %s", type(msg).__name__)
                self.stats.errors += 1
                self.stats.last_error = f"{type(exc).__name__}: {exc}"
                sess = self._sessions.get(msg.session_id)
                self._close(msg.session_id, sess, emit, EndReason.INTERNAL_ERROR,
                            f"verifier error: {type(exc).__name__}: {exc}")

    def expire(self, emit: Emit, now: Optional[float] = None) -> List[str]:
        """Close sessions idle longer than ``session_timeout_s``; forget long-closed ones."""
        now = self.clock() if now is None else now
        expired = []
        with self._lock:
            for sid, sess in list(self._sessions.items()):
                if now - sess.last_active > self.session_timeout_s:
                    expired.append(sid)
                    self.stats.sessions_timed_out += 1
                    self._close(sid, sess, emit, EndReason.TIMEOUT,
                                f"session idle for more than {self.session_timeout_s:g} s")
            for sid, (closed_at, _) in list(self._closed.items()):
                if now - closed_at > self.linger_s:
                    del self._closed[sid]
        return expired

    # -- sessions ---------------------------------------------------------------------------
    def _send(self, sess: Optional[_Session], emit: Emit, msg: Message) -> None:
        if sess is not None:
            msg.seq = sess.out_seq
            sess.out_seq += 1
        emit(msg)

    def _refuse(self, msg: Message, emit: Emit, reason: EndReason, detail: str) -> None:
        self.stats.errors += 1
        self.stats.last_error = detail
        if isinstance(msg, SessionStart):
            self.stats.sessions_refused += 1
        log.info("session %s refused: %s", msg.session_id, detail)
        sess = self._sessions.get(msg.session_id)
        self._close(msg.session_id, sess, emit, reason, detail)

    def _close(self, sid: str, sess: Optional[_Session], emit: Optional[Emit], reason: EndReason,
               detail: str = "", tokens: Sequence[int] = ()) -> None:
        end = SessionEnd(
            session_id=sid,
            reason=int(reason),
            detail=detail,
            tokens=list(tokens),
            target_forward_passes=sess.forward_passes if sess else 0,
            cloud_compute_ms=sess.compute_ms if sess else 0.0,
        )
        if sess is not None:
            sess.state = None  # free the KV cache
            sess.end = end
            self._sessions.pop(sid, None)
            self._closed[sid] = (self.clock(), sess)
        if emit is not None:
            self._send(sess, emit, end)

    def _on_start(self, msg: SessionStart, emit: Emit) -> None:
        sid = msg.session_id
        if sid in self._sessions or sid in self._closed:
            self.stats.duplicates += 1  # a repeated SessionStart: the session exists already
            return
        problem = self._check_start(msg)
        if problem is not None:
            self._refuse(msg, emit, *problem)
            return
        t0 = time.perf_counter()
        mode = DecodingMode(msg.mode)
        params = SamplingParams(bool(msg.do_sample), float(msg.temperature), int(msg.top_k))
        stop = frozenset(int(t) for t in msg.stop_token_ids)
        sess = _Session(
            start=msg,
            state=None,
            params=params,
            stop=stop,
            generator=make_generator(msg.seed, "verify"),
            hints=mode == DecodingMode.SPECULATIVE_EARLY_EXIT and self.exit_heads is not None,
            last_active=self.clock(),
        )
        sess.seen_seq.add(msg.seq)
        try:
            image = decode_image(msg.image_data, msg.image_format) if msg.image_data else None
        except Exception as exc:
            self._refuse(msg, emit, EndReason.BAD_REQUEST, f"cannot decode the {msg.image_format!r} image: {exc}")
            return
        try:
            inputs = self.target.encode(msg.prompt, image)
        except Exception as exc:
            self._refuse(msg, emit, EndReason.BAD_REQUEST, f"cannot encode the prompt: {exc}")
            return
        self._sessions[sid] = sess
        self.stats.sessions_started += 1
        sess.state = self.target.prefill(inputs)
        if len(inputs.input_ids) > 1:
            self._count_forward(sess)
        sess.compute_ms += (time.perf_counter() - t0) * 1000
        if mode == DecodingMode.CLOUD_ONLY:
            self._cloud_only(sess, emit)

    def _check_start(self, msg: SessionStart):
        if msg.tokenizer_fingerprint != self.target.fingerprint:
            return (EndReason.TOKENIZER_MISMATCH,
                    f"tokenizer fingerprint {msg.tokenizer_fingerprint[:12]!r} does not match the target's "
                    f"{self.target.fingerprint[:12]!r}: draft and target must tokenize identically")
        if len(self._sessions) >= self.max_sessions:
            return EndReason.OVERLOADED, f"{len(self._sessions)} sessions open (limit {self.max_sessions})"
        try:
            mode = DecodingMode(msg.mode)
        except ValueError:
            return EndReason.BAD_REQUEST, f"unknown decoding mode {msg.mode}"
        if mode == DecodingMode.EDGE_ONLY:
            return EndReason.BAD_REQUEST, "EDGE_ONLY sessions are decoded on the edge, never sent to a cloud"
        if not 1 <= msg.max_new_tokens <= self.max_new_tokens_limit:
            return EndReason.BAD_REQUEST, f"max_new_tokens {msg.max_new_tokens} outside 1..{self.max_new_tokens_limit}"
        if mode != DecodingMode.CLOUD_ONLY and not 1 <= msg.gamma <= self.max_gamma:
            return EndReason.BAD_REQUEST, f"gamma {msg.gamma} outside 1..{self.max_gamma}"
        if msg.do_sample and not msg.temperature > 0:
            return EndReason.BAD_REQUEST, f"sampling needs temperature > 0 (got {msg.temperature})"
        if msg.top_k < 0:
            return EndReason.BAD_REQUEST, f"top_k {msg.top_k} < 0"
        if msg.image_data and not self.target.is_vlm:
            return EndReason.BAD_REQUEST, f"target {self.target.name} is text-only but an image was sent"
        return None

    def _on_end(self, msg: SessionEnd) -> None:
        sess = self._sessions.get(msg.session_id)
        if sess is None:
            return  # already closed (normal after a finished result) or unknown
        if msg.seq in sess.seen_seq:
            return
        reason = EndReason(msg.reason) if msg.reason in EndReason._value2member_map_ else EndReason.CANCELLED
        self._close(msg.session_id, sess, None, reason, msg.detail)

    def _count_forward(self, sess: _Session) -> None:
        sess.forward_passes += 1
        self.stats.target_forward_passes += 1

    # -- blocks -----------------------------------------------------------------------------
    def _on_block(self, msg: DraftBlock, emit: Emit, received_at: float) -> None:
        sid = msg.session_id
        sess = self._sessions.get(sid)
        if sess is None:
            closed = self._closed.get(sid)
            if closed is not None:
                self._answer_old_round(closed[1], msg, emit, resend_end=True)
            else:
                self._refuse(msg, emit, EndReason.UNKNOWN_SESSION, f"unknown session {sid!r}")
            return
        sess.last_active = self.clock()
        if msg.round < sess.next_round or (msg.seq in sess.seen_seq and msg.round in sess.results):
            self._answer_old_round(sess, msg, emit)
            return
        if msg.seq in sess.seen_seq:
            self.stats.stale += 1  # same seq as another message: a corrupt duplicate
            return
        sess.seen_seq.add(msg.seq)
        if msg.round > sess.next_round or msg.position != len(sess.committed):
            self._refuse(msg, emit, EndReason.BAD_REQUEST,
                         f"out-of-order block: round {msg.round} at position {msg.position}, expected round "
                         f"{sess.next_round} at position {len(sess.committed)}")
            return
        problem = self._check_block(sess, msg)
        if problem:
            self._refuse(msg, emit, EndReason.BAD_REQUEST, problem)
            return
        self._verify(sess, msg, emit, received_at)

    def _answer_old_round(self, sess: _Session, msg: DraftBlock, emit: Emit, resend_end: bool = False) -> None:
        known = sess.blocks.get(msg.round)
        if known is not None and known == (msg.position, tuple(msg.tokens)):
            self.stats.duplicates += 1
            emit(sess.results[msg.round])  # same message (same seq) as the first answer
            if resend_end and sess.end is not None and msg.round == max(sess.results):
                emit(sess.end)
        elif resend_end and sess.end is not None:
            self.stats.stale += 1
            emit(sess.end)  # the session is over (e.g. timed out): tell the edge again
        else:
            self.stats.stale += 1
            log.debug("ignoring stale block round %d of session %s", msg.round, msg.session_id)

    def _check_block(self, sess: _Session, msg: DraftBlock) -> Optional[str]:
        n = len(msg.tokens)
        if n > sess.start.gamma:
            return f"block of {n} tokens exceeds the session's gamma {sess.start.gamma}"
        vocab = self.target.vocab_size
        if any(not 0 <= t < vocab for t in msg.tokens):
            return f"draft token outside the vocabulary 0..{vocab - 1}"
        if sess.params.do_sample and n:
            k = msg.topk
            if k < 1 or len(msg.topk_ids) != n * k or len(msg.topk_probs) != n * k:
                return (f"sampling needs topk_ids/topk_probs of len(tokens) * topk = {n} * {k}, got "
                        f"{len(msg.topk_ids)} / {len(msg.topk_probs)}")
        return None

    def _verify(self, sess: _Session, msg: DraftBlock, emit: Emit, received_at: float) -> None:
        t0 = time.perf_counter()
        queue_ms = max(0.0, (self.clock() - received_at) * 1000)
        tokens = list(msg.tokens)
        n = len(tokens)
        hooks = None
        if sess.hints and n:
            hooks = self._attach_hint(sess, msg, emit, t0)
        try:
            logits = self.target.block_logits(sess.state, sess.committed, tokens)
        finally:
            if hooks is not None:
                hooks.remove()
        self._count_forward(sess)
        if sess.params.do_sample:
            accepted, next_token = self.sampling_rule(
                logits, tokens, topk_ids=msg.topk_ids, topk_probs=msg.topk_probs, topk=msg.topk,
                params=sess.params, generator=sess.generator,
            )
        else:
            accepted, next_token = self.greedy_rule(logits, tokens)
        accepted, next_token, finish = self._finish_rules(sess, tokens, accepted, next_token)
        sess.committed.extend(tokens[:accepted])
        sess.committed.append(next_token)
        verify_ms = (time.perf_counter() - t0) * 1000
        sess.compute_ms += verify_ms
        self.stats.compute_ms += verify_ms
        self.stats.rounds += 1
        result = VerifyResult(
            session_id=sess.start.session_id,
            round=msg.round,
            position=msg.position,
            accepted=accepted,
            next_token=next_token,
            finished=finish != FinishReason.NOT_FINISHED,
            finish_reason=int(finish),
            queue_ms=queue_ms,
            verify_ms=verify_ms,
            target_forward_passes=sess.forward_passes,
        )
        sess.results[msg.round] = result
        sess.blocks[msg.round] = (msg.position, tuple(tokens))
        sess.next_round = msg.round + 1
        self._send(sess, emit, result)
        if result.finished:
            self.stats.sessions_completed += 1
            self._close(sess.start.session_id, sess, emit, EndReason.COMPLETED, FinishReason(finish).name.lower())

    def _finish_rules(self, sess: _Session, tokens: List[int], accepted: int, next_token: int):
        """Cut the committed tokens at the first stop token / at max_new_tokens, like generate()."""
        out = tokens[:accepted] + [next_token]
        cut = len(out)
        finish = FinishReason.NOT_FINISHED
        if sess.stop:
            for i, token in enumerate(out):
                if token in sess.stop:
                    cut, finish = i + 1, FinishReason.STOP_TOKEN
                    break
        remaining = sess.start.max_new_tokens - len(sess.committed)
        if cut >= remaining:
            if cut > remaining or finish == FinishReason.NOT_FINISHED:
                finish = FinishReason.MAX_NEW_TOKENS
            cut = remaining
        if cut < len(out):
            accepted, next_token = cut - 1, out[cut - 1]
        return accepted, next_token, finish

    def _attach_hint(self, sess: _Session, msg: DraftBlock, emit: Emit, t0: float):
        n = len(msg.tokens)
        draft = torch.tensor(msg.tokens)
        fired = []

        def on_exit(layer: int, logits: torch.Tensor) -> None:
            if fired:
                return
            fired.append(layer)
            rows = logits[0, -(n + 1):].float()
            guess = rows.argmax(-1)
            accepted = int((guess[:n].cpu() == draft).to(torch.int32).cumprod(0).sum())
            token = int(guess[accepted])
            confidence = float(torch.softmax(rows[accepted], -1)[token])
            hint = EarlyExitHint(
                session_id=sess.start.session_id,
                round=msg.round,
                position=msg.position,
                exit_layer=layer,
                predicted_accepted=accepted,
                predicted_next_token=token,
                confidence=confidence,
                exit_ms=(time.perf_counter() - t0) * 1000,
            )
            self.stats.hints_sent += 1
            self._send(sess, emit, hint)

        return self.exit_heads.attach(on_exit, layers=[self.exit_layer])

    # -- cloud-only -------------------------------------------------------------------------
    def _cloud_only(self, sess: _Session, emit: Emit) -> None:
        t0 = time.perf_counter()
        state = sess.state
        pending = [state.prompt_ids[-1]]
        tokens: List[int] = []
        for _ in range(sess.start.max_new_tokens):
            logits = self.target.forward(state, pending, keep=1)[-1]
            self._count_forward(sess)
            token = choose_token(logits, sess.params, sess.generator)
            tokens.append(token)
            if token in sess.stop:
                break
            pending = [token]
        elapsed = (time.perf_counter() - t0) * 1000
        sess.compute_ms += elapsed
        self.stats.compute_ms += elapsed
        self.stats.sessions_completed += 1
        self._close(sess.start.session_id, sess, emit, EndReason.COMPLETED, "cloud-only", tokens=tokens)
