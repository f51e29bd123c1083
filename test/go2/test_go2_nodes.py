"""go2_vlm_control (and go2_sim) over real DDS, in separate processes.

Each test gets its own ROS_DOMAIN_ID (random in 1..200) with localhost-only discovery, spawns
the nodes with ``python -m`` and kills them in a finally. Every stop cause through every driver
is in test_go2_drivers.py; here: profiles and limits, ordering, the typed status, diagnostics
and the closed loop with the simulator.
"""

import json
import math
import time

import pytest

from go2_ros_helpers import ControllerRig, Listener, random_domain

pytest.importorskip("rclpy")
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402
from std_msgs.msg import String  # noqa: E402

from diagnostic_msgs.msg import DiagnosticStatus  # noqa: E402

RATE = 20.0
PERIOD = 1.0 / RATE
SLACK = 0.05
REL = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)


@pytest.fixture
def rig(request):
    domain = random_domain()
    listener = Listener(domain)
    r = ControllerRig(listener, domain, driver=getattr(request, "param", "go2_ros2_sdk"))
    try:
        yield r
    finally:
        r.close()
        listener.close()


def test_limits_clamping_completion_and_stop(rig):
    rig.start_controller(max_vx=0.3, max_ax=0.6, max_forward_m=0.4, deadman_timeout=5.0)
    t0 = rig.send("forward 50")  # clamped to 0.4 m, run at <= 0.3 m/s
    done = rig.wait_state("completed", t0, 6.0)
    assert done, rig.statuses(t0)
    assert (done[0].action, done[0].stop_cause, done[0].progress) == ("forward 0.4", "completed", 1.0)
    assert [s for _, s in rig.statuses(t0) if s.reason == "clamped to limits"]
    moves = [v for _, v in rig.moves(t0)]
    assert max(v[0] for v in moves) == pytest.approx(0.3)
    for v in moves:
        assert 0.0 <= v[0] <= 0.3 + 1e-9 and v[1] == 0.0 and v[2] == 0.0
    for a, b in zip(moves, moves[1:]):
        assert abs(b[0] - a[0]) <= 0.6 * PERIOD + 1e-6
    assert sum(v[0] for v in moves) * PERIOD == pytest.approx(0.4, abs=0.02)
    t_done = [t for t, s in rig.statuses(t0) if s.state == "completed"][0]
    assert [t for t in rig.stops(t0) if t <= t_done + SLACK], "explicit stop on completion"
    time.sleep(0.2)
    assert not rig.moves(t_done)


def test_ordering_duplicates_ignored(rig):
    rig.start_controller(deadman_timeout=5.0)
    stamp_before = rig.L.node.get_clock().now().to_msg()
    t0 = rig.send("left 90", decision_id=10)
    assert rig.moving(t0)
    rig.send("stop", decision_id=10)   # duplicate id -> ignored
    rig.send("stop", decision_id=9, stamp=stamp_before)  # older id, older stamp -> ignored
    time.sleep(0.3)
    last = rig.statuses()[-1][1]
    assert (last.state, last.decision_id) == ("executing", 10)
    assert not rig.stops(t0)
    t1 = rig.send("stop", decision_id=11)
    assert rig.L.wait_for(lambda: rig.stops(t1), 1.0)
    assert rig.wait_state("stopped", t1, 1.0)[0].stop_cause == "stop_action"


def _levels(rig, task, since):
    return [(t, s.level, s.message) for t, s in rig.diagnostics(since)
            if s.name == f"go2_vlm_control: {task}"]


def _wait_level(rig, task, level, since, timeout=3.0):
    return rig.L.wait_for(lambda: [x for x in _levels(rig, task, since) if x[1] == level], timeout)


def test_diagnostics_levels_follow_faults_and_clear(rig):
    rig.start_controller(deadman_timeout=0.6, degraded_speed_scale=0.5)
    t = time.monotonic()
    assert _wait_level(rig, "safety", DiagnosticStatus.OK, t)
    driver = _wait_level(rig, "driver", DiagnosticStatus.OK, t)
    assert "go2_ros2_sdk on /webrtc_req" in driver[0][2]
    status = [s for _, s in rig.diagnostics(t) if s.name == "go2_vlm_control: driver"][0]
    assert status.hardware_id == "go2 via go2_ros2_sdk"
    values = {kv.key: kv.value for kv in status.values}
    assert values["driver"] == "go2_ros2_sdk" and int(values["listeners"]) >= 1
    # e-stop: ERROR until released
    t = rig.estop(True)
    assert "e_stop" in _wait_level(rig, "safety", DiagnosticStatus.ERROR, t)[0][2]
    t = rig.estop(False)
    assert _wait_level(rig, "safety", DiagnosticStatus.OK, t)
    # deadman: WARN naming the cause, back to OK with the next valid decision
    t = rig.send("forward 1")
    warn = _wait_level(rig, "safety", DiagnosticStatus.WARN, t)
    assert "deadman" in warn[0][2]
    t = rig.send("left 10")
    assert _wait_level(rig, "safety", DiagnosticStatus.OK, t)
    # degraded decisions: WARN saying so, OK again when a full decision arrives
    t = rig.send("left 10", degraded=True)
    assert "degraded" in _wait_level(rig, "safety", DiagnosticStatus.WARN, t)[0][2]
    t = rig.send("left 10")
    assert _wait_level(rig, "safety", DiagnosticStatus.OK, t)


