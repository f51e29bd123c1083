"""Motion profiles (ROS-free): limits, acceleration limits, completion, odometry tracking."""

import math

import numpy as np
import pytest

from go2_sim.world import World, WorldConfig
from go2_vlm_control.action_language import parse_action
from go2_vlm_control.motion import (ActionExecutor, MotionLimits, Pose2D, Velocity,
                                    clamp_velocity, plan_profile, planned_duration)

ACTIONS = ["forward 1", "forward 0.3", "forward 0.02", "backward 0.5", "left 90", "right 45",
           "left 3", "strafe_left 0.5", "strafe_right 0.12"]


def _check_profile(text, lim):
    a = parse_action(text)
    prof = plan_profile(a, lim)
    arr = np.array([v.as_tuple() for v in prof])
    assert np.all(arr[-1] == 0.0), "ends at rest"
    vmax = np.array(lim.vmax)
    assert np.all(np.abs(arr) <= vmax + 1e-12)
    dv = np.diff(np.vstack([np.zeros(3), arr]), axis=0)
    assert np.all(np.abs(dv) <= np.array(lim.amax) * lim.dt + 1e-9), "acceleration limit"
    moved = arr.sum(axis=0) * lim.dt
    target = np.array(a.target)
    tol = np.array([0.01, 0.01, math.radians(1.0)])
    assert np.all(np.abs(moved - target) <= tol), (moved, target)
    # the duration is close to the ideal trapezoid's
    assert len(prof) * lim.dt <= planned_duration(a, lim) + 4 * lim.dt + 0.05
    return prof


@pytest.mark.parametrize("text", ACTIONS)
def test_profile_default_limits(text):
    _check_profile(text, MotionLimits())


@pytest.mark.parametrize("text", ["forward 1", "left 90", "strafe_right 0.3"])
def test_profile_other_rates_and_limits(text):
    _check_profile(text, MotionLimits(rate_hz=50.0))
    _check_profile(text, MotionLimits(max_vx=0.3, max_vy=0.2, max_wz=0.5, max_ax=0.4,
                                      max_ay=0.3, max_aw=0.6, rate_hz=10.0))


def test_cruise_speed_reached_on_long_moves():
    lim = MotionLimits()
    prof = plan_profile(parse_action("forward 1"), lim)
    assert max(v.vx for v in prof) == pytest.approx(lim.max_vx)
    prof = plan_profile(parse_action("right 90"), lim)
    assert min(v.wz for v in prof) == pytest.approx(-lim.max_wz)


def test_limits_validation_and_clamp():
    with pytest.raises(ValueError):
        MotionLimits(max_vx=3.0)  # beyond the Go2
    with pytest.raises(ValueError):
        MotionLimits(max_ax=0.0)
    lim = MotionLimits()
    v = clamp_velocity(Velocity(5.0, -5.0, math.nan), lim)
    assert v == Velocity(lim.max_vx, -lim.max_vy, 0.0)
    assert clamp_velocity(Velocity(math.inf, 0.1, -math.inf), lim) == Velocity(0.0, 0.1, 0.0)


def test_stop_and_done_complete_immediately():
    ex = ActionExecutor()
    for text in ("stop", "done"):
        ex.start(parse_action(text))
        r = ex.step()
        assert r.done and r.velocity.is_zero()


def _run_on_world(ex, world, text, max_steps=2000):
    lim = ex.limits
    ex.start(parse_action(text), Pose2D(*world.pose))
    cmds = []
    for _ in range(max_steps):
        r = ex.step(Pose2D(*world.pose))
        cmds.append(r.velocity)
        if r.done:
            break
        world.set_cmd(*r.velocity.as_tuple())
        world.step(lim.dt)
    world.stop()
    for _ in range(20):
        world.step(lim.dt)
    return cmds


@pytest.mark.parametrize("text,axis,target", [
    ("forward 0.8", 0, 0.8), ("strafe_left 0.4", 1, 0.4), ("right 60", 2, -math.radians(60))])
def test_odometry_tracking_with_lagging_robot(text, axis, target):
    world = World(WorldConfig(min_objects=0, max_objects=0, response_tau=0.1), seed=None)
    world.reset(0, objects=[], pose=(0.0, 0.0, 0.3))
    ex = ActionExecutor()
    cmds = _run_on_world(ex, world, text)
    assert ex.state == ex.COMPLETED and not ex.timed_out and ex.source == "odom"
    c, s = math.cos(0.3), math.sin(0.3)
    body = (c * world.x + s * world.y, -s * world.x + c * world.y, world.yaw - 0.3)
    tol = math.radians(4) if axis == 2 else 0.06
    assert body[axis] == pytest.approx(target, abs=tol)
    arr = np.array([v.as_tuple() for v in cmds])
    dv = np.diff(np.vstack([np.zeros(3), arr]), axis=0)
    assert np.all(np.abs(dv) <= np.array(ex.limits.amax) * ex.limits.dt + 1e-9)


def test_stall_guard_times_out():
    ex = ActionExecutor()
    ex.start(parse_action("forward 0.5"), Pose2D())
    for _ in range(2000):
        r = ex.step(Pose2D())  # odometry says the robot never moves (blocked)
        if r.done:
            break
    assert r.done and ex.timed_out
    assert ex.progress < 0.01


def test_preemption_respects_acceleration():
    lim = MotionLimits()
    ex = ActionExecutor(lim)
    ex.start(parse_action("forward 1"))
    for _ in range(15):
        ex.step()
    assert ex.velocity.vx > 0.3
    ex.start(parse_action("left 30"))
    prev = ex.velocity
    for _ in range(200):
        r = ex.step()
        assert abs(r.velocity.vx - prev.vx) <= lim.max_ax * lim.dt + 1e-9
        assert abs(r.velocity.wz - prev.wz) <= lim.max_aw * lim.dt + 1e-9
        prev = r.velocity
        if r.done:
            break
    assert r.done and r.velocity.is_zero()
