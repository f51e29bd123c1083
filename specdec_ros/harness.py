"""Run real nodes in separate processes and talk to them over DDS (tests, demo, tools)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

import numpy as np
import rclpy
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def ros_env(**extra) -> dict:
    env = dict(os.environ)
    env["ROS_DOMAIN_ID"] = str(random.randint(1, 200))
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    env["PYTHONUNBUFFERED"] = "1"
    env.update({k: str(v) for k, v in extra.items()})
    return env


@contextmanager
def launched(launch_file: str, args: dict, env: dict, log_path=None):
    """Run a launch file through the launch runner; stop it (and all its nodes) afterwards."""
    cmd = [sys.executable, "-m", "specdec_ros.launch_runner", os.path.join(ROOT, "launch", launch_file),
           *[f"{k}:={v}" for k, v in args.items()]]
    log = open(log_path, "w") if log_path else subprocess.DEVNULL
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if log_path:
            log.close()


class Probe:
    """An rclpy node in the test process with its own context, spun in a background thread."""

    def __init__(self, env: dict, name: str = "probe"):
        os.environ["ROS_DOMAIN_ID"] = env["ROS_DOMAIN_ID"]
        os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = env["ROS_AUTOMATIC_DISCOVERY_RANGE"]
        self.context = Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.received = {}
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self):
        while self.context.ok():
            try:
                self.executor.spin_once(timeout_sec=0.05)
            except Exception:
                break

    def record(self, msg_type, topic, qos=10):
        self.received[topic] = []

        def callback(msg, topic=topic):
            with self._lock:
                self.received[topic].append((time.monotonic(), msg))

        self.node.create_subscription(msg_type, topic, callback, qos)

    def messages(self, topic):
        with self._lock:
            return list(self.received[topic])

    def wait_for(self, topic, count=1, timeout=60.0, predicate=None):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msgs = [m for _, m in self.messages(topic) if predicate is None or predicate(m)]
            if len(msgs) >= count:
                return msgs
            time.sleep(0.05)
        raise TimeoutError(f"{topic}: got {len(self.messages(topic))} messages, wanted {count} in {timeout} s")

    def close(self):
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)
        self._thread.join(2)


def random_frame(seed: int = 0, shape=(72, 96, 3)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)