def _clear_seed():
    from go2_sim.episode import Go2Episode
    env = Go2Episode()
    for seed in range(100):
        env.reset(seed)
        w = env.world
        if all(not w.collides(w.x + d * math.cos(w.yaw), w.y + d * math.sin(w.yaw), 0.05)
               for d in (0.2, 0.4, 0.6, 0.8)):
            return seed, w.pose
    raise AssertionError("no clear seed")


@pytest.mark.parametrize("rig", ["go2_ros2_sdk", "unitree_sport"], indirect=True)
def test_closed_loop_with_simulator(rig):
    """Controller + simulator: forward 0.5 moves the simulated Go2 ~0.5 m and the driver's
    StopMove holds it still although the simulator (like go2_ros2_sdk) drops zero Twists and
    holds the last command for cmd_timeout."""
    seed, pose0 = _clear_seed()
    L = rig.L
    L.subscribe(String, "sim/state", REL)
    L.subscribe(Image, "camera/image_raw", qos_profile_sensor_data)
    L.subscribe(CameraInfo, "camera/camera_info", qos_profile_sensor_data)
    sim = rig.spawn("go2_sim.sim_node", {"seed": seed, "drop_zero_twist": True,
                                         "state_rate_hz": 20.0})
    rig.start_controller(deadman_timeout=5.0)
    assert L.wait_for(lambda: L.get("sim/state") and L.get("camera/image_raw")
                      and L.get("camera/camera_info"), 20.0), sim.output
    img = L.get("camera/image_raw")[-1][1]
    assert (img.width, img.height, img.encoding, img.step) == (160, 120, "bgr8", 480)
    assert len(img.data) == 160 * 120 * 3 and img.header.frame_id == "front_camera"
    info = L.get("camera/camera_info")[-1][1]
    assert info.k[0] == pytest.approx(80.0) and info.width == 160
    t0 = rig.send("forward 0.5")
    assert rig.wait_state("completed", t0, 6.0), rig.statuses(t0)
    t_done = [t for t, s in rig.statuses(t0) if s.state == "completed"][0]
    time.sleep(0.8)
    # before the 0.5 s command timeout could have stopped it, the robot is already still: the
    # last (small, non-zero) command is held, only the driver's StopMove ends it
    window = [json.loads(m.data) for t, m in L.get("sim/state", t_done + 0.35)
              if t <= t_done + 0.45]
    # held, the last command (<= max_ax * period = 0.04 m/s) would keep it at ~0.04 m/s
    assert window and all(max(abs(v) for v in st["velocity"]) < 0.02 for st in window), window
    st = json.loads(L.get("sim/state")[-1][1].data)
    dx, dy = st["pose"][0] - pose0[0], st["pose"][1] - pose0[1]
    along = dx * math.cos(pose0[2]) + dy * math.sin(pose0[2])
    # accuracy is tested ROS-free; here 3 processes share a loaded machine: a looser bound
    assert along == pytest.approx(0.5, abs=0.1), st
    assert st["stops"] >= 1
    assert st["last_stop_via"] == {"go2_ros2_sdk": "webrtc_req",
                                   "unitree_sport": "sport_request"}[rig.driver]


def test_an_estop_latched_before_the_controller_starts_holds_it(rig):
    """e_stop latched by a transient-local publisher before the controller runs engages it at
    start; a plain (volatile) publisher still releases and engages it."""
    from specdec_ros.qos import LATCHED_QOS
    from std_msgs.msg import Bool

    latched = rig.L.publisher(Bool, "e_stop", LATCHED_QOS)
    latched.publish(Bool(data=True))
    t0 = time.monotonic()
    rig.start_controller()
    assert rig.wait_state("estop", t0, 10.0), rig.statuses(t0)
    t1 = rig.send("forward 0.3")
    time.sleep(0.5)
    assert not rig.moves(t1)  # held: the decision does not move the robot
    t2 = rig.estop(False)  # the volatile test publisher releases
    assert rig.wait_state("idle", t2, 5.0), rig.statuses(t2)
    t3 = rig.estop(True)
    assert rig.wait_state("estop", t3, 5.0)
