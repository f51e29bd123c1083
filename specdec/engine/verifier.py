"""Cloud side: verifies draft blocks with the target model, one state per session.

:class:`Verifier` is transport-agnostic. Messages are *admitted* (cheap checks, answers that need
no model) and the model work they cause is *queued* per robot; a scheduler runs the queued work
round-robin across robots, one unit at a time, so one robot's long job (a 4096-token cloud-only
decode, a flood of sessions) delays its own work, not the others'.

* ``serve(transport, stop_event)`` - the receive loop: admit what arrives, run queued work,
  prefill sessions whose first block did not come in time, expire idle sessions.
* ``handle(msg, emit)`` - admit one message and run everything it queued (synchronous: tests and
  simple callers). ``emit`` is thread-safe and non-blocking: it is also called from inside the
  target's forward pass to ship early-exit hints.

Message handling
----------------
* ``SessionStart``: the protocol version and tokenizer fingerprint must match
  (else ``SessionEnd`` with ``PROTOCOL_VERSION_MISMATCH`` / ``TOKENIZER_MISMATCH``);
  bad parameters or a prompt over ``max_prompt_tokens`` give ``BAD_REQUEST``, too many open
  sessions ``OVERLOADED`` (per-robot and byte caps are the server's, before decoding). The
  prompt (and image) is encoded with the target's chat template and
  ``prompt[:-1]`` prefilled - or, with ``prefill_wait_ms``, the prefill waits that long for block 0
  and both go through the target in ONE forward pass. ``CLOUD_ONLY`` sessions are decoded
  autoregressively (a few tokens per turn of the scheduler) and answered with
  ``SessionEnd(COMPLETED, tokens=...)``.
* Batching (``max_batch`` > 1): rounds and cloud-only steps of several robots that are ready go
  through ONE forward pass (left-padded caches), and so do whole prefills - each with its block 0
  where one waited - with each other (left-padded prompts; a prompt is far longer than a block, so
  the two kinds do not mix). A chunked prefill runs alone, one chunk per turn.
* ``DraftBlock`` for the expected round: one target forward over
  ``[last committed token] + tokens`` - plus, for a greedy block that offers the draft's next-best
  tokens (``topk > 1``) and has the pass to itself, those alternatives as one-token branches
  (at most ``VerifierSettings.max_branches``, the draft's likeliest: ``sampling.choose_branches``);
  the LM head runs once, when acceptance first reads a row, for all the pass's rows. When the
  target's token at the first rejection is an alternative, its branch row gives the token after it:
  the result commits one token more (``VerifyResult.alternative``). With early-exit heads in
  ``SPECULATIVE_EARLY_EXIT`` mode, every exit layer sends an ``EarlyExitHint`` (predicted accepted
  count and next token) as the pass reaches it, its rows in one head call too (an exit that attends
  reads the rows before the block from the target's own cache, so rollbacks need nothing of it). Then acceptance
  (greedy or rejection sampling, under the session's grammar when it has one), stop-token /
  ``max_new_tokens`` truncation, ``VerifyResult`` - carrying, when the session asked
  (``return_states``: a draft conditioned on the target's states), the pass's final hidden states of
  the committed positions. When generation is finished the session is closed and
  ``SessionEnd(COMPLETED)`` with the cost totals follows the final result.
* Duplicates - a block whose ``seq`` was already seen, or a block for an already verified round
  with the same tokens - are answered by resending the cached ``VerifyResult`` (no target
  forward), also for a while (``linger_s``) after the session closed. They do not count as
  activity: a session kept alive only by duplicates still times out.
* Stale blocks - an already verified round with *different* tokens - are ignored (counted in
  ``stats.stale``). A block for a session that is already closed is answered with that
  session's ``SessionEnd`` again.
* Out-of-order blocks - a future round, or the expected round at the wrong ``position`` - are a
  protocol error: ``SessionEnd(BAD_REQUEST)`` and the session is closed.
* ``SessionEnd`` from the edge closes the session (no answer).
* Sessions idle longer than ``session_timeout_s`` are closed by ``expire()`` (called by
  ``serve``) with ``SessionEnd(TIMEOUT)``.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Deque, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from ..models.adapters import DecodeState, ModelAdapter, PromptInputs
from ..models.early_exit import EarlyExitHeads
from ..models.feature_draft import encode_states
from ..models.images import decode_image
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
from .grammar import GrammarError, compile_grammar
from .sampling import AcceptFn, SamplingParams, choose_branches, greedy_accept, make_generator, rejection_accept
from .stats import VerifierStats
from .token_loop import TokenLoop, TokenPicker
from .verifier_settings import VerifierSettings

log = logging.getLogger(__name__)

Emit = Callable[[Message], None]


@dataclass
class _Session:
    start: SessionStart
    params: SamplingParams
    stop: frozenset
    generator: torch.Generator
    hints: bool
    grammar: object = None
    inputs: Optional[PromptInputs] = None  # encoded prompt, kept until the prefill
    state: Optional[DecodeState] = None  # the target's KV cache once prefilled
    prefill_due: Optional[float] = None  # deferred prefill: run it by then if block 0 has not come
    prefilling: Optional[Iterator[Tuple[DecodeState, bool]]] = None  # a chunked prefill in progress
    decode: Optional[TokenLoop] = None  # a cloud-only decode (or a continuation) in progress
    held: Optional[Tuple[VerifyResult, float]] = None  # a result waiting for its continuation to end
    pending_hints: List[Tuple[float, EarlyExitHint]] = field(default_factory=list)  # (send at, hint)
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

    @property
    def sid(self) -> str:
        return self.start.session_id

    @property
    def robot(self) -> str:
        return self.start.robot_id


class _Rows:
    """The target's logits for a verified block: row ``i`` scores the token after ``committed +
    tokens[:i]`` (masked by the grammar when the session has one). The LM head runs once, when an
    acceptance rule first reads a row, for every row of the pass (branch rows included): one pass
    over the head's weights serves a few rows for little more than one costs, row by row it would
    be one pass each."""

    def __init__(self, target: ModelAdapter, hidden: torch.Tensor, sess: _Session, tokens: List[int]):
        self.target = target
        self.hidden = hidden
        self.grammar = sess.grammar
        self.state = sess.grammar.state_after(sess.committed) if sess.grammar is not None else None
        self.tokens = tokens
        self.logits: Optional[torch.Tensor] = None  # [rows, vocab], computed on first read
        self.rows: Dict[int, torch.Tensor] = {}
        self.computed = 0

    def _grammar_state(self, i: int):
        state = self.state
        for token in self.tokens[:i]:
            state = self.grammar.advance(state, token)
        return state

    def __getitem__(self, i: int) -> torch.Tensor:
        if i not in self.rows:
            if self.logits is None:
                self.logits = self.target.logits(self.hidden)
                self.computed = self.hidden.shape[0]
            row = self.logits[i]
            if self.grammar is not None:
                allowed = self.grammar.allowed(self._grammar_state(i), device=row.device)
                if allowed.any():  # none: the row follows a stop token and is cut anyway
                    row = row.masked_fill(~allowed, float("-inf"))
            self.rows[i] = row
        return self.rows[i]

    def path(self, accepted: int, branch: int, token: int) -> "_Rows":
        """The rows along ``tokens[:accepted] + [token]``, the branch ``token`` being hidden row
        ``branch``: its last row predicts the token after the branch."""
        rows = [*range(accepted + 1), branch]
        view = _Rows.__new__(_Rows)  # same session and grammar start: nothing to recompute
        view.target, view.grammar, view.state = self.target, self.grammar, self.state
        view.tokens = self.tokens[:accepted] + [token]
        view.hidden = self.hidden[rows]
        view.logits = self.logits[rows] if self.logits is not None else None
        view.rows = {i: row for i, row in self.rows.items() if i <= accepted}
        view.computed = 0
        return view


@dataclass
class _Job:
    """One sequence's share of a forward pass: a verification round or a cloud-only step."""

    kind: str  # "verify" | "decode" | "prefill"
    sess: _Session
    msg: Optional[DraftBlock]
    received_at: float
    feed: Optional[List[int]]  # tokens fed after the cache (None: a prefill, with block 0 if a "verify")
    keep: int  # final hidden rows wanted
    tokens: List[int]  # the draft block
    t0: float
    hints: bool
    # greedy: (position in tokens, alternative token) verified as branches of this pass; emptied when
    # the pass is shared (batched), which verifies the block alone
    branches: List[Tuple[int, int]] = field(default_factory=list)


