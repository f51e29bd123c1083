"""Helpers for the cross-process ROS tests: isolated domains, node processes, a listener."""

from __future__ import annotations

import ctypes
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
MSG_PREFIX = ROOT / "install" / "edge_cloud_vlm_msgs"


def _msg_site_packages():
    return sorted(glob.glob(str(MSG_PREFIX / "lib" / "python3*" / "site-packages")))


def ros_env(domain_id: int) -> dict:
    """Environment for a node process: its own domain, localhost only, the repo and the built
    message package importable (as `source install/setup.bash` would do)."""
    env = os.environ.copy()
    env["ROS_DOMAIN_ID"] = str(domain_id)
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    env.pop("ROS_LOCALHOST_ONLY", None)
    paths = [str(ROOT)] + _msg_site_packages()
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    lib = str(MSG_PREFIX / "lib")
    if os.path.isdir(lib):
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (lib, env.get("LD_LIBRARY_PATH")) if p)
        env["AMENT_PREFIX_PATH"] = os.pathsep.join(
            p for p in (str(MSG_PREFIX), env.get("AMENT_PREFIX_PATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def load_decoded_action():
    """DecodedAction in this process, or None when the message package is not built. Without
    a sourced workspace its libraries are preloaded so the typesupport dlopen finds them."""
    try:
        from edge_cloud_vlm_msgs.msg import DecodedAction  # noqa: F401
    except ImportError:
        for sp in _msg_site_packages():
            if sp not in sys.path:
                sys.path.append(sp)
    lib = MSG_PREFIX / "lib"
    if lib.is_dir() and str(lib) not in os.environ.get("LD_LIBRARY_PATH", ""):
        for name in ("generator_c", "typesupport_c", "typesupport_introspection_c",
                     "typesupport_fastrtps_c", "generator_py"):
            for f in glob.glob(str(lib / f"libedge_cloud_vlm_msgs__rosidl_{name}.so")):
                try:
                    ctypes.CDLL(f, mode=ctypes.RTLD_GLOBAL)
                except OSError:
                    pass
    try:
        from edge_cloud_vlm_msgs.msg import DecodedAction
        return DecodedAction
    except Exception:
        return None


def random_domain() -> int:
    return random.SystemRandom().randint(1, 200)


class NodeProcess:
    """`python -m module --ros-args -p k:=v ...` in its own process group."""

    def __init__(self, module: str, domain_id: int, params: dict | None = None):
        args = [sys.executable, "-m", module, "--ros-args"]
        for k, v in (params or {}).items():
            if isinstance(v, bool):
                v = "true" if v else "false"
            args += ["-p", f"{k}:={v}"]
        self.proc = subprocess.Popen(args, env=ros_env(domain_id), cwd=str(ROOT),
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     start_new_session=True)
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
