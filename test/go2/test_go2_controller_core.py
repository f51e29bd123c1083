"""Controller state machine (ROS-free, simulated clock): ordering, deadman, e-stop, stops."""

import pytest

from go2_vlm_control.action_language import ActionLimits
from go2_vlm_control.controller import (CAUSE_BAD_STAMP, CAUSE_DEADMAN, CAUSE_DONE,
                                        CAUSE_ESTOP, CAUSE_INVALID, CAUSE_SHUTDOWN,
                                        CAUSE_STOP_ACTION, COMPLETED, ESTOP, EXECUTING, IDLE,
                                        STOPPED, ControllerConfig, ControllerCore, Decision)
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


def test_ordering_duplicates_and_restart():
    core = _core(max_action_age=5.0)
    assert core.on_decision(_d("forward 1", 5, stamp=100.0), 0.0, 100.1) == "accepted"
    assert core.on_decision(_d("left 30", 5, stamp=100.0), 0.1, 100.2) == "ignored"  # duplicate
    assert core.on_decision(_d("left 30", 4, stamp=99.0), 0.1, 100.2) == "ignored"   # older
    assert core.on_decision(_d("left 30", 6, stamp=99.5), 0.1, 100.2) == "ignored"   # order
    assert core.action.verb == "forward" and core.state == EXECUTING
    # an edge restart resets decision_id; the newer stamp still wins
    assert core.on_decision(_d("left 30", 1, stamp=100.5), 0.2, 100.6) == "accepted"
    assert core.action.verb == "left"
    # unstamped decisions are ordered by id
    core2 = _core()
    assert core2.on_decision(_d("left 30", 3), 0.0) == "accepted"
    assert core2.on_decision(_d("left 30", 2), 0.0) == "ignored"


@pytest.mark.parametrize("stamp_offset,words", [
    (-100.0, "stale"),      # 100 s old: used to be ignored (older stamp than the last one)
    (-1.5, "stale"),        # just past max_action_age
    (3600.0, "future"),     # 1 h ahead: used to be accepted
    (1.5, "future"),        # just past max_clock_skew
])
def test_out_of_tolerance_stamps_are_refused_and_stop(stamp_offset, words):
    core = _core(max_action_age=1.0, max_clock_skew=1.0)
    wall = 1000.0
    assert core.on_decision(_d("forward 1", 1, stamp=wall - 0.1), 0.0, wall) == "accepted"
    core.take_stop()
    _run(core, 0.0, 0.3)
    assert core.on_decision(_d("forward 1", 2, stamp=wall + stamp_offset), 0.3, wall + 0.3) \
        == "rejected"
    assert core.state == STOPPED and core.stop_cause == CAUSE_BAD_STAMP and core.take_stop()
    assert words in core.reason and core.fault
    assert core.status()["decision_id"] == 2  # the status names it, so the edge decides again
    assert core.tick(0.35).is_zero()
    # the refused stamp does not enter the ordering: the next good decision runs
    assert core.on_decision(_d("left 30", 3, stamp=wall + 0.4), 0.4, wall + 0.5) == "accepted"
    assert core.state == EXECUTING and not core.fault


def test_stamps_within_tolerance_run():
    core = _core(max_action_age=1.0, max_clock_skew=1.0)
    assert core.on_decision(_d("forward 1", 1, stamp=100.9), 0.0, 100.0) == "accepted"  # skew
    assert core.on_decision(_d("left 30", 2, stamp=101.0), 0.1, 101.9) == "accepted"    # age
    assert core.state == EXECUTING


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


def test_every_stop_records_its_cause():
    core = _core(deadman_timeout=0.5)
    core.on_decision(_d("forward 1", 1), 0.0)
    _run(core, 0.0, 1.0)
    assert (core.stop_cause, core.fault) == (CAUSE_DEADMAN, True)
    core.on_decision(_d("stop", 2), 1.0)
    assert (core.stop_cause, core.fault) == (CAUSE_STOP_ACTION, False)
    core.on_decision(_d("forward 1", 3, valid=False), 1.1)
    assert core.stop_cause == CAUSE_INVALID and core.fault
    core.on_decision(_d("done", 4), 1.2)
    assert (core.state, core.stop_cause, core.fault) == (COMPLETED, CAUSE_DONE, False)
    core.on_estop(True, 1.3)
    assert core.stop_cause == CAUSE_ESTOP
    core.on_estop(False, 1.4)
    core.take_stop()
    core.shutdown()
    assert core.stop_cause == CAUSE_SHUTDOWN and core.take_stop()
    assert core.status()["stop_cause"] == CAUSE_SHUTDOWN


def test_degraded_decisions_run_under_reduced_speed_limits():
    limits = MotionLimits(max_vx=0.6, max_wz=1.0)
    core = _core(motion_limits=limits, degraded_speed_scale=0.5, deadman_timeout=10.0)
    core.on_decision(_d("forward 1", 1, degraded=True), 0.0)
    assert core.status()["degraded"] and core.motion_limits.max_vx == pytest.approx(0.3)
    _, out = _run(core, 0.0, 1.5)
    assert max(v.vx for _, v in out) == pytest.approx(0.3)
    # the cloud is back: a full decision preempts at the full limits
    core.on_decision(_d("forward 1", 2), 1.5)
    _, out = _run(core, 1.5, 1.5)
    assert not core.degraded and max(v.vx for _, v in out) == pytest.approx(0.6)
    core.on_decision(_d("left 90", 3, degraded=True), 3.0)
    _, out = _run(core, 3.0, 1.0)
    assert max(abs(v.wz) for _, v in out) == pytest.approx(0.5)


@pytest.mark.parametrize("scale", [0.0, -0.5, 1.5, float("nan")])
def test_degraded_speed_scale_must_be_a_fraction(scale):
    with pytest.raises(ValueError, match="speed scale"):
        _core(degraded_speed_scale=scale)
