"""rosbag2 recording and replay without ``ros2 bag`` (which the PyPI wheels lack).

Bags are standard rosbag2 folders (sqlite3 or mcap storage) written and read with the
``rosbags`` library; ``ros2 bag play`` / ``ros2 bag info`` on a robot read them as usual, and
bags recorded there with ``ros2 bag record`` replay here. Messages are stored as the CDR bytes
rclpy serialises, so nothing is converted on the way in or out.

Two nodes:

  bag_recorder  --ros-args -p output:=run.bag -p storage:=mcap -p topics:="['/camera/image_raw', ...]"
  bag_replay    --ros-args -p bag:=test/data/sim_seed7_mcap -p rate:=1.0 -p loop:=false

The recorder needs each topic's type (``types`` parameter, parallel to ``topics``) because a
subscription must be typed before any message arrives; the replayer takes types from the bag.
Sensor topics (camera, odometry) use sensor-data QoS: recorded best effort (parameter
sensor_reliability), replayed reliable, which best-effort subscribers also receive.
"""

from __future__ import annotations

import importlib
import os
import sys
import time
from typing import Dict, List

import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.serialization import deserialize_message, serialize_message

from .qos import COMMAND_QOS, SENSOR_QOS

SENSOR_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage", "sensor_msgs/msg/CameraInfo",
                "nav_msgs/msg/Odometry")
MSG_PACKAGE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "msg", "msg")


def ros_type(name: str):
    """'pkg/msg/Type' (or 'pkg/Type') -> the generated Python class."""
    parts = name.split("/")
    pkg, cls = parts[0], parts[-1]
    return getattr(importlib.import_module(f"{pkg}.msg"), cls)


