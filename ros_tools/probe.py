"""An isolated ROS graph for a script, and a node inside the script's own process.

``ros_env()`` is the environment for processes of one isolated graph (a random ROS_DOMAIN_ID,
localhost-only discovery), so tests and demos running at the same time never see each other.
``Probe`` is an rclpy node with its own context, spun in a background thread: it records what
launched nodes publish and publishes to them (camera frames, instructions, resets), the way the
ROS tests and ``make demo`` drive the real nodes over DDS. Start the nodes themselves with
:func:`ros_tools.launch_runner.launched`.
"""

from __future__ import annotations

import os
import random
import threading
import time

import rclpy
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor


def ros_env(**extra) -> dict:
    """os.environ for one isolated graph, plus ``extra`` variables."""
    env = dict(os.environ)
    env["ROS_DOMAIN_ID"] = str(random.randint(1, 200))
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    env["PYTHONUNBUFFERED"] = "1"
    env.update({k: str(v) for k, v in extra.items()})
    return env


class Probe:
    """An rclpy node in this process with its own context, spun in a background thread."""

    def __init__(self, env: dict, name: str = "probe"):
        os.environ["ROS_DOMAIN_ID"] = env["ROS_DOMAIN_ID"]
        os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = env["ROS_AUTOMATIC_DISCOVERY_RANGE"]
        self.context = Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.received = {}
        self.errors = []  # exceptions raised by callbacks (the spin thread goes on)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self):
        while not self._stopping.is_set() and self.context.ok():
            try:
                self.executor.spin_once(timeout_sec=0.05)
            except Exception as exc:  # shutdown ends the loop; anything else is a failed callback
                if not self.context.ok():
                    break
                self.errors.append(exc)

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
        # the spin thread first: destroying the node or the context under an executor that is
        # waiting on them crashes rclpy (a segfault in the test process, seen once in CI-like runs)
        self._stopping.set()
        self._thread.join(5)
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)
