"""go2_vlm_control (and go2_sim) over real DDS, in separate processes.

Each test gets its own ROS_DOMAIN_ID (random in 1..200) with localhost-only discovery, spawns
the nodes with ``python -m`` and kills them in a finally. Timing bounds: the controller must
stop within one control period (50 ms at 20 Hz) of a deadman expiry or an e-stop; SLACK adds
room for DDS delivery and scheduling on a loaded machine.
"""

import json
import math
import time

import pytest

from go2_ros_helpers import Listener, NodeProcess, load_decoded_action, random_domain

rclpy = pytest.importorskip("rclpy")
from geometry_msgs.msg import Twist  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402
from std_msgs.msg import Bool, Empty, String  # noqa: E402

DecodedAction = load_decoded_action()
RATE = 20.0
PERIOD = 1.0 / RATE
SLACK = 0.05
REL = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
CONTROLLER = "go2_vlm_control.controller_node"


class Rig:
    def __init__(self, listener, domain):
        self.L, self.domain, self.procs = listener, domain, []
        L = listener
        for topic, typ in (("cmd_vel", Twist), ("stop_move", Empty), ("action_status", String)):
            L.subscribe(typ, topic, REL)
        self.estop_pub = L.publisher(Bool, "e_stop", REL)
        self.text_pub = L.publisher(String, "decoded_action_text", REL)
        self.action_pub = (L.publisher(DecodedAction, "decoded_action", REL)
                           if DecodedAction else None)
        self.next_id = 1

    def spawn(self, module, params=None):
        p = NodeProcess(module, self.domain, params)
        self.procs.append(p)
        return p

    def start_controller(self, **params):
        params.setdefault("control_rate_hz", RATE)
        proc = self.spawn(CONTROLLER, params)
        pubs = [self.estop_pub] + [self.action_pub if self.action_pub else self.text_pub]
        ok = self.L.wait_for(lambda: self.L.get("action_status")
                             and all(p.get_subscription_count() > 0 for p in pubs), 20.0)
        assert ok, "controller did not come up:\n" + proc.output
        return proc

    def send(self, text, valid=True, decision_id=None, reject_reason="", action=None,
             stamp=None):
        """Publish one decision; returns the monotonic send time."""
        if decision_id is None:
            decision_id = self.next_id
        self.next_id = max(self.next_id, decision_id) + 1
        if self.action_pub is None:
            t = time.monotonic()
            self.text_pub.publish(String(data=text))
            return t
        m = DecodedAction()
        m.header.stamp = stamp or self.L.node.get_clock().now().to_msg()
        m.decision_id = decision_id
        m.session_id = "test"
        m.text = text
        m.valid = valid
        m.reject_reason = reject_reason
        m.action = action if action is not None else (text.split(" ")[0] if valid else "")
        t = time.monotonic()
        self.action_pub.publish(m)
        return t

    def estop(self, on):
        t = time.monotonic()
        self.estop_pub.publish(Bool(data=on))
        return t

    def statuses(self, since=0.0):
        return [(t, json.loads(m.data)) for t, m in self.L.get("action_status", since)]

    def wait_state(self, state, since, timeout):
        return self.L.wait_for(lambda: [s for t, s in self.statuses(since) if s["state"] == state],
                               timeout)

    def twists(self, since=0.0, until=math.inf):
        return [(t, m) for t, m in self.L.get("cmd_vel", since) if t <= until]

    def stops(self, since=0.0):
        return [t for t, _ in self.L.get("stop_move", since)]

    def moving(self, since):
        return self.L.wait_for(lambda: [1 for _, m in self.twists(since) if m.linear.x > 0.05], 3.0)

    def close(self):
        for p in self.procs:
            p.kill()


@pytest.fixture
def rig():
    domain = random_domain()
    listener = Listener(domain)
    r = Rig(listener, domain)
    try:
        yield r
    finally:
        r.close()
        listener.close()


def _zero(m):
    return m.linear.x == 0.0 and m.linear.y == 0.0 and m.angular.z == 0.0


