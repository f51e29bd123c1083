"""Motion execution (ROS-free): a parsed action -> a time-stepped, limited velocity profile.

:class:`ActionExecutor` runs one action at a time at a fixed control rate. Each ``step`` returns
the body-frame velocity to command for the next period. The profile on the action's axis is a
discrete trapezoid: it accelerates by at most ``max_a * dt`` per step, cruises at ``max_v`` and
slows so that it can always come to rest (again by at most ``max_a * dt`` per step) on the
target. The other two axes ramp down to zero within the same acceleration limits (that matters
when a new action preempts a running one). Progress is measured from odometry poses when they
are given to ``step`` (extrapolated over the pose's age and the robot's response lag,
``lag_compensation``) and from the integral of the commanded velocity otherwise (over the real
elapsed time when the caller's timer slips). The action completes when the remaining distance
is below what one more slowest step would cover and the last command can drop to zero within
the acceleration limit; a stall guard ends it (``timed_out``) when it takes far longer than
planned (blocked by a wall, say).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import List, Optional, Tuple

from .action_language import ParsedAction

# Real Unitree Go2 sport-mode limits (the controller's defaults stay well below them).
GO2_MAX_VX_FWD = 3.8
GO2_MAX_VX_BWD = 2.5
GO2_MAX_VY = 1.0
GO2_MAX_WZ = 4.0


def wrap_angle(a: float) -> float:
    """Wrap an angle to (-pi, pi]."""
    a = math.fmod(a + math.pi, 2.0 * math.pi)
    if a <= 0.0:
        a += 2.0 * math.pi
    return a - math.pi


@dataclass(frozen=True)
class Pose2D:
    x: float = 0.0
    y: float = 0.0
    yaw: float = 0.0


@dataclass(frozen=True)
class Velocity:
    """Body-frame velocity: vx forward m/s, vy left m/s, wz counter-clockwise rad/s."""

    vx: float = 0.0
    vy: float = 0.0
    wz: float = 0.0

    def as_tuple(self) -> Tuple[float, float, float]:
        return (self.vx, self.vy, self.wz)

    def is_zero(self) -> bool:
        return self.vx == 0.0 and self.vy == 0.0 and self.wz == 0.0


@dataclass(frozen=True)
class MotionLimits:
    """Velocity/acceleration limits and control rate (defaults well below the Go2's)."""

    max_vx: float = 0.6       # m/s forward and backward
    max_vy: float = 0.4       # m/s sideways
    max_wz: float = 1.0       # rad/s
    max_ax: float = 0.8       # m/s^2
    max_ay: float = 0.6       # m/s^2
    max_aw: float = 1.5       # rad/s^2
    rate_hz: float = 20.0
    dist_tol: float = 0.02    # m
    yaw_tol: float = math.radians(1.5)
    timeout_factor: float = 2.0   # stall guard: give up after factor * planned + margin
    timeout_margin: float = 2.0   # s
    lag_compensation: float = 0.1  # s; with odometry, aim at measured + speed * this (the
                                   # robot keeps moving that much after the command drops)

    def __post_init__(self):
        for name in ("max_vx", "max_vy", "max_wz", "max_ax", "max_ay", "max_aw", "rate_hz",
                     "dist_tol", "yaw_tol"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0.0):
                raise ValueError(f"MotionLimits.{name} must be finite and > 0, got {v!r}")
        if self.max_vx > GO2_MAX_VX_BWD or self.max_vy > GO2_MAX_VY or self.max_wz > GO2_MAX_WZ:
            raise ValueError("MotionLimits exceed the Go2's own limits")

    @property
    def dt(self) -> float:
        return 1.0 / self.rate_hz

    def with_speed_scale(self, scale: float) -> "MotionLimits":
        """The same limits with every maximum speed times ``scale`` (0 < scale <= 1), e.g. for
        degraded decisions; accelerations stay, so stopping distances only shrink."""
        if not (math.isfinite(scale) and 0.0 < scale <= 1.0):
            raise ValueError(f"speed scale must be in (0, 1], got {scale!r}")
        return replace(self, max_vx=self.max_vx * scale, max_vy=self.max_vy * scale,
                       max_wz=self.max_wz * scale)

    @property
    def vmax(self) -> Tuple[float, float, float]:
        return (self.max_vx, self.max_vy, self.max_wz)

    @property
    def amax(self) -> Tuple[float, float, float]:
        return (self.max_ax, self.max_ay, self.max_aw)


def clamp_velocity(v: Velocity, limits: MotionLimits) -> Velocity:
    """Last line of defence: NaN/inf -> 0, each axis clamped to the configured maximum."""
    out = []
    for value, vmax in zip(v.as_tuple(), limits.vmax):
        value = float(value)
        if not math.isfinite(value):
            value = 0.0
        out.append(max(-vmax, min(vmax, value)))
    return Velocity(*out)


def _axis_index(action: ParsedAction) -> int:
    ax, ay, _ = action.axis
    if action.kind == "rotate":
        return 2
    return 0 if ax != 0.0 else 1


def _stop_speed(remaining: float, a: float, dt: float) -> float:
    """Largest speed from which decelerating by a*dt per step stops within ``remaining``."""
    if remaining <= 0.0:
        return 0.0
    # distance of v, v-a dt, v-2a dt, ... over steps of dt ~= v^2/(2a) + v dt/2
    return a * (-dt / 2.0 + math.sqrt(dt * dt / 4.0 + 2.0 * remaining / a))


def planned_duration(action: ParsedAction, limits: MotionLimits) -> float:
    """Nominal duration (s) of the trapezoid for ``action`` starting and ending at rest."""
    if not action.is_motion:
        return 0.0
    i = _axis_index(action)
    dist = abs(action.target[i])
    v, a = limits.vmax[i], limits.amax[i]
    if dist <= v * v / a:  # triangle
        return 2.0 * math.sqrt(dist / a)
    return dist / v + v / a


@dataclass
class StepResult:
    velocity: Velocity
    done: bool
    progress: float        # 0..1 along the action
    remaining: float       # metres or radians left (can be < 0 on overshoot)


class ActionExecutor:
    """Runs one :class:`ParsedAction` at a time; call :meth:`step` once per control period."""

    IDLE, EXECUTING, COMPLETED = "idle", "executing", "completed"

    def __init__(self, limits: Optional[MotionLimits] = None):
        self.base_limits = limits or MotionLimits()
        self.limits = self.base_limits  # of the current action (start's ``limits``)
        self.state = self.IDLE
        self.action: Optional[ParsedAction] = None
        self.timed_out = False
        self.source = "command"  # "odom" once a pose drove progress
        self._v = [0.0, 0.0, 0.0]
        self._reset_tracking()

    # -- public API -------------------------------------------------------------------------
    @property
    def velocity(self) -> Velocity:
        """The last commanded velocity."""
        return Velocity(*self._v)

    def start(self, action: ParsedAction, pose: Optional[Pose2D] = None,
              velocity: Optional[Velocity] = None,
              limits: Optional[MotionLimits] = None) -> None:
        """Begin ``action`` from the current commanded velocity (or ``velocity``), under
        ``limits`` (reduced ones for a degraded decision, say; default: the executor's own)."""
        self.limits = limits or self.base_limits
        if velocity is not None:
            self._v = list(clamp_velocity(velocity, self.limits).as_tuple())
        self.action = action
        self.timed_out = False
        self.source = "command"
        self._reset_tracking()
        self._start_pose = pose
        if not action.is_motion:
            self._v = [0.0, 0.0, 0.0]
            self.state = self.COMPLETED
            return
        self._axis = _axis_index(action)
        self._goal = abs(action.target[self._axis])
        self._sign = 1.0 if action.target[self._axis] > 0 else -1.0
        self._deadline = (self.limits.timeout_factor * planned_duration(action, self.limits)
                          + self.limits.timeout_margin)
        self.state = self.EXECUTING

    def halt(self) -> None:
        """Immediate stop (safety stop; no ramp) and forget the action."""
        self._v = [0.0, 0.0, 0.0]
        self.state = self.IDLE
        self.action = None
        self._reset_tracking()

    def step(self, pose: Optional[Pose2D] = None, dt: Optional[float] = None,
             elapsed: Optional[float] = None, pose_age: float = 0.0) -> StepResult:
        """Advance one period and return the command for the next one.

        ``pose``: odometry (drives progress when the action began with one). ``dt``: the control
        period the acceleration limits apply to (default 1/rate). ``elapsed``: the real time
        since the previous step when the caller's timer slipped (default ``dt``). ``pose_age``:
        how old ``pose`` is; progress is extrapolated over it."""
        dt = self.limits.dt if dt is None else float(dt)
        elapsed = dt if elapsed is None else max(0.0, float(elapsed))
        if self.state != self.EXECUTING:
            # ramp anything left (idle after preemption) down within the accel limits
            self._v = [self._toward(i, 0.0, dt) for i in range(3)]
            return StepResult(self.velocity, self.state == self.COMPLETED, self._progress(), 0.0)
        self._elapsed += elapsed
        # the previous command ran for `elapsed`, not the `dt` booked for it
        self._commanded += self._v[self._axis] * self._sign * (elapsed - dt)
        done_dist = self._measure(pose, elapsed)
        if self.source == "odom" and self.limits.lag_compensation > 0.0:
            if self._prev_measured is not None and elapsed > 0.0:
                speed = (done_dist - self._prev_measured) / elapsed
                self._speed_est += 0.5 * (speed - self._speed_est)
            self._prev_measured = done_dist
            done_dist += max(0.0, self._speed_est) * (self.limits.lag_compensation
                                                     + max(0.0, pose_age))
        remaining = self._goal - done_dist
        tol = self.limits.yaw_tol if self._axis == 2 else self.limits.dist_tol
        i = self._axis
        a = self.limits.amax[i]
        cur = self._v[i] * self._sign  # speed along the action direction
        settled = abs(cur) <= a * dt + 1e-12
        close = a * dt * dt  # what one more step at the slowest speed would cover
        if self._finishing or (remaining <= close and settled) or self._elapsed > self._deadline:
            if not self._finishing:
                self._finishing = True
                self.timed_out = remaining > tol
            self._v = [self._toward(k, 0.0, dt) for k in range(3)]
            if all(v == 0.0 for v in self._v):
                self.state = self.COMPLETED
            # else: a preempted motion on another axis is still ramping down
            return StepResult(self.velocity, self.state == self.COMPLETED, self._progress(),
                              remaining)
        desired = min(self.limits.vmax[i], _stop_speed(remaining, a, dt))
        if remaining > close:
            desired = max(desired, min(a * dt, self.limits.vmax[i]))  # no endless creep
        new = [self._toward(k, 0.0, dt) for k in range(3)]
        new[i] = self._toward(i, self._sign * desired, dt)
        self._v = new
        self._commanded += self._v[i] * self._sign * dt
        return StepResult(self.velocity, False, self._progress(), remaining)

    @property
    def progress(self) -> float:
        return self._progress()

    # -- internals --------------------------------------------------------------------------
    def _reset_tracking(self):
        self._elapsed = 0.0
        self._commanded = 0.0
        self._measured = 0.0
        self._prev_measured = None
        self._speed_est = 0.0
        self._goal = 0.0
        self._axis = 0
        self._sign = 1.0
        self._deadline = math.inf
        self._finishing = False
        self._start_pose: Optional[Pose2D] = None
        self._last_yaw: Optional[float] = None
        self._yaw_accum = 0.0

    def _toward(self, i: int, target: float, dt: float) -> float:
        step = self.limits.amax[i] * dt
        v = self._v[i]
        if target > v:
            v = min(target, v + step)
        else:
            v = max(target, v - step)
        vmax = self.limits.vmax[i]
        return max(-vmax, min(vmax, v))

    def _measure(self, pose: Optional[Pose2D], dt: float) -> float:
        """Distance (m or rad) done along the action direction."""
        if pose is None or self._start_pose is None:
            if self.source != "odom":
                return self._commanded
            # odom dropped out mid-action: dead-reckon on the last command
            self._measured += self._v[self._axis] * self._sign * dt
            return self._measured
        self.source = "odom"
        p0 = self._start_pose
        if self._axis == 2:
            if self._last_yaw is None:
                self._last_yaw = p0.yaw
            self._yaw_accum += wrap_angle(pose.yaw - self._last_yaw)
            self._last_yaw = pose.yaw
            self._measured = self._yaw_accum * self._sign
        else:
            ax, ay, _ = self.action.axis
            c, s = math.cos(p0.yaw), math.sin(p0.yaw)
            dir_x, dir_y = c * ax - s * ay, s * ax + c * ay  # world direction of motion
            self._measured = (pose.x - p0.x) * dir_x + (pose.y - p0.y) * dir_y
        return self._measured

    def _progress(self) -> float:
        if self.action is None:
            return 0.0
        if not self.action.is_motion or self.state == self.COMPLETED and not self.timed_out:
            return 1.0
        if self._goal <= 0.0:
            return 1.0
        done = self._measured if self.source == "odom" else self._commanded
        return max(0.0, min(1.0, done / self._goal))


def plan_profile(action: ParsedAction, limits: Optional[MotionLimits] = None,
                 max_steps: int = 10000) -> List[Velocity]:
    """Open-loop profile (commanded integration) for ``action``, one entry per control period,
    ending with the zero command."""
    ex = ActionExecutor(limits)
    ex.start(action)
    out: List[Velocity] = []
    for _ in range(max_steps):
        r = ex.step()
        out.append(r.velocity)
        if r.done:
            break
    return out
