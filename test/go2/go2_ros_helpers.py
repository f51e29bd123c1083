"""Helpers for the cross-process ROS tests: isolated domains, node processes, a listener."""

from __future__ import annotations

import glob
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
INSTALL = ROOT / "install"


def _prefixes():
    """Every package prefix of the colcon workspace (project messages and the stand-ins)."""
    return sorted(p for p in INSTALL.glob("*") if (p / "share").is_dir())


def ros_env(domain_id: int) -> dict:
    """Environment for a node process: its own domain, localhost only, the repo and the built
    message packages importable (as `source install/setup.bash` would do)."""
    env = os.environ.copy()
    env["ROS_DOMAIN_ID"] = str(domain_id)
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    env.pop("ROS_LOCALHOST_ONLY", None)
    prefixes = _prefixes()
    paths = [str(ROOT)] + [sp for p in prefixes
                           for sp in glob.glob(str(p / "lib/python3*/site-packages"))]
    libs = [str(p / "lib") for p in prefixes]
    for var, extra in (("PYTHONPATH", paths), ("LD_LIBRARY_PATH", libs),
                       ("AMENT_PREFIX_PATH", [str(p) for p in prefixes])):
        env[var] = os.pathsep.join(extra + ([env[var]] if env.get(var) else []))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def random_domain() -> int:
    return random.SystemRandom().randint(1, 200)


def _ignore_sigint():
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class NodeProcess:
    """`python -m module --ros-args -p k:=v ...` in its own process group."""

    def __init__(self, module: str, domain_id: int, params: dict | None = None, sigint_ignored: bool = False):
        args = [sys.executable, "-m", module, "--ros-args"]
        for k, v in (params or {}).items():
            if isinstance(v, bool):
                v = "true" if v else "false"
            args += ["-p", f"{k}:={v}"]
        self.proc = subprocess.Popen(args, env=ros_env(domain_id), cwd=str(ROOT),
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     start_new_session=True,
                                     # as a background job of a script starts it: SIGINT ignored
                                     preexec_fn=_ignore_sigint if sigint_ignored else None)
        self._out = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self._out.append(line.decode(errors="replace"))

    @property
    def output(self) -> str:
        return "".join(self._out)

    def kill(self):
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGINT)
                self.proc.wait(timeout=3)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(timeout=3)


class Listener:
    """An in-process rclpy node on its own context and domain, spun in a thread. Records every
    message of the subscribed topics with its arrival time (time.monotonic())."""

    def __init__(self, domain_id: int):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
        self.rclpy = rclpy
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.node = rclpy.create_node("go2_test_listener", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.lock = threading.Lock()
        self.msgs: dict[str, list] = {}
        self._stop = False
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self):
        while not self._stop and self.context.ok():
            try:
                self.executor.spin_once(timeout_sec=0.01)
            except Exception:
                if self._stop:
                    return
                raise

    def subscribe(self, msg_type, topic: str, qos):
        self.msgs.setdefault(topic, [])

        def cb(msg, topic=topic):
            with self.lock:
                self.msgs[topic].append((time.monotonic(), msg))
        self.node.create_subscription(msg_type, topic, cb, qos)

    def publisher(self, msg_type, topic: str, qos):
        return self.node.create_publisher(msg_type, topic, qos)

    def get(self, topic: str, since: float = 0.0) -> list:
        with self.lock:
            return [(t, m) for t, m in self.msgs.get(topic, []) if t >= since]

    def wait_for(self, pred, timeout: float, poll: float = 0.005):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            r = pred()
            if r:
                return r
            time.sleep(poll)
        return pred()

    def close(self):
        self._stop = True
        self._thread.join(timeout=2)
        self.executor.shutdown()
        self.node.destroy_node()
        self.rclpy.shutdown(context=self.context)