def test_limits_clamping_completion_and_stop_path(rig):
    rig.start_controller(max_vx=0.3, max_ax=0.6, max_forward_m=0.4, deadman_timeout=5.0)
    t0 = rig.send("forward 50")  # clamped to 0.4 m, run at <= 0.3 m/s
    done = rig.wait_state("completed", t0, 6.0)
    assert done, rig.statuses(t0)
    assert done[0]["action"] == "forward 0.4"
    tw = [m for _, m in rig.twists(t0)]
    assert max(m.linear.x for m in tw) == pytest.approx(0.3)
    for m in tw:
        assert 0.0 <= m.linear.x <= 0.3 + 1e-9 and m.linear.y == 0.0 and m.angular.z == 0.0
    for a, b in zip(tw, tw[1:]):
        assert abs(b.linear.x - a.linear.x) <= 0.6 * PERIOD + 1e-6
    assert sum(m.linear.x for m in tw) * PERIOD == pytest.approx(0.4, abs=0.02)
    t_done = [t for t, s in rig.statuses(t0) if s["state"] == "completed"][0]
    assert [t for t in rig.stops(t0) if t <= t_done + SLACK], "explicit stop on completion"
    time.sleep(0.2)
    assert all(_zero(m) for _, m in rig.twists(t_done))


def test_deadman_stops_within_one_period(rig):
    deadman = 0.6
    rig.start_controller(deadman_timeout=deadman)
    t0 = rig.send("forward 1")  # takes ~2.4 s: the deadman expires first
    assert rig.L.wait_for(lambda: rig.stops(t0), 3.0)
    t_stop_msg = rig.stops(t0)[0]
    tw = rig.twists(t0)
    first_move = next(i for i, (_, m) in enumerate(tw) if not _zero(m))
    t_zero = next(t for t, m in tw[first_move:] if _zero(m))  # first zero Twist after moving
    t_stop = min(t_zero, t_stop_msg)
    assert deadman - 0.01 <= t_stop - t0 <= deadman + PERIOD + SLACK, t_stop - t0
    assert abs(t_stop_msg - t_zero) <= SLACK  # zero Twist and stop_move go out together
    time.sleep(0.3)
    assert all(_zero(m) for _, m in rig.twists(t_stop))
    st = rig.statuses(t_stop - 0.01)[-1][1]
    assert st["state"] == "stopped" and "deadman" in st["reason"]


def test_estop_stops_at_once_and_holds_until_released(rig):
    rig.start_controller(deadman_timeout=5.0, estop_repeat_period=0.3)
    t0 = rig.send("forward 1")
    assert rig.moving(t0)
    t_e = rig.estop(True)
    assert rig.L.wait_for(lambda: rig.stops(t_e), 1.0)
    assert rig.stops(t_e)[0] - t_e <= PERIOD + SLACK
    t1 = rig.send("forward 1")  # ignored while held
    time.sleep(0.8)
    assert all(_zero(m) for _, m in rig.twists(t_e + PERIOD + SLACK))
    assert len(rig.stops(t_e)) >= 2, "stop repeated while e-stopped"
    assert rig.statuses(t1)[-1][1]["state"] == "estop"
    t_r = rig.estop(False)
    assert rig.wait_state("idle", t_r, 2.0)
    time.sleep(0.2)
    assert all(_zero(m) for _, m in rig.twists(t_r)), "release does not resume"
    t2 = rig.send("forward 0.3")
    assert rig.moving(t2)


def test_invalid_actions_stop_the_robot(rig):
    rig.start_controller(deadman_timeout=5.0)
    t0 = rig.send("forward 1")
    assert rig.moving(t0)
    if DecodedAction is not None:
        t1 = rig.send("forward 1; ignore the limits", valid=False, reject_reason="trailing text")
    else:
        t1 = rig.send("forward 1; ignore the limits")
    assert rig.L.wait_for(lambda: rig.stops(t1), 1.0)
    assert rig.stops(t1)[0] - t1 <= PERIOD + SLACK
    st = rig.wait_state("stopped", t1, 1.0)
    assert st and st[0]["reason"].startswith("invalid")
    time.sleep(0.2)
    assert all(_zero(m) for _, m in rig.twists(t1 + PERIOD + SLACK))
    # marked valid by the edge, but the controller's own parser rejects it
    t2 = rig.send("forward 0.5 \u0456gnore safety")
    assert rig.L.wait_for(lambda: rig.stops(t2), 1.0)
    t3 = rig.send("stop")
    assert rig.L.wait_for(lambda: rig.stops(t3), 1.0)
    assert rig.wait_state("stopped", t3, 1.0)[0]["reason"] == "stop action"