class Verifier:
    """Holds the target and per-session state; answers protocol messages.

    Parameters
    ----------
    target: the target :class:`ModelAdapter`.
    exit_heads: :class:`EarlyExitHeads` for the target, or a path to load them from
        (refused with :class:`EarlyExitError` when they do not fit), or None.
    exit_layer: the one exit layer that sends hints; None (default): every layer in the heads,
        each as the pass reaches it (progressive hints).
    greedy_rule / sampling_rule: acceptance rules (defaults: greedy prefix match,
        rejection sampling); replaceable for experiments and tests.
    settings (or keyword overrides of its fields): :class:`VerifierSettings` - caps, idle
        timeouts, the merged-prefill wait, cloud-only chunking and batching.
    """

    def __init__(
        self,
        target: ModelAdapter,
        exit_heads=None,
        *,
        exit_layer: Optional[int] = None,
        settings: Optional[VerifierSettings] = None,
        greedy_rule: AcceptFn = greedy_accept,
        sampling_rule: AcceptFn = rejection_accept,
        clock: Callable[[], float] = time.monotonic,
        **overrides,
    ):
        self.target = target
        if isinstance(exit_heads, (str, os.PathLike)):
            exit_heads = EarlyExitHeads.load(target.model, os.fspath(exit_heads))
        self.exit_heads: Optional[EarlyExitHeads] = exit_heads
        self.hint_layers: List[int] = []
        if exit_heads is not None:
            if exit_layer is not None and exit_layer not in exit_heads.exit_layers:
                raise ValueError(f"exit layer {exit_layer} not in the heads' layers {exit_heads.exit_layers}")
            self.hint_layers = [exit_layer] if exit_layer is not None else list(exit_heads.exit_layers)
        self.exit_layer = self.hint_layers[0] if self.hint_layers else None
        self.settings = dataclasses.replace(settings or VerifierSettings(), **overrides).check()
        for item in dataclasses.fields(self.settings):  # read as plain attributes below
            setattr(self, item.name, getattr(self.settings, item.name))
        self.greedy_rule = greedy_rule
        self.sampling_rule = sampling_rule
        self.clock = clock
        self.stats = VerifierStats()
        self._sessions: Dict[str, _Session] = {}
        self._closed: Dict[str, Tuple[float, _Session]] = {}
        self._grammars: Dict[Tuple[str, Tuple[int, ...]], object] = {}
        # queued model work per robot, served round-robin: (kind, session id, message, received at)
        self._queues: Dict[str, Deque[Tuple[str, str, Optional[Message], float]]] = {}
        self._turns: Deque[str] = collections.deque()
        self._lock = threading.RLock()
        self._send_lock = threading.RLock()  # not _lock: a hint's timer must not wait out a forward pass
        # whether an edge's message waits at the transport (set by serve): a lone cloud-only turn
        # of a batching verifier ends early for it
        self._waiting: Callable[[], bool] = lambda: False

    # -- public -----------------------------------------------------------------------------
    @property
    def batches(self) -> bool:
        """Whether a forward pass may carry several sessions' work (else: serialized)."""
        return self.max_batch > 1 and self.target.can_batch

    @property
    def open_sessions(self) -> List[str]:
        with self._lock:
            return list(self._sessions)

    @property
    def queued(self) -> int:
        with self._lock:
            return sum(len(q) for q in self._queues.values())

    def serve(self, transport, stop_event: threading.Event, poll_s: float = 0.05) -> None:
        """Receive loop: admit messages, run queued work, run due prefills, expire idle sessions."""
        last_expire = self.clock()
        timed = hasattr(transport, "recv_with_time")
        emit = transport.send
        self._waiting = getattr(transport, "waiting", self._waiting)
        while not stop_event.is_set():
            with self._lock:
                now = self.clock()
                wait = self._next_batch_wait(now) if self.queued else min(poll_s, self._next_due(now))
            received = 0
            while True:
                # after the first, only what is already here: e.g. the blocks that arrived during the last
                # pass, which then share the next one (taken one per pass, they never would)
                if timed:
                    msg, arrived = transport.recv_with_time(wait if received == 0 else 0.0)
                else:
                    msg, arrived = transport.recv(wait if received == 0 else 0.0), None
                if msg is None:
                    break
                received += 1
                with self._lock:
                    self.admit(msg, emit, received_at=arrived)
                    if self.queued >= 2 * self.max_batch:
                        break  # the rest waits in the transport's inbox, bounded per robot (backpressure)
            with self._lock:
                if received and self._next_batch_wait(self.clock()) > 0:
                    continue  # a batch that is not full yet: wait for more blocks
                self._queue_due_prefills(self.clock())
                self.run_next(emit)
            now = self.clock()
            if now - last_expire >= min(1.0, self.session_timeout_s / 4):
                self.expire(emit, now)
                last_expire = now

    def handle(self, msg: Message, emit: Emit, received_at: Optional[float] = None) -> None:
        """Admit one message from an edge and run all the work it queued."""
        with self._lock:
            self.admit(msg, emit, received_at)
            while self.run_next(emit):
                pass

    def flush_prefills(self, emit: Emit) -> None:
        """Prefill every session still waiting for its first block, now."""
        with self._lock:
            self._queue_due_prefills(float("inf"))
            while self.run_next(emit):
                pass

    def expire(self, emit: Emit, now: Optional[float] = None) -> List[str]:
        """Close sessions idle longer than ``session_timeout_s``; forget long-closed ones."""
        now = self.clock() if now is None else now
        expired = []
        with self._lock:
            for sid, sess in list(self._sessions.items()):
                if now - sess.last_active > self.session_timeout_s:
                    expired.append(sid)
                    self.stats.sessions_timed_out += 1
                    self._close(sess, emit, EndReason.TIMEOUT, f"session idle for more than {self.session_timeout_s:g} s")
            for sid, (closed_at, _) in list(self._closed.items()):
                if now - closed_at > self.linger_s:
                    del self._closed[sid]
        return expired

    # -- admission: cheap checks, answers without the model, queued work -----------------------
    def admit(self, msg: Message, emit: Emit, received_at: Optional[float] = None) -> None:
        received_at = self.clock() if received_at is None else received_at
        with self._lock:
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
                self._failed(msg.session_id, emit, exc)

    def _queue(self, sess: _Session, kind: str, msg: Optional[Message] = None, received_at: float = 0.0,
               first: bool = False) -> None:
        """Queue model work for the session's robot (``first``: ahead of that robot's other work,
        e.g. the rest of a chunked prefill its blocks need)."""
        robot = sess.robot
        if robot not in self._queues:
            self._queues[robot] = collections.deque()
        if not self._queues[robot]:
            self._turns.append(robot)
        item = (kind, sess.sid, msg, received_at)
        if first:
            self._queues[robot].appendleft(item)
        else:
            self._queues[robot].append(item)

    def run_next(self, emit: Emit) -> bool:
        """Run the next robot's queued work - with other robots' ready work of the same kind (rounds
        and cloud-only steps, or whole prefills) in ONE batched forward pass; False when there was none."""
        with self._lock, torch.inference_mode():
            if not self._turns:
                return False
            item = self._pop(self._turns[0])
            kind, sid, msg, received_at = item
            sess = self._sessions.get(sid)
            if sess is None:
                if kind == "verify":
                    self._on_block(msg, emit, received_at)  # closed meanwhile: answered from the closed session
                return True
            group = self._batch_group(item)
            if kind == "prefill" and group is None:
                self._guarded(sid, emit, self._prefill, sess, emit)  # a chunked (or unbatchable) prefill
                return True
            items = [item]
            if group is not None:
                limit = self.settings.prefill_batch_limit if group == "prompt" else self.max_batch
                prompts = int(self._is_prompt(item))  # whole prefills in the pass: at most prefill_batch_limit
                for robot in list(self._turns):
                    if len(items) >= limit:
                        break
                    head = self._queues[robot][0]
                    if self._batch_group(head) == group:
                        if self._is_prompt(head):
                            if prompts >= self.settings.prefill_batch_limit:
                                continue
                            prompts += 1
                        items.append(self._pop(robot))
            self._run_batch(items, emit)
            return True

    def _pop(self, robot: str):
        """The robot's next work item; the robot's turn moves to the back of the line."""
        self._turns.remove(robot)
        queue = self._queues[robot]
        item = queue.popleft()
        if queue:
            self._turns.append(robot)
        else:
            del self._queues[robot]
        return item

    def _is_prompt(self, item) -> bool:
        """A whole prefill (with block 0 where it waited for one)."""
        sess = self._sessions.get(item[1])
        return sess is not None and sess.state is None and item[0] in ("prefill", "verify")

    def _batch_group(self, item) -> Optional[str]:
        """Which work can share a forward pass with ``item``: ``"cached"`` - rounds and cloud-only
        steps of prefilled sessions, and whole prefills (with block 0 where it waited for one) when
        ``mix_prefills`` is on; ``"prompt"`` - whole prefills, only with each other, when it is off;
        None - it runs alone."""
        kind, sid, _, _ = item
        sess = self._sessions.get(sid)
        if not self.batches or sess is None:
            return None
        if sess.state is not None:
            return "cached" if kind in ("verify", "decode") and sess.state.length > 0 else None
        inputs = sess.inputs
        if kind not in ("verify", "prefill") or inputs is None or sess.prefilling is not None \
                or self.settings.prefill_batch_limit <= 1:
            return None
        if kind == "prefill" and len(inputs.input_ids) < 2:
            return None  # nothing to feed before the last prompt token
        if inputs.model_inputs and not self.target.batch_prefill_images:
            return None
        if self.prefill_chunk > 0 and len(inputs.input_ids) - 1 > self.prefill_chunk:
            return None  # chunked: one chunk per turn, alone
        # mixed: the prompt rides in the pass of the others' rounds and steps, which then do not
        # wait a whole pass for it (its rows cost the pass their tokens, padded to the longest feed)
        return "cached" if self.settings.mix_prefills else "prompt"

    def _guarded(self, sid: str, emit: Emit, fn, *args) -> None:
        try:
            fn(*args)
        except Exception as exc:
            self._failed(sid, emit, exc)

    def _next_batch_wait(self, now: float) -> float:
        """How long to wait for more blocks before running a batch that is not full (0: run now)."""
        if self.batch_window_ms <= 0 or not self._turns:
            return 0.0
        heads = [self._queues[r][0] for r in self._turns]
        groups = {self._batch_group(h) for h in heads}
        if len(heads) >= self.max_batch or len(groups) != 1 or None in groups:  # full, mixed or unbatchable
            return 0.0
        if len(heads) >= len({s.robot for s in self._sessions.values()}):
            return 0.0  # every robot with an open session is in already: nobody else can join
        oldest = min(h[3] for h in heads)
        return max(0.0, oldest + self.batch_window_ms / 1000 - now)

    def _failed(self, sid: str, emit: Emit, exc: Exception) -> None:
        log.exception("verifier failed on session %s", sid)
        self.stats.errors += 1
        self.stats.last_error = f"{type(exc).__name__}: {exc}"
        sess = self._sessions.get(sid)
        if sess is not None:
            self._close(sess, emit, EndReason.INTERNAL_ERROR, f"verifier error: {type(exc).__name__}: {exc}")
        else:
            emit(SessionEnd(session_id=sid, reason=int(EndReason.INTERNAL_ERROR),
                            detail=f"verifier error: {type(exc).__name__}: {exc}"))

    # -- sessions ---------------------------------------------------------------------------
    def _send(self, sess: Optional[_Session], emit: Emit, msg: Message) -> None:
        with self._send_lock:  # hint timers send too
            if sess is not None:
                if sess.pending_hints and not isinstance(msg, EarlyExitHint):
                    self._flush_hints(sess, emit, float("inf"))  # nothing overtakes a round's hints
                msg.seq = sess.out_seq
                sess.out_seq += 1
            emit(msg)

    def _post_hint(self, sess: _Session, emit: Emit, hint: EarlyExitHint, at: Optional[float]) -> None:
        """Send ``hint`` at ``at`` (``time.perf_counter``; None or past: now) without holding the
        pass: an emulated device's hint leaves when the pass reaches its layer, while the real
        compute runs on."""
        if at is None or at <= time.perf_counter():
            self._send(sess, emit, hint)
            return
        with self._send_lock:
            sess.pending_hints.append((at, hint))
        timer = threading.Timer(at - time.perf_counter(), self._hints_due, (sess, emit, at))
        timer.daemon = True
        timer.start()

    def _hints_due(self, sess: _Session, emit: Emit, at: float) -> None:
        try:
            if sess.end is None:
                self._flush_hints(sess, emit, at)
        except Exception:  # a one-shot timer thread: say why the hint was lost
            log.exception("session %s: early-exit hint not sent", sess.sid)

    def _flush_hints(self, sess: _Session, emit: Emit, until: float) -> None:
        with self._send_lock:
            due = [hint for at, hint in sess.pending_hints if at <= until]
            sess.pending_hints = [(at, hint) for at, hint in sess.pending_hints if at > until]
            for hint in due:
                self._send(sess, emit, hint)

    def _refuse(self, msg: Message, emit: Emit, reason: EndReason, detail: str) -> None:
        self.stats.errors += 1
        self.stats.last_error = detail
        if isinstance(msg, SessionStart):
            self.stats.sessions_refused += 1
        log.info("session %s refused: %s", msg.session_id, detail)
        sess = self._sessions.get(msg.session_id)
        if sess is not None:
            self._close(sess, emit, reason, detail)
        else:
            emit(SessionEnd(session_id=msg.session_id, reason=int(reason), detail=detail))

    def _close(self, sess: _Session, emit: Optional[Emit], reason: EndReason, detail: str = "",
               tokens: Sequence[int] = ()) -> None:
        end = SessionEnd(session_id=sess.sid, reason=int(reason), detail=detail, tokens=list(tokens),
                         target_forward_passes=sess.forward_passes, cloud_compute_ms=sess.compute_ms)
        sess.state = sess.inputs = sess.decode = None  # free the KV cache and the image tensors
        sess.end = end
        self._sessions.pop(sess.sid, None)
        self._closed[sess.sid] = (self.clock(), sess)
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
        try:
            image = decode_image(msg.image_data, msg.image_format) if msg.image_data else None
        except Exception as exc:
            self._refuse(msg, emit, EndReason.BAD_REQUEST, f"cannot decode the {msg.image_format!r} image: {exc}")
            return
        stop = frozenset(int(t) for t in msg.stop_token_ids)
        try:
            grammar = self._grammar(msg.grammar, stop) if msg.grammar else None
        except GrammarError as exc:
            self._refuse(msg, emit, EndReason.BAD_REQUEST, f"grammar refused: {exc}")
            return
        try:
            inputs = self.target.encode(msg.prompt, image)
        except Exception as exc:
            self._refuse(msg, emit, EndReason.BAD_REQUEST, f"cannot encode the prompt: {exc}")
            return
        if len(inputs.input_ids) > self.max_prompt_tokens:
            self._refuse(msg, emit, EndReason.BAD_REQUEST,
                         f"prompt of {len(inputs.input_ids)} tokens exceeds {self.max_prompt_tokens}")
            return
        sess = _Session(
            start=msg,
            params=SamplingParams(bool(msg.do_sample), float(msg.temperature), int(msg.top_k)),
            stop=stop,
            generator=make_generator(msg.seed, "verify"),
            hints=mode == DecodingMode.SPECULATIVE_EARLY_EXIT and self.exit_heads is not None,
            grammar=grammar,
            inputs=inputs,
            last_active=self.clock(),
        )
        sess.seen_seq.add(msg.seq)
        sess.compute_ms += (time.perf_counter() - t0) * 1000
        self._sessions[sid] = sess
        self.stats.sessions_started += 1
        wait_ms = min(max(float(msg.prefill_wait_ms), 0.0), self.max_prefill_wait_ms)
        if mode != DecodingMode.CLOUD_ONLY and wait_ms > 0:
            sess.prefill_due = self.clock() + wait_ms / 1000  # block 0 may ride along with the prefill
        else:
            self._queue(sess, "prefill")

    def _grammar(self, pattern: str, stop: frozenset):
        key = (pattern, tuple(sorted(stop)))
        if key not in self._grammars:
            if len(self._grammars) >= 16:  # grammars arrive over the wire: bound the cache
                self._grammars.pop(next(iter(self._grammars)))
            self._grammars[key] = compile_grammar(pattern, self.target, stop)
        return self._grammars[key]

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
        if sess is None or msg.seq in sess.seen_seq:
            return  # already closed (normal after a finished result), unknown, or a duplicate
        reason = EndReason(msg.reason) if msg.reason in EndReason._value2member_map_ else EndReason.CANCELLED
        self._close(sess, None, reason, msg.detail)

    def _count_forward(self, sess: _Session) -> None:
        sess.forward_passes += 1
        self.stats.target_forward_passes += 1

    # -- prefill ------------------------------------------------------------------------------
    def _next_due(self, now: float) -> float:
        due = [s.prefill_due for s in self._sessions.values() if s.prefill_due is not None]
        return max(0.0, min(due) - now) if due else float("inf")

    def _queue_due_prefills(self, now: float) -> None:
        for sess in list(self._sessions.values()):
            if sess.prefill_due is not None and sess.prefill_due <= now:
                sess.prefill_due = None
                self._queue(sess, "prefill")

    def _prefill(self, sess: _Session, emit: Emit) -> None:
        """The session's prefill - in ``prefill_chunk``-token passes, one per turn, so a long prompt
        does not hold up other robots' rounds."""
        if sess.state is not None or sess.inputs is None:
            return  # already prefilled (with block 0)
        t0 = time.perf_counter()
        if sess.prefilling is None:
            sess.prefilling = self.target.prefill_chunks(sess.inputs, self.prefill_chunk)
        state, done = next(sess.prefilling)
        self.target.settle()
        if len(sess.inputs.input_ids) > 1:
            self._count_forward(sess)
        self._spent(sess, t0)
        if not done:
            self._queue(sess, "prefill", first=True)  # more chunks: other robots' turns come between
            return
        sess.state, sess.inputs, sess.prefilling = state, None, None
        self._after_prefill(sess)

    def _finish_prefill(self, job: "_Job", hidden, emit: Emit, rows: int) -> None:
        """A prefill that ran in a batched pass with other sessions' prefills."""
        self.target.settle()
        self._spent(job.sess, job.t0, share=rows)
        self._after_prefill(job.sess)

    def _after_prefill(self, sess: _Session) -> None:
        if sess.start.mode == DecodingMode.CLOUD_ONLY:
            picker = TokenPicker.for_target(sess.params, sess.generator)
            sess.decode = TokenLoop(self.target, sess.state, [], limit=sess.start.max_new_tokens, picker=picker,
                                    stop=sess.stop, grammar=sess.grammar)
            self._queue(sess, "decode")

    def _spent(self, sess: _Session, t0: float, share: int = 1) -> None:
        """Charge the time since ``t0`` (a batched pass: this session's ``1 / share`` of it)."""
        elapsed = (time.perf_counter() - t0) * 1000 / share
        sess.compute_ms += elapsed
        self.stats.compute_ms += elapsed

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
        if msg.round < sess.next_round or (msg.seq in sess.seen_seq and msg.round in sess.results):
            self._answer_old_round(sess, msg, emit)  # a duplicate: not activity
            return
        if msg.seq in sess.seen_seq:
            self.stats.duplicates += 1  # a copy of a block still queued: the original's result answers both
            return
        sess.seen_seq.add(msg.seq)
        sess.last_active = self.clock()
        self._queue(sess, "verify", msg, received_at)

    def _answer_old_round(self, sess: _Session, msg: DraftBlock, emit: Emit, resend_end: bool = False) -> None:
        known = sess.blocks.get(msg.round)
        if known is not None and msg.round not in sess.results:
            self.stats.duplicates += 1  # its result waits for the cloud's continuation: it goes out then
            return
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
        if msg.round > sess.next_round or msg.position != len(sess.committed):
            return (f"out-of-order block: round {msg.round} at position {msg.position}, expected round "
                    f"{sess.next_round} at position {len(sess.committed)}")
        n = len(msg.tokens)
        if n > sess.start.gamma:
            return f"block of {n} tokens exceeds the session's gamma {sess.start.gamma}"
        vocab = self.target.token_count
        if any(not 0 <= t < vocab for t in msg.tokens):
            return f"draft token outside the vocabulary 0..{vocab - 1}"
        if sess.params.do_sample and n:
            k = msg.topk
            if k < 1 or len(msg.topk_ids) != n * k or len(msg.topk_probs) != n * k:
                return (f"sampling needs topk_ids/topk_probs of len(tokens) * topk = {n} * {k}, got "
                        f"{len(msg.topk_ids)} / {len(msg.topk_probs)}")
        elif msg.topk > 1 and n:  # greedy alternatives
            if len(msg.topk_ids) != n * msg.topk:
                return f"alternatives need topk_ids of len(tokens) * topk = {n} * {msg.topk}, got {len(msg.topk_ids)}"
            if any(not 0 <= t < vocab for t in msg.topk_ids):
                return f"alternative token outside the vocabulary 0..{vocab - 1}"
        return None

    def _branches(self, sess: _Session, msg: DraftBlock) -> List[Tuple[int, int]]:
        """A greedy block's alternatives run as branches of its pass, at most ``max_branches``
        (:func:`~specdec.engine.sampling.choose_branches`)."""
        k, limit = msg.topk, self.settings.max_branches
        if sess.params.do_sample or k < 2 or not limit or not self.target.can_branch:
            return []
        return choose_branches(msg.tokens, msg.topk_ids, msg.topk_probs, k, sess.stop, limit)

    # -- model work: verification rounds and cloud-only steps, alone or batched ----------------
    def _run_batch(self, items, emit: Emit) -> None:
        """Prepare each item, run ONE forward pass for all of them, finish each."""
        jobs: List[_Job] = []
        for kind, sid, msg, received_at in items:
            sess = self._sessions.get(sid)
            if sess is not None:
                job = None
                try:
                    job = self._prepare(kind, sess, msg, received_at, emit)
                except Exception as exc:
                    self._failed(sid, emit, exc)
                if job is not None:
                    jobs.append(job)
        for group in self._image_safe(jobs):
            self._run_jobs(group, emit)

    def _image_safe(self, jobs: List["_Job"]) -> List[List["_Job"]]:
        """Split off the rows that would break a pass carrying a prompt's image: a pass fills every
        image placeholder token in it with image features, so a row that feeds one as text (a draft
        or a generated token) runs in a pass of its own, not in - and not failing - the others'."""
        if len(jobs) < 2 or not any(j.feed is None and j.sess.inputs.model_inputs for j in jobs):
            return [jobs] if jobs else []
        ids = self.target.placeholder_ids
        clash = [any(t in ids for t in (j.tokens if j.feed is None else j.feed)) for j in jobs]
        return [[j for j, c in zip(jobs, clash) if not c]] + [[j] for j, c in zip(jobs, clash) if c]

    def _run_jobs(self, jobs: List["_Job"], emit: Emit) -> None:
        """ONE forward pass for ``jobs``, then finish each."""
        if not jobs:
            return
        if len(jobs) == 1 and jobs[0].kind == "decode":
            self._guarded(jobs[0].sess.sid, emit, self._decode_alone, jobs[0], emit)
            return
        t0 = time.perf_counter()
        hooks = self._attach_hints(jobs, emit, t0) if self.hint_layers else None
        try:
            if all(j.feed is None for j in jobs):  # prefills, with block 0 where it arrived while its prefill waited
                blocks = [j.tokens if j.kind == "verify" else None for j in jobs]
                prefilled = self.target.prefill_batch([j.sess.inputs for j in jobs], blocks, [j.keep for j in jobs])
                hiddens = []
                for job, (state, hidden) in zip(jobs, prefilled):
                    job.sess.state, job.sess.inputs, job.sess.prefill_due = state, None, None
                    hiddens.append(hidden)
            elif len(jobs) == 1 and jobs[0].branches:  # one round with its alternatives as branches
                job = jobs[0]
                parent = len(job.feed) - len(job.tokens) - 1  # the feed's last committed token
                hiddens = [self.target.forward_with_branches(job.sess.state, job.feed,
                                                             [(parent + i, t) for i, t in job.branches], job.keep)]
            else:  # rounds and steps, with any prompts mixed in (fed from position 0)
                for job in jobs:
                    job.branches = []  # a shared pass verifies blocks alone
                states, extras, prompt = [], [], []
                for job in jobs:
                    prompt.append(job.feed is None)
                    if job.feed is None:
                        state, extra = self.target.fresh_state(job.sess.inputs)
                        ids = list(job.sess.inputs.input_ids)
                        job.feed = ids + job.tokens if job.kind == "verify" else ids[:-1]
                    else:
                        state, extra = job.sess.state, {}
                    states.append(state)
                    extras.append(extra)
                hiddens = self.target.forward_batch(states, [j.feed for j in jobs], [j.keep for j in jobs], extras)
                for job, state, new in zip(jobs, states, prompt):
                    if new:
                        job.sess.state, job.sess.inputs, job.sess.prefill_due = state, None, None
        except Exception as exc:
            for job in jobs:
                self._failed(job.sess.sid, emit, exc)
            return
        finally:
            if hooks is not None:
                hooks.remove()
        self.stats.target_forward_passes += 1
        self.stats.batches += 1
        self.stats.batched_rows += len(jobs)
        for job, hidden in zip(jobs, hiddens):
            job.sess.forward_passes += 1
            finish = {"verify": self._finish_verify, "decode": self._finish_decode,
                      "prefill": self._finish_prefill}[job.kind]
            self._guarded(job.sess.sid, emit, finish, job, hidden, emit, len(jobs))

    def _prepare(self, kind: str, sess: _Session, msg, received_at: float, emit: Emit) -> Optional["_Job"]:
        if kind == "prefill":
            if sess.state is not None:
                return None  # already prefilled (with block 0)
            return _Job("prefill", sess, None, received_at, None, 0, [], time.perf_counter(), False)
        if kind == "decode":
            feed = sess.decode.next_feed()
            if feed is None:  # the grammar forced the token: no pass needed
                self._after_decode_step(sess, emit)
                return None
            return _Job("decode", sess, None, received_at, feed, 1, [], time.perf_counter(), False)
        if msg.round < sess.next_round:
            self._answer_old_round(sess, msg, emit)  # a re-sent block queued behind the original
            return None
        problem = self._check_block(sess, msg)
        if problem:
            self._refuse(msg, emit, EndReason.BAD_REQUEST, problem)
            return None
        tokens = list(msg.tokens)
        feed = None if sess.state is None else self.target.sync(sess.state, sess.committed) + tokens
        return _Job("verify", sess, msg, received_at, feed, len(tokens) + 1, tokens, time.perf_counter(),
                    sess.hints and bool(tokens), self._branches(sess, msg) if feed is not None else [])

    def _decode_alone(self, job: "_Job", emit: Emit) -> None:
        """A cloud-only session with nothing to batch with: up to ``decode_chunk`` tokens this turn.
        A batching verifier ends the turn early when an edge's message is waiting: the newcomer's
        work then joins this session's next step in one pass, instead of waiting out the chunk
        (a serialized verifier keeps the chunk: the newcomer could not share the pass anyway)."""
        sess, loop = job.sess, job.sess.decode
        t0 = time.perf_counter()
        hidden = self.target.forward_hidden(sess.state, job.feed, keep=1)
        self._count_forward(sess)
        loop.take(hidden)
        for _ in range(self.decode_chunk - 1):
            if loop.finished or (self.batches and self._waiting()):
                break
            passes = loop.forward_passes
            loop.step()
            for _ in range(loop.forward_passes - passes):
                self._count_forward(sess)
        self._spent(sess, t0)
        self._after_decode_step(sess, emit)

    def _finish_decode(self, job: "_Job", hidden: torch.Tensor, emit: Emit, rows: int) -> None:
        job.sess.decode.take(hidden)
        self._spent(job.sess, job.t0, share=rows)
        self._after_decode_step(job.sess, emit)

    def _after_decode_step(self, sess: _Session, emit: Emit) -> None:
        if not sess.decode.finished:
            self._queue(sess, "decode")
            return
        if sess.held is not None:  # a cloud continuation after a verified block: its result goes out now
            result, t0, sess.held = sess.held[0], sess.held[1], None
            result.continued = list(sess.decode.tokens)
            sess.committed.extend(result.continued)
            self.stats.continued_tokens += len(result.continued)
            finish = self._after_continue(sess, result.continued)
            result.finished, result.finish_reason = finish != FinishReason.NOT_FINISHED, int(finish)
            result.verify_ms = (time.perf_counter() - t0) * 1000
            result.target_forward_passes = sess.forward_passes
            sess.decode = None
            self._deliver(sess, result, emit)
            return
        self.stats.sessions_completed += 1
        self._close(sess, emit, EndReason.COMPLETED, "cloud-only", tokens=sess.decode.tokens)

    def _finish_verify(self, job: "_Job", hidden: torch.Tensor, emit: Emit, rows: int) -> None:
        sess, msg, tokens = job.sess, job.msg, job.tokens
        queue_ms = max(0.0, (self.clock() - job.received_at) * 1000 - (time.perf_counter() - job.t0) * 1000)
        rows_view = _Rows(self.target, hidden, sess, tokens)
        if sess.params.do_sample:
            accepted, next_token = self.sampling_rule(
                rows_view, tokens, topk_ids=msg.topk_ids, topk_probs=msg.topk_probs, topk=msg.topk,
                params=sess.params, generator=sess.generator,
            )
        else:
            accepted, next_token = self.greedy_rule(rows_view, tokens)
        alternative, path = -1, tokens
        if (accepted < len(tokens) and (accepted, next_token) in job.branches
                and next_token not in sess.stop):
            # the target chose an alternative the draft offered: its branch row gives one more token
            branch = len(tokens) + 1 + job.branches.index((accepted, next_token))
            on_path = rows_view.path(accepted, branch, next_token)
            path, hidden = on_path.tokens, on_path.hidden
            accepted, next_token = self.greedy_rule(on_path, path)
            alternative = path[-1]
            self.stats.head_rows += on_path.computed
        self.stats.head_rows += rows_view.computed
        self.target.settle()  # the verdict is known: an emulated device would be done only now
        accepted, next_token, finish = self._finish_rules(sess, path, accepted, next_token)
        if alternative != -1 and accepted < len(path):
            alternative = -1  # cut before the alternative: an ordinary result
        self.stats.branch_hits += alternative != -1
        sess.committed.extend(path[:accepted])
        sess.committed.append(next_token)
        self._spent(sess, job.t0, share=rows)
        self.stats.rounds += 1
        result = VerifyResult(
            session_id=sess.sid,
            round=msg.round,
            position=msg.position,
            accepted=accepted,
            next_token=next_token,
            alternative=alternative,
            finished=finish != FinishReason.NOT_FINISHED,
            finish_reason=int(finish),
            queue_ms=queue_ms,
            verify_ms=(time.perf_counter() - job.t0) * 1000,
            target_forward_passes=sess.forward_passes,
            target_states=encode_states(hidden[:accepted + 1]) if sess.start.return_states else b"",
        )
        sess.blocks[msg.round] = (msg.position, tuple(tokens))
        sess.next_round = msg.round + 1
        room = min(int(sess.start.cloud_finish_tokens), sess.start.max_new_tokens - len(sess.committed))
        if finish == FinishReason.NOT_FINISHED and room > 0:
            # the cloud continues the answer itself: decode steps queued like cloud-only ones (batched
            # with other robots' work), the result held until they end
            sess.decode = TokenLoop(self.target, sess.state, sess.committed, limit=room,
                                    picker=TokenPicker.for_target(sess.params, sess.generator), stop=sess.stop,
                                    grammar=sess.grammar)
            sess.held = (result, job.t0)
            self._queue(sess, "decode")
            return
        self._deliver(sess, result, emit)

    def _deliver(self, sess: _Session, result: VerifyResult, emit: Emit) -> None:
        sess.results[result.round] = result  # duplicates of the block are answered with it from now on
        self._send(sess, emit, result)
        if result.finished:
            self.stats.sessions_completed += 1
            self._close(sess, emit, EndReason.COMPLETED, FinishReason(result.finish_reason).name.lower())

    def _after_continue(self, sess: _Session, continued: List[int]) -> FinishReason:
        if continued and continued[-1] in sess.stop:
            return FinishReason.STOP_TOKEN
        if len(sess.committed) >= sess.start.max_new_tokens:
            return FinishReason.MAX_NEW_TOKENS
        return FinishReason.NOT_FINISHED

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

    # -- early-exit hints -------------------------------------------------------------------
    def _attach_hints(self, jobs: List["_Job"], emit: Emit, t0: float):
        """Hooks that send one hint per exit layer and session from inside the (batched)
        verification pass. Each hint walks its block's rows at that layer until the exit head
        disagrees with a draft token (their exit logits computed in one call)."""
        if not any(job.hints for job in jobs):
            return None
        heads = self.exit_heads
        rows = [(row, job) for row, job in enumerate(jobs) if job.hints]

        def on_exit(layer: int, hidden: torch.Tensor) -> None:
            hints = []
            for row, job in rows:
                n, end = len(job.tokens), hidden.shape[1] if job.feed is None else len(job.feed)
                # an exit that attends reads every row this pass feeds (a prefill's: the whole prompt) after
                # what the target's cache holds, which the pass has not yet extended past this layer
                fed = len(job.feed) if job.feed is not None else len(job.sess.inputs.input_ids) + n
                past = heads.past(job.sess.state.cache, layer) if heads.attends and job.sess.state else None
                # every row in one head call (one pass over the head's weights), read until a disagreement
                exit_logits = heads.exit_logits(layer, hidden[row, end - fed:end], past, n + 1).float()
                accepted = 0
                while True:
                    guess = int(torch.argmax(exit_logits[accepted]))
                    if accepted < n and guess == job.tokens[accepted]:
                        accepted += 1
                        continue
                    break
                # the result cuts at a stop token / max_new_tokens: predict it as the result will say it
                accepted, guess, _ = self._finish_rules(job.sess, job.tokens, accepted, guess)
                # the exit's probability of the whole outcome it names (the edge gates pre-drafting on
                # it): only the rows up to the named token need normalising
                named = torch.tensor(job.tokens[:accepted] + [guess], dtype=torch.long)
                logp = torch.log_softmax(exit_logits[:accepted + 1], -1)[torch.arange(accepted + 1), named]
                confidence = float(logp.sum().exp())
                hints.append((job, EarlyExitHint(
                    session_id=job.sess.sid, round=job.msg.round, position=job.msg.position, exit_layer=layer,
                    predicted_accepted=accepted, predicted_next_token=guess, confidence=confidence)))
            at = self.target.layer_time(layer)  # an emulated device reaches this layer only then
            for job, hint in hints:
                hint.exit_ms = (max(at or 0.0, time.perf_counter()) - t0) * 1000
                self.stats.hints_sent += 1
                self._post_hint(job.sess, emit, hint, at)

        return heads.attach(on_exit, layers=self.hint_layers, hidden=True)