class ControllerRig:
    """A controller process and a listener on every driver topic, the status and /diagnostics.

    ``moves(since)``: moving commands as (t, (vx, vy, wz)) - non-zero Twists for the Twist
    drivers, Move requests for unitree_sport. ``stops(since)``: arrival times of the driver's
    stop - the StopMove request for go2_ros2_sdk and unitree_sport, a zero Twist for
    twist_only (run with publish_idle_twist false, so that every zero Twist is a stop)."""

    CONTROLLER = "go2_vlm_control.controller_node"

    def __init__(self, listener, domain, driver="go2_ros2_sdk"):
        from diagnostic_msgs.msg import DiagnosticArray
        from geometry_msgs.msg import Twist
        from go2_interfaces.msg import WebRtcReq
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from std_msgs.msg import Bool, String
        from unitree_api.msg import Request

        from edge_cloud_vlm_msgs.msg import ActionStatus, DecodedAction
        self.DecodedAction = DecodedAction
        self.L, self.domain, self.driver, self.procs = listener, domain, driver, []
        rel = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        for topic, typ in (("cmd_vel", Twist), ("webrtc_req", WebRtcReq),
                           ("/api/sport/request", Request), ("action_status", ActionStatus),
                           ("/diagnostics", DiagnosticArray)):
            listener.subscribe(typ, topic, rel)
        self.estop_pub = listener.publisher(Bool, "e_stop", rel)
        self.action_pub = listener.publisher(DecodedAction, "decoded_action", rel)
        self.text_pub = listener.publisher(String, "decoded_action_text", rel)
        self.next_id = 1

    def spawn(self, module, params=None, sigint_ignored=False):
        p = NodeProcess(module, self.domain, params, sigint_ignored)
        self.procs.append(p)
        return p

    def start_controller(self, sigint_ignored=False, **params):
        params.setdefault("control_rate_hz", 20.0)
        params.setdefault("driver", self.driver)
        if params["driver"] == "twist_only":
            params.setdefault("publish_idle_twist", False)
        proc = self.spawn(self.CONTROLLER, params, sigint_ignored)
        ok = self.L.wait_for(lambda: self.L.get("action_status") and all(
            p.get_subscription_count() > 0 for p in (self.estop_pub, self.action_pub)), 30.0)
        assert ok, "controller did not come up:\n" + proc.output
        return proc

    def send(self, text, valid=True, decision_id=None, reject_reason="", action=None,
             stamp=None, degraded=False):
        """Publish one decision; returns the monotonic send time."""
        if decision_id is None:
            decision_id = self.next_id
        self.next_id = max(self.next_id, decision_id) + 1
        m = self.DecodedAction()
        m.header.stamp = stamp or self.L.node.get_clock().now().to_msg()
        m.decision_id = decision_id
        m.session_id = "test"
        m.text = text
        m.valid = valid
        m.reject_reason = reject_reason
        m.degraded = degraded
        m.action = action if action is not None else (text.split(" ")[0] if valid else "")
        t = time.monotonic()
        self.action_pub.publish(m)
        return t

    def estop(self, on):
        from std_msgs.msg import Bool
        t = time.monotonic()
        self.estop_pub.publish(Bool(data=on))
        return t

    def statuses(self, since=0.0):
        return self.L.get("action_status", since)

    def wait_state(self, state, since, timeout):
        return self.L.wait_for(lambda: [s for _, s in self.statuses(since) if s.state == state],
                               timeout)

    def twists(self, since=0.0):
        return self.L.get("cmd_vel", since)

    def _requests(self, since):
        if self.driver == "go2_ros2_sdk":
            return [(t, m.api_id, m.parameter) for t, m in self.L.get("webrtc_req", since)]
        return [(t, m.header.identity.api_id, m.parameter)
                for t, m in self.L.get("/api/sport/request", since)]

    def moves(self, since=0.0):
        from go2_vlm_control import sport_api
        if self.driver == "unitree_sport":
            return [(t, sport_api.decode_move(p)) for t, api, p in self._requests(since)
                    if api == sport_api.API_MOVE]
        return [(t, (m.linear.x, m.linear.y, m.angular.z)) for t, m in self.twists(since)
                if (m.linear.x, m.linear.y, m.angular.z) != (0.0, 0.0, 0.0)]

    def stops(self, since=0.0):
        from go2_vlm_control import sport_api
        if self.driver == "twist_only":
            return [t for t, m in self.twists(since)
                    if (m.linear.x, m.linear.y, m.angular.z) == (0.0, 0.0, 0.0)]
        return [t for t, api, _ in self._requests(since) if api == sport_api.API_STOP_MOVE]

    def moving(self, since, timeout=5.0):
        return self.L.wait_for(lambda: [1 for _, v in self.moves(since) if abs(v[0]) > 0.05
                                        or abs(v[2]) > 0.05], timeout)

    def diagnostics(self, since=0.0):
        return [(t, s) for t, m in self.L.get("/diagnostics", since) for s in m.status]

    def close(self):
        for p in self.procs:
            p.kill()