def typestore():
    """rosbags typestore with ROS 2 Jazzy's types plus this project's messages."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.ROS2_JAZZY)
    extra = {}
    if os.path.isdir(MSG_PACKAGE_DIR):
        for filename in sorted(os.listdir(MSG_PACKAGE_DIR)):
            if filename.endswith(".msg"):
                with open(os.path.join(MSG_PACKAGE_DIR, filename)) as handle:
                    extra.update(get_types_from_msg(handle.read(), f"edge_cloud_vlm_msgs/msg/{filename[:-4]}"))
    store.register(extra)
    return store


class BagWriter:
    """Append CDR-serialised rclpy messages to a rosbag2 folder."""

    def __init__(self, path: str, storage: str = "sqlite3"):
        from rosbags.rosbag2 import StoragePlugin, Writer

        plugin = {"sqlite3": StoragePlugin.SQLITE3, "mcap": StoragePlugin.MCAP}.get(storage)
        if plugin is None:
            raise ValueError(f"storage must be sqlite3 or mcap, got {storage!r}")
        self.store = typestore()
        self.writer = Writer(path, version=9, storage_plugin=plugin)
        self.writer.open()
        self.connections: Dict[str, object] = {}
        self.count = 0

    def write(self, topic: str, type_name: str, msg, stamp_ns: int):
        if topic not in self.connections:
            self.connections[topic] = self.writer.add_connection(topic, type_name, typestore=self.store)
        self.writer.write(self.connections[topic], stamp_ns, serialize_message(msg))
        self.count += 1

    def close(self):
        self.writer.close()


def read_bag(path: str, topics=None):
    """Yield (topic, type name, receive time ns, rclpy message) in bag order."""
    from rosbags.rosbag2 import Reader

    with Reader(path) as reader:
        connections = [c for c in reader.connections if topics is None or c.topic in topics]
        for connection, stamp, raw in reader.messages(connections=connections):
            yield connection.topic, connection.msgtype, stamp, deserialize_message(raw, ros_type(connection.msgtype))


def sensor_profile(reliability: str):
    """Sensor-data QoS with the given reliability ("best_effort" or "reliable")."""
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    policies = {"best_effort": ReliabilityPolicy.BEST_EFFORT, "reliable": ReliabilityPolicy.RELIABLE}
    if reliability not in policies:
        raise ValueError(f"sensor_reliability must be one of {sorted(policies)}, got {reliability!r}")
    return QoSProfile(history=SENSOR_QOS.history, depth=max(SENSOR_QOS.depth, 10), reliability=policies[reliability],
                      durability=SENSOR_QOS.durability)


class BagRecorder(Node):
    def __init__(self):
        super().__init__("bag_recorder")
        output = self.declare_parameter("output", "recording").value
        topics: List[str] = list(self.declare_parameter("topics", ["/camera/image_raw"]).value)
        types: List[str] = list(self.declare_parameter("types", ["sensor_msgs/msg/Image"]).value)
        if len(topics) != len(types):
            raise ValueError("parameters topics and types must have the same length")
        self.max_messages = self.declare_parameter("max_messages", 0).value
        self.writer = BagWriter(output, self.declare_parameter("storage", "sqlite3").value)
        # sensor topics: best effort by default (a robot's camera driver publishes best effort and a
        # reliable subscriber would not match it); "reliable" records a reliable publisher (e.g.
        # bag_replay) without loss
        sensor_qos = sensor_profile(self.declare_parameter("sensor_reliability", "best_effort").value)
        for topic, type_name in zip(topics, types):
            qos = sensor_qos if type_name in SENSOR_TYPES else COMMAND_QOS
            self.create_subscription(ros_type(type_name), topic,
                                     lambda msg, t=topic, n=type_name: self._on_message(t, n, msg), qos)
        self.get_logger().info(f"recording {len(topics)} topics to {output}")

    def _on_message(self, topic, type_name, msg):
        self.writer.write(topic, type_name, msg, self.get_clock().now().nanoseconds)
        if self.max_messages and self.writer.count >= self.max_messages:
            raise SystemExit(0)


class BagReplay(Node):
    def __init__(self):
        super().__init__("bag_replay")
        self.path = self.declare_parameter("bag", "").value
        if not self.path or not os.path.isdir(self.path):
            raise FileNotFoundError(f"parameter bag must name a rosbag2 folder, got {self.path!r}")
        self.rate = float(self.declare_parameter("rate", 1.0).value)
        self.loop = bool(self.declare_parameter("loop", False).value)
        self.start_delay_s = float(self.declare_parameter("start_delay_s", 1.0).value)
        self.restamp = bool(self.declare_parameter("restamp", False).value)
        # > 0: before playing, wait (up to 30 s) until every topic has this many subscribers,
        # so nothing published during DDS discovery is lost
        self.wait_subscribers = int(self.declare_parameter("wait_subscribers", 0).value)
        # reliable by default, like `ros2 bag play`: it also reaches best-effort (sensor-data)
        # subscribers, and a reliable recorder gets every message even on a loaded machine
        sensor_qos = sensor_profile(self.declare_parameter("sensor_reliability", "reliable").value)
        self.messages = list(read_bag(self.path))
        if not self.messages:
            raise ValueError(f"{self.path}: no messages")
        self.publishers_ = {}
        for topic, type_name, _, _ in self.messages:
            if topic not in self.publishers_:
                qos = sensor_qos if type_name in SENSOR_TYPES else COMMAND_QOS
                self.publishers_[topic] = self.create_publisher(ros_type(type_name), topic, qos)
        self.get_logger().info(f"replaying {len(self.messages)} messages on {len(self.publishers_)} topics")

    def play(self):
        time.sleep(self.start_delay_s)
        deadline = time.monotonic() + 30
        while self.wait_subscribers and time.monotonic() < deadline and any(
                pub.get_subscription_count() < self.wait_subscribers for pub in self.publishers_.values()):
            time.sleep(0.05)
        while rclpy.ok():
            t0_bag, t0_wall = self.messages[0][2], time.monotonic()
            for topic, _, stamp, msg in self.messages:
                wait = (stamp - t0_bag) / 1e9 / self.rate - (time.monotonic() - t0_wall)
                if wait > 0:
                    time.sleep(wait)
                if self.restamp and hasattr(msg, "header"):
                    msg.header.stamp = self.get_clock().now().to_msg()
                self.publishers_[topic].publish(msg)
            if not self.loop:
                break


def record_main(args=None):
    rclpy.init(args=args)
    node = BagRecorder()
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException, SystemExit):
        pass
    finally:
        node.writer.close()
        node.destroy_node()
        rclpy.try_shutdown()


def replay_main(args=None):
    rclpy.init(args=args)
    try:
        node = BagReplay()
    except (FileNotFoundError, ValueError) as exc:
        print(f"bag_replay: {exc}", file=sys.stderr)
        return 1
    try:
        node.play()
    except KeyboardInterrupt:
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0
