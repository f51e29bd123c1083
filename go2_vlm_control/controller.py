"""The controller's state machine (ROS-free): decisions in, limited velocity and stops out.

:class:`ControllerCore` is driven by its node (or a test) with a monotonic clock ``now``:

* :meth:`on_decision` - a decoded VLM decision. Its header stamp is checked first against the
  wall clock (``wall_now``): older than ``max_action_age`` or more than ``max_clock_skew`` ahead
  is refused and stops the robot, and such a decision never enters the ordering (a stamp from
  the future would otherwise block every later decision). Then only a *newer*, *valid* one that
  also re-parses under this controller's own limits moves the robot; a newer invalid one stops
  it; an older or duplicate one is ignored. A ``degraded`` decision (decided without the cloud)
  runs under the speed limits times ``degraded_speed_scale``.
* :meth:`on_estop` - engage (stop at once, hold) / release (back to idle).
* :meth:`on_odom` - a pose; progress is measured from it while it is fresh.
* :meth:`tick` - once per control period: the velocity to command, after the deadman check.
* :meth:`shutdown` - the node is going away: a last stop.

After each call the owner collects :meth:`take_stop` (send an explicit stop command now) and
:meth:`take_status_changed` (publish the status now). States: ``idle`` (nothing to do),
``executing``, ``completed`` (last action finished, or ``done``), ``stopped`` (stopped early),
``estop`` (held until released); every stop records its cause (``CAUSE_*``). The names are
those of edge_cloud_vlm_msgs/ActionStatus (a test keeps them in step).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from .action_language import (ActionLimits, ActionRejected, ParsedAction, parse_action,
                              validate_fields)
from .motion import ActionExecutor, MotionLimits, Pose2D, Velocity, clamp_velocity

IDLE, EXECUTING, COMPLETED, STOPPED, ESTOP = "idle", "executing", "completed", "stopped", "estop"
STATES = (IDLE, EXECUTING, COMPLETED, STOPPED, ESTOP)
# The last decision is over in these states (and e-stop is off): time for the next one.
FINISHED_STATES = (IDLE, COMPLETED, STOPPED)

# Why a stop was sent.
CAUSE_COMPLETED = "completed"      # the motion reached its goal
CAUSE_DONE = "done"                # the VLM said done
CAUSE_STOP_ACTION = "stop_action"  # the VLM said stop
CAUSE_INVALID = "invalid"          # the edge or this controller refused the decision
CAUSE_BAD_STAMP = "bad_stamp"      # stamped too old, or too far in the future
CAUSE_DEADMAN = "deadman"          # no fresh valid decision while moving
CAUSE_STALL = "stall"              # the motion took far longer than planned
CAUSE_ESTOP = "estop"
CAUSE_SHUTDOWN = "shutdown"
STOP_CAUSES = (CAUSE_COMPLETED, CAUSE_DONE, CAUSE_STOP_ACTION, CAUSE_INVALID, CAUSE_BAD_STAMP,
               CAUSE_DEADMAN, CAUSE_STALL, CAUSE_ESTOP, CAUSE_SHUTDOWN)
# Causes that are faults (diagnostics WARN until the next valid decision runs).
FAULT_CAUSES = (CAUSE_INVALID, CAUSE_BAD_STAMP, CAUSE_DEADMAN, CAUSE_STALL)

ACCEPTED, REJECTED, IGNORED = "accepted", "rejected", "ignored"


@dataclass
class Decision:
    """One decision from the edge (mirrors edge_cloud_vlm_msgs/DecodedAction)."""

    text: str = ""
    valid: bool = False
    reject_reason: str = ""
    decision_id: int = 0
    stamp: float = 0.0        # header stamp in seconds since the epoch; 0 = not stamped
    session_id: str = ""
    action: str = ""          # parsed verb from the edge (checked against the text)
    value: float = 0.0
    instruction: str = ""
    degraded: bool = False    # decided by the draft alone (cloud lost): reduced speed limits


@dataclass
class ControllerConfig:
    action_limits: ActionLimits = ActionLimits()
    motion_limits: MotionLimits = MotionLimits()
    deadman_timeout: float = 3.5   # s without a fresh valid decision while moving -> stop
    max_action_age: float = 30.0   # s; an older stamped decision stops the robot (0 disables)
    max_clock_skew: float = 1.0    # s; a decision stamped further in the future stops the robot
    degraded_speed_scale: float = 0.5  # speed limits x this for degraded decisions
    odom_timeout: float = 0.5      # s; older odometry is not used for progress
    use_odom: bool = True

    def __post_init__(self):
        for name in ("deadman_timeout", "max_action_age", "max_clock_skew", "odom_timeout"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0.0):
                raise ValueError(f"{name} must be a finite value >= 0, got {v!r}")
        self.degraded_motion_limits = self.motion_limits.with_speed_scale(
            self.degraded_speed_scale)


class ControllerCore:
    def __init__(self, config: Optional[ControllerConfig] = None):
        self.cfg = config or ControllerConfig()
        self.executor = ActionExecutor(self.cfg.motion_limits)
        self.state = IDLE
        self.reason = ""
        self.stop_cause = ""
        self.degraded = False   # the last valid decision was degraded
        self.action: Optional[ParsedAction] = None
        self.decision: Optional[Decision] = None
        self.estop = False
        self.last_id: Optional[int] = None
        self.last_stamp = 0.0
        self.last_valid_rx: Optional[float] = None
        self.seq = 0            # bumps on every status change
        self.stops_sent = 0
        self.accepted = 0
        self.rejected = 0
        self.ignored = 0
        self._pose: Optional[Pose2D] = None
        self._pose_t = -math.inf
        self._stop_pending = False
        self._status_changed = True
        self._final_progress = 0.0
        self._last_tick: Optional[float] = None

    # -- inputs -----------------------------------------------------------------------------
    def is_newer(self, d: Decision) -> bool:
        """Ordering by decision_id (increasing per edge node): a repeated id is a duplicate. A
        smaller id is accepted only with a newer header stamp (the edge restarted), and a
        larger id is refused with an older stamp (a late message from before a restart)."""
        if self.last_id is None:
            return True
        stamped = d.stamp > 0.0 and self.last_stamp > 0.0
        if d.decision_id > self.last_id:
            return not (stamped and d.stamp < self.last_stamp)
        if d.decision_id < self.last_id:
            return stamped and d.stamp > self.last_stamp
        return False

    def stamp_problem(self, d: Decision, wall_now: Optional[float]) -> Optional[str]:
        """Why the decision's stamp is out of tolerance, or None (also for unstamped ones)."""
        if d.stamp <= 0.0 or wall_now is None:
            return None
        age = wall_now - d.stamp
        if -age > self.cfg.max_clock_skew:
            return (f"stamp {-age:.1f} s in the future (clock skew tolerance "
                    f"{self.cfg.max_clock_skew:g} s)")
        if self.cfg.max_action_age > 0.0 and age > self.cfg.max_action_age:
            return f"stale action: {age:.1f} s old (max_action_age {self.cfg.max_action_age:g} s)"
        return None

    def on_decision(self, d: Decision, now: float, wall_now: Optional[float] = None) -> str:
        """Handle one decision; returns 'accepted', 'rejected' (robot stopped) or 'ignored'."""
        problem = self.stamp_problem(d, wall_now)
        if problem is None:
            if not self.is_newer(d):
                self.ignored += 1
                return IGNORED
            self.last_id, self.last_stamp = d.decision_id, d.stamp
        self.decision = d  # the status names the latest decision, even one not executed
        if self.estop:
            self.ignored += 1
            self._status_changed = True
            return IGNORED
        if problem is not None:
            return self._reject(CAUSE_BAD_STAMP, problem)
        if not d.valid:
            return self._reject(CAUSE_INVALID, f"invalid action: {d.reject_reason or 'not valid'}")
        try:
            action = self._check(d)
        except ActionRejected as exc:
            return self._reject(CAUSE_INVALID, f"invalid action: {exc.reason}")
        self.accepted += 1
        self.last_valid_rx = now
        self.degraded = d.degraded
        if action.verb == "stop":
            self._stop(STOPPED, CAUSE_STOP_ACTION, "stop action", action)
        elif action.verb == "done":
            self._stop(COMPLETED, CAUSE_DONE, "done", action)
        else:
            self.action = action
            self._final_progress = 0.0
            if self.state != EXECUTING:
                self._last_tick = None
            self.executor.start(action, self._fresh_pose(now), limits=self.motion_limits)
            self._set(EXECUTING, "clamped to limits" if action.clamped else "")
        return ACCEPTED

    def on_estop(self, engaged: bool, now: float) -> None:
        if engaged:
            if not self.estop:
                self.estop = True
                self._stop(ESTOP, CAUSE_ESTOP, "e_stop engaged", self.action)
            else:
                self.repeat_stop()  # repeated e_stop true: stop again
        elif self.estop:
            self.estop = False
            self.executor.halt()
            self.action = None
            self._set(IDLE, "e_stop released")

    def on_odom(self, pose: Pose2D, now: float) -> None:
        self._pose, self._pose_t = pose, now

    def shutdown(self) -> None:
        """The owner is going away: stop (the owner sends it, whatever the state)."""
        self._stop(STOPPED, CAUSE_SHUTDOWN, "shutdown", None)

    @property
    def motion_limits(self) -> MotionLimits:
        """The limits in effect: reduced while the last valid decision was degraded."""
        return self.cfg.degraded_motion_limits if self.degraded else self.cfg.motion_limits

    # -- control period ---------------------------------------------------------------------
    def tick(self, now: float) -> Velocity:
        """Velocity to command for the next period (zero unless executing)."""
        if self.state != EXECUTING:
            self._last_tick = None
            return Velocity()
        if self.last_valid_rx is not None and now - self.last_valid_rx > self.cfg.deadman_timeout:
            self._stop(STOPPED, CAUSE_DEADMAN, "deadman: no fresh valid action", self.action)
            return Velocity()
        dt = self.cfg.motion_limits.dt
        elapsed = dt if self._last_tick is None else min(3.0 * dt, max(0.0, now - self._last_tick))
        self._last_tick = now
        pose = self._fresh_pose(now)
        r = self.executor.step(pose, dt=dt, elapsed=elapsed,
                               pose_age=(now - self._pose_t) if pose is not None else 0.0)
        if r.done:
            if self.executor.timed_out:
                self._stop(STOPPED, CAUSE_STALL, "stalled: action timed out", self.action)
            else:
                self._stop(COMPLETED, CAUSE_COMPLETED, "", self.action)
            return Velocity()
        return clamp_velocity(r.velocity, self.motion_limits)

    def repeat_stop(self) -> None:
        """Ask for the stop command again (the node repeats it while e-stopped)."""
        self._stop_pending = True

    def take_stop(self) -> bool:
        """True once after each stop event: the owner sends the explicit stop command."""
        s, self._stop_pending = self._stop_pending, False
        return s

    def take_status_changed(self) -> bool:
        s, self._status_changed = self._status_changed, False
        return s

    def status(self) -> dict:
        """The fields of edge_cloud_vlm_msgs/ActionStatus this core knows (all but header and
        driver)."""
        a = self.action
        d = self.decision
        return {
            "state": self.state,
            "action": a.canonical() if a is not None else "",
            "verb": a.verb if a is not None else "",
            "value": a.value if a is not None else 0.0,
            "progress": round(self.executor.progress if self.state == EXECUTING
                              else self._final_progress, 3),
            "reason": self.reason,
            "stop_cause": self.stop_cause,
            "decision_id": d.decision_id if d is not None else -1,
            "session_id": d.session_id if d is not None else "",
            "estop": self.estop,
            "degraded": self.degraded,
            "seq": self.seq,
        }

    @property
    def fault(self) -> bool:
        """Stopped by a fault (deadman, invalid or badly stamped decision, stall) and no valid
        decision has run since."""
        return self.state == STOPPED and self.stop_cause in FAULT_CAUSES

    # -- internals --------------------------------------------------------------------------
    def _check(self, d: Decision) -> ParsedAction:
        lim = self.cfg.action_limits
        if d.text.strip():
            action = parse_action(d.text, lim)
            if d.action and d.action != action.verb:
                raise ActionRejected(f"action field '{d.action}' disagrees with text")
            return action
        return validate_fields(d.action, d.value, lim)

    def _fresh_pose(self, now: float) -> Optional[Pose2D]:
        if not self.cfg.use_odom or self._pose is None:
            return None
        return self._pose if now - self._pose_t <= self.cfg.odom_timeout else None

    def _reject(self, cause: str, reason: str) -> str:
        self.rejected += 1
        self._stop(STOPPED, cause, reason, None)
        return REJECTED

    def _stop(self, state: str, cause: str, reason: str, action: Optional[ParsedAction]) -> None:
        if action is not None and not action.is_motion:
            self._final_progress = 1.0
        elif self.state == EXECUTING:
            self._final_progress = self.executor.progress
        self.executor.halt()
        self.action = action
        self._stop_pending = True
        self.stops_sent += 1
        self.stop_cause = cause
        self._set(state, reason)

    def _set(self, state: str, reason: str) -> None:
        self.state, self.reason = state, reason
        self.seq += 1
        self._status_changed = True
