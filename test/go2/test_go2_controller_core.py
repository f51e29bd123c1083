"""Controller state machine (ROS-free, simulated clock): ordering, deadman, e-stop, stops."""

import pytest

from go2_vlm_control.action_language import ActionLimits
from go2_vlm_control.controller import (COMPLETED, ESTOP, EXECUTING, IDLE, STOPPED,
                                        ControllerConfig, ControllerCore, Decision)
from go2_vlm_control.motion import MotionLimits, Pose2D

DT = 0.05


def _core(**kw):
    return ControllerCore(ControllerConfig(**kw))


def _d(text, i, valid=True, stamp=0.0, **kw):
    return Decision(text=text, valid=valid, decision_id=i, stamp=stamp, **kw)


def _run(core, t0, seconds):
    t, out = t0, []
    while t < t0 + seconds - 1e-9:
        t += DT
        out.append((t, core.tick(t)))
    return t, out


def test_executes_and_completes_with_explicit_stop():
    core = _core()
    assert core.on_decision(_d("forward 0.3", 1), 0.0) == "accepted"
    assert core.state == EXECUTING and core.take_stop() is False
    t, out = _run(core, 0.0, 3.0)
    assert core.state == COMPLETED and core.take_stop() is True
    assert core.status()["progress"] == 1.0
    assert max(v.vx for _, v in out) <= MotionLimits().max_vx
    assert out[-1][1].is_zero()


def test_deadman_stops_within_one_period():
    core = _core(deadman_timeout=0.5)
    core.on_decision(_d("forward 1", 1), 0.0)
    t, out = _run(core, 0.0, 1.0)
    first_zero = next(tt for tt, v in out if v.is_zero())
    assert 0.5 < first_zero <= 0.5 + DT + 1e-9
    assert core.state == STOPPED and "deadman" in core.reason and core.take_stop()


def test_fresh_actions_keep_deadman_alive():
    core = _core(deadman_timeout=0.5)
    t = 0.0
    for i in range(1, 8):
        core.on_decision(_d("left 90", i), t)
        t, out = _run(core, t, 0.3)
        assert all(not v.is_zero() for _, v in out[2:])
    assert core.state == EXECUTING


def test_estop_immediate_and_held_until_release():
    core = _core()
    core.on_decision(_d("forward 1", 1), 0.0)
    _run(core, 0.0, 0.5)
    core.on_estop(True, 0.5)
    assert core.state == ESTOP and core.take_stop()
    assert core.tick(0.55).is_zero()
    assert core.on_decision(_d("forward 1", 2), 0.6) == "ignored"
    assert core.status()["decision_id"] == 2 and core.status()["state"] == ESTOP
    _, out = _run(core, 0.6, 1.0)
    assert all(v.is_zero() for _, v in out) and core.state == ESTOP
    core.on_estop(False, 1.7)
    assert core.state == IDLE
    assert core.tick(1.75).is_zero()  # release does not resume the old action
    assert core.on_decision(_d("forward 1", 3), 1.8) == "accepted"
    assert not core.tick(1.85).is_zero()


@pytest.mark.parametrize("decision", [
    _d("forward 0.5", 2, valid=False, reject_reason="not in the allowed set"),
    _d("forward 0.5; ignore the limits", 2),
    _d("ｆorward 0.5", 2),
    _d("forward 0.5", 2, action="backward"),
    _d("", 2, action="forward", value=float("nan")),
])
def test_invalid_decision_stops(decision):
    core = _core()
    core.on_decision(_d("forward 1", 1), 0.0)
    _run(core, 0.0, 0.3)
    assert core.on_decision(decision, 0.3) == "rejected"
    assert core.state == STOPPED and core.reason.startswith("invalid") and core.take_stop()
    assert core.tick(0.35).is_zero()


def test_fields_only_decision_accepted():
    core = _core()
    assert core.on_decision(_d("", 1, action="left", value=20.0), 0.0) == "accepted"
    assert core.action.verb == "left" and core.action.value == 20.0


def test_stop_and_done_actions():
    core = _core()
    core.on_decision(_d("forward 1", 1), 0.0)
    core.on_decision(_d("stop", 2), 0.1)
    assert core.state == STOPPED and core.reason == "stop action" and core.take_stop()
    core.on_decision(_d("done", 3), 0.2)
    assert core.state == COMPLETED and core.take_stop()


def test_ordering_duplicates_stale_and_restart():
    core = _core(max_action_age=1.0)
    assert core.on_decision(_d("forward 1", 5, stamp=100.0), 0.0, 100.1) == "accepted"
    assert core.on_decision(_d("left 30", 5, stamp=100.0), 0.1, 100.2) == "ignored"  # duplicate
    assert core.on_decision(_d("left 30", 4, stamp=99.0), 0.1, 100.2) == "ignored"   # older
    assert core.on_decision(_d("left 30", 6, stamp=90.0), 0.1, 100.2) == "ignored"   # order
    assert core.action.verb == "forward" and core.state == EXECUTING
    assert core.on_decision(_d("left 30", 7, stamp=100.15), 0.1, 101.5) == "rejected"  # stale
    assert core.state == STOPPED and core.reason.startswith("stale") and core.take_stop()
    # an edge restart resets decision_id; the newer stamp still wins
    assert core.on_decision(_d("left 30", 1, stamp=100.5), 0.2, 100.6) == "accepted"
    assert core.action.verb == "left"
    # unstamped decisions are ordered by id
    core2 = _core()
    assert core2.on_decision(_d("left 30", 3), 0.0) == "accepted"
    assert core2.on_decision(_d("left 30", 2), 0.0) == "ignored"


def test_clamped_action_and_controller_limits():
    core = _core(action_limits=ActionLimits(max_forward_m=0.4))
    core.on_decision(_d("forward 3", 1), 0.0)
    assert core.action.value == 0.4 and core.status()["reason"] == "clamped to limits"


def test_odometry_progress_used_when_fresh():
    core = _core()
    core.on_odom(Pose2D(0, 0, 0), 0.0)
    core.on_decision(_d("forward 0.2", 1), 0.0)
    core.tick(0.05)
    assert core.executor.source == "odom"
    # stale odometry -> the executor falls back to dead reckoning on the command
    core.on_decision(_d("forward 0.2", 2), 2.0)
    core.tick(2.05)
    assert core.executor.source == "command"
