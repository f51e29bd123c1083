"""When the edge decides, and in which mode (ROS-free; the node feeds it and runs what it says).

Triggers set a decision *pending*: a new instruction, the controller reporting that the last
decision's action ended (``decide_on_completion``), the node's period timer
(``decision_period_s``), or a retry after a failure. A pending decision runs on the newest camera
frame once one is fresh (received no more than ``max_frame_age_s`` ago) and newer than the
instruction, so a decision is about the world as it is now. After a ``done`` action nothing is
pending until a new instruction arrives.

Failures change the link state, and the link state says when the next decision may run:

* ``refused``: the cloud refused the decision (credential, protocol or tokenizer mismatch, bad
  request, overload) or the edge itself failed. Each failure doubles the wait before the next
  try, from ``refusal_backoff_s`` up to ``refusal_backoff_max_s``; a success resets it. Without
  this an invalid decision, which the controller reports finished at once, triggers the next
  refused handshake at once, forever.
* ``lost``: the cloud did not answer (timeout, unreachable). With ``on_cloud_loss: stop`` the
  decisions stay invalid (the robot stops) and one is retried every ``cloud_retry_s``, so the
  first decision after the cloud comes back is at most that late.
* ``degraded`` (``on_cloud_loss: edge_only``): the next decisions use the draft model alone,
  marked degraded (the controller applies reduced limits), and every ``cloud_retry_s`` a probe
  asks the cloud for a one-token answer; the first answer returns to ``ok`` and decides at once
  in the configured mode.

``poll(now)`` is the whole policy, a pure function of what came in and the time, so it is tested
without ROS or threads; ``next_job`` blocks on it for the node's decision thread. Each link
state change is reported once (``take_link_change``) so the node logs a refusal once, not once
per retry.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from enum import Enum
from typing import Any, Callable, Optional

from specdec.models.prompting import turned_after
from specdec.protocol import EndReason
from specdec.transport.base import TransportError

ON_CLOUD_LOSS = ("stop", "edge_only")


class LinkState(str, Enum):
    OK = "ok"
    REFUSED = "refused"
    LOST = "lost"
    DEGRADED = "degraded"


class Outcome(Enum):
    VALID = "valid"          # a valid action (the controller runs it and reports its end)
    DONE = "done"            # a valid ``done``: wait for the next instruction
    INVALID = "invalid"      # decoded, but not an action (the controller stops and reports)
    REFUSED = "refused"      # the cloud refused, or the edge failed: back off
    CLOUD_LOST = "lost"      # no answer from the cloud
    PROBE_OK = "probe_ok"
    PROBE_FAILED = "probe_failed"


# SessionEnd reasons that mean "nobody answered" rather than "the cloud said no"
_LOSS_REASONS = (int(EndReason.TIMEOUT),)


def classify_failure(exc: BaseException) -> Outcome:
    """A decoding exception -> REFUSED or CLOUD_LOST (how the scheduler reacts to it)."""
    reason = getattr(exc, "reason", None)  # specdec.engine.drafter.CloudError
    if reason is not None:
        return Outcome.CLOUD_LOST if int(reason) in _LOSS_REASONS else Outcome.REFUSED
    if isinstance(exc, TransportError):  # CloudTimeout included
        return Outcome.CLOUD_LOST
    return Outcome.REFUSED


@dataclass
class SchedulerConfig:
    decide_on_completion: bool = True
    max_frame_age_s: float = 1.0
    on_cloud_loss: str = "stop"
    cloud_retry_s: float = 0.5
    refusal_backoff_s: float = 1.0
    refusal_backoff_max_s: float = 30.0

    def __post_init__(self):
        if self.on_cloud_loss not in ON_CLOUD_LOSS:
            raise ValueError(f"on_cloud_loss must be one of {ON_CLOUD_LOSS}, got {self.on_cloud_loss!r}")
        for name in ("cloud_retry_s", "refusal_backoff_s", "refusal_backoff_max_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")


@dataclass
class Job:
    """What the decision thread runs next: a decision (``probe`` False) or a cloud probe."""

    decision_id: int = 0
    instruction: str = ""
    frame: Any = None
    degraded: bool = False  # decide with the draft alone
    probe: bool = False
    last_move_blocked: bool = False  # the controller stopped the previous decision's motion as stalled
    turned_deg: float = 0.0  # degrees turned in place since the robot last walked (the prompt's {turned})


class DecisionScheduler:
    def __init__(self, config: SchedulerConfig = None, instruction: str = "",
                 clock: Callable[[], float] = time.monotonic):
        self.config = config or SchedulerConfig()
        self.clock = clock
        self.instruction = instruction.strip()
        self.instruction_time = -float("inf")  # a launch-time instruction accepts any fresh frame
        self.pending = bool(self.instruction)
        self.decision_id = 0
        self.link = LinkState.OK
        self.failures = 0  # consecutive refusals
        self.not_before = -float("inf")  # no decision before this time (backoff, retry)
        self.next_probe = float("inf")
        self.last_failure = ""
        self.last_move_blocked = False  # how the latest decision's motion ended (the prompt's {last_move})
        self.turned_deg = 0.0  # turning in place since the last translation (the prompt's {turned})
        self._counted = 0  # the last decision whose motion is in turned_deg (statuses repeat)
        self._frame = None  # (arrival time, frame)
        self._link_change: Optional[str] = None
        self._running = False
        self._stopped = False
        self._cond = threading.Condition()

    # -- inputs (any thread) --------------------------------------------------------------------
    def set_instruction(self, text: str) -> bool:
        """A new instruction: decide on it as soon as a frame newer than it arrives."""
        text = text.strip()
        if not text:
            return False
        with self._cond:
            self.instruction = text
            self.instruction_time = self.clock()
            self.last_move_blocked = False
            self.turned_deg = 0.0
            self.pending = True
            self._cond.notify_all()
        return True

    def frame(self, frame) -> None:
        with self._cond:
            self._frame = (self.clock(), frame)
            if self.pending:
                self._cond.notify_all()

    def action_ended(self, decision_id: int, estop: bool = False, stalled: bool = False, verb: str = "",
                     value: float = 0.0) -> None:
        """The controller finished (completed, stopped, rejected) the action of ``decision_id``
        (``verb value``, as it ran it); ``stalled``: it stopped the motion as blocked (the next
        prompt says so). The controller repeats its status: a decision's motion is counted once."""
        if decision_id != self.decision_id:
            return
        self.last_move_blocked = stalled
        if decision_id != self._counted:
            self._counted = decision_id
            self.turned_deg = turned_after(self.turned_deg, verb, value)
        if self.config.decide_on_completion and not estop:
            self.request()

    def request(self) -> None:
        """Ask for a decision (the period timer, a retry)."""
        with self._cond:
            self.pending = True
            self._cond.notify_all()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    # -- policy ----------------------------------------------------------------------------------
    @property
    def stopped(self) -> bool:
        return self._stopped

    @property
    def waiting_for_instruction(self) -> bool:
        return not self.instruction

    @property
    def degraded(self) -> bool:
        return self.link == LinkState.DEGRADED

    def fresh_frame(self, now: float):
        """The newest frame if it may be decided on now, else None."""
        if self._frame is None:
            return None
        arrived, frame = self._frame
        if now - arrived > self.config.max_frame_age_s or arrived < self.instruction_time:
            return None
        return frame

    def poll(self, now: float) -> Optional[Job]:
        """The job due at ``now``, or None. A returned decision is no longer pending."""
        if self._stopped or self._running:
            return None
        if self.degraded and now >= self.next_probe:
            self._running = True
            return Job(probe=True)
        if not self.pending or self.waiting_for_instruction or now < self.not_before:
            return None
        frame = self.fresh_frame(now)
        if frame is None:
            return None
        self.pending = False
        self._running = True
        self.decision_id += 1
        return Job(self.decision_id, self.instruction, frame, degraded=self.degraded,
                   last_move_blocked=self.last_move_blocked, turned_deg=self.turned_deg)

    def finished(self, job: Job, outcome: Outcome, detail: str = "") -> None:
        """Report how a job ended; sets the link state and when the next decision may run."""
        with self._cond:
            self._running = False
            now = self.clock()
            cfg = self.config
            if outcome in (Outcome.VALID, Outcome.DONE, Outcome.INVALID):
                self.failures = 0
                self.not_before = -float("inf")
                if not job.degraded:
                    self._set_link(LinkState.OK, "cloud answering again")
                if outcome == Outcome.DONE:
                    self.instruction = ""
                    self.pending = False
            elif outcome == Outcome.REFUSED:
                self.failures += 1
                delay = min(cfg.refusal_backoff_max_s, cfg.refusal_backoff_s * 2 ** (self.failures - 1))
                self.not_before = now + delay
                self.pending = True
                self.last_failure = detail
                if not job.degraded:  # the draft itself failed: stay degraded, just back off
                    self._set_link(LinkState.REFUSED, f"decision refused: {detail}; retrying with backoff "
                                                      f"from {cfg.refusal_backoff_s:g} s up to "
                                                      f"{cfg.refusal_backoff_max_s:g} s")
            elif outcome == Outcome.CLOUD_LOST:
                self.last_failure = detail
                self.pending = True
                if cfg.on_cloud_loss == "edge_only":
                    self.not_before = -float("inf")  # decide again at once, with the draft alone
                    self.next_probe = now + cfg.cloud_retry_s
                    self._set_link(LinkState.DEGRADED, f"cloud lost ({detail}); deciding with the draft "
                                                       f"alone (degraded) and probing every {cfg.cloud_retry_s:g} s")
                else:
                    self.not_before = now + cfg.cloud_retry_s
                    self._set_link(LinkState.LOST, f"cloud lost ({detail}); the robot stops, retrying "
                                                   f"every {cfg.cloud_retry_s:g} s")
            elif outcome == Outcome.PROBE_OK:
                self.next_probe = float("inf")
                self.pending = True  # a full-quality decision at once
                self._set_link(LinkState.OK, "cloud answering again; back to speculative decoding")
            elif outcome == Outcome.PROBE_FAILED:
                self.next_probe = now + cfg.cloud_retry_s
            self._cond.notify_all()

    def _set_link(self, state: LinkState, message: str) -> None:
        if state != self.link:
            self.link = state
            self._link_change = message

    def take_link_change(self) -> Optional[str]:
        """A message once after each link state change, else None."""
        with self._cond:
            message, self._link_change = self._link_change, None
            return message

    # -- decision thread -------------------------------------------------------------------------
    def next_job(self, timeout: float) -> Optional[Job]:
        """Block until a job is due (or ``timeout`` seconds pass, or stop())."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._stopped:
                job = self.poll(self.clock())
                if job is not None:
                    return job
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                # frame ageing and backoff ends are not signalled: re-check at least every 50 ms
                self._cond.wait(min(left, 0.05))
        return None