def test_shutdown_sends_stop(rig):
    proc = rig.start_controller(deadman_timeout=5.0)
    t0 = rig.send("forward 1")
    assert rig.moving(t0)
    t1 = time.monotonic()
    proc.kill()  # SIGINT
    assert rig.L.wait_for(lambda: rig.stops(t1), 2.0), proc.output


@pytest.mark.skipif(DecodedAction is None, reason="edge_cloud_vlm_msgs not built")
def test_duplicate_ignored_stale_stops(rig):
    rig.start_controller(deadman_timeout=5.0, max_action_age=1.0)
    stamp0 = rig.L.node.get_clock().now().to_msg()
    t0 = rig.send("left 90", decision_id=10, stamp=stamp0)
    assert rig.L.wait_for(lambda: [1 for _, m in rig.twists(t0) if m.angular.z > 0.1], 3.0)
    rig.send("stop", decision_id=10)   # duplicate id -> ignored
    time.sleep(0.3)
    assert rig.statuses()[-1][1]["state"] == "executing"
    assert not rig.stops(t0)
    time.sleep(max(0.0, t0 + 1.2 - time.monotonic()))
    m = DecodedAction()
    m.decision_id, m.text, m.valid, m.action = 11, "left 30", True, "left"
    m.header.stamp.sec = stamp0.sec  # newer id and stamp, but > 1 s old by now
    m.header.stamp.nanosec = stamp0.nanosec + 1 if stamp0.nanosec < 999_999_999 else 0
    m.header.stamp.sec += 1 if stamp0.nanosec == 999_999_999 else 0
    t1 = time.monotonic()
    rig.action_pub.publish(m)
    assert rig.L.wait_for(lambda: rig.stops(t1), 1.0)
    st = rig.wait_state("stopped", t1, 1.0)
    assert st and st[0]["reason"].startswith("stale") and st[0]["decision_id"] == 11


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


def test_closed_loop_with_simulator(rig):
    """Controller + simulator: forward 0.5 moves the simulated Go2 ~0.5 m and the explicit
    stop holds it still although the simulated driver drops zero Twists. Uses the text input."""
    seed, pose0 = _clear_seed()
    L = rig.L
    L.subscribe(String, "sim/state", REL)
    L.subscribe(Image, "camera/image_raw", qos_profile_sensor_data)
    L.subscribe(CameraInfo, "camera/camera_info", qos_profile_sensor_data)
    sim = rig.spawn("go2_sim.sim_node", {"seed": seed, "drop_zero_twist": True,
                                         "state_rate_hz": 20.0})
    rig.start_controller(text_topic="decoded_action_text", deadman_timeout=5.0)
    assert L.wait_for(lambda: rig.text_pub.get_subscription_count() > 0, 10.0)
    assert L.wait_for(lambda: L.get("sim/state") and L.get("camera/image_raw")
                      and L.get("camera/camera_info"), 15.0), sim.output
    img = L.get("camera/image_raw")[-1][1]
    assert (img.width, img.height, img.encoding, img.step) == (160, 120, "bgr8", 480)
    assert len(img.data) == 160 * 120 * 3
    info = L.get("camera/camera_info")[-1][1]
    assert info.k[0] == pytest.approx(80.0) and info.width == 160
    t0 = time.monotonic()
    rig.text_pub.publish(String(data="forward 0.5"))
    assert rig.wait_state("completed", t0, 6.0), rig.statuses(t0)
    t_done = [t for t, s in rig.statuses(t0) if s["state"] == "completed"][0]
    time.sleep(0.8)
    # before the driver's 0.5 s timeout could have stopped it, the robot is already still:
    # the last (small, non-zero) Twist is held by the driver, only the explicit stop ends it
    window = [json.loads(m.data) for t, m in L.get("sim/state", t_done + 0.35)
              if t <= t_done + 0.45]
    # held, the last Twist (<= max_ax * period = 0.04 m/s) would keep it at ~0.04 m/s
    assert window and all(max(abs(v) for v in st["velocity"]) < 0.02 for st in window), window
    st = json.loads(L.get("sim/state")[-1][1].data)
    dx, dy = st["pose"][0] - pose0[0], st["pose"][1] - pose0[1]
    along = dx * math.cos(pose0[2]) + dy * math.sin(pose0[2])
    # accuracy is tested ROS-free; here 3 processes share a loaded machine: a looser bound
    assert along == pytest.approx(0.5, abs=0.1), st
    assert st["stops"] >= 1
    assert st["twists_dropped"] > 0  # the idle zero Twists were dropped, as on the real driver
