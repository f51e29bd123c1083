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
sensor_reliability), replayed reliable, which best-effort subscribers also receive. Latched inputs
(``latched_topics``: the instruction, e-stop) are replayed transient local, as published live.

A bag that cannot be read (missing or bad metadata.yaml, a truncated mcap, a damaged sqlite3
file, a message that does not deserialise) is a :class:`BagError` naming the bag and the fault,
and the tools exit with that one line instead of a traceback.
"""

from __future__ import annotations

import importlib
import os
import sys
import time
from typing import Dict

import rclpy
from rclpy.node import Node
from rclpy.serialization import deserialize_message, serialize_message

from specdec_ros.node_runtime import Param, declare_parameters, run_node
from specdec_ros.qos import COMMAND_QOS, LATCHED_QOS, SENSOR_QOS

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
        try:
            self.writer = Writer(path, version=9, storage_plugin=plugin)
            self.writer.open()
        except Exception as exc:  # the folder exists, no permission, ...
            raise BagError(f"{path}: cannot create the bag ({type(exc).__name__}: {exc})") from None
        self.connections: Dict[str, object] = {}
        self.count = 0

    def write(self, topic: str, type_name: str, msg, stamp_ns: int):
        if topic not in self.connections:
            self.connections[topic] = self.writer.add_connection(topic, type_name, typestore=self.store)
        self.writer.write(self.connections[topic], stamp_ns, serialize_message(msg))
        self.count += 1

    def close(self):
        self.writer.close()


class BagError(ValueError):
    """A bag that cannot be read or written (the message names the bag and the fault)."""


def read_bag(path: str, topics=None):
    """Yield (topic, type name, receive time ns, rclpy message) in bag order; BagError if the bag
    (or any message in it) cannot be read."""
    from rosbags.rosbag2 import Reader

    if not os.path.isdir(path):
        raise BagError(f"{path}: not a rosbag2 folder")
    try:
        with Reader(path) as reader:
            connections = [c for c in reader.connections if topics is None or c.topic in topics]
            for connection, stamp, raw in reader.messages(connections=connections):
                message = deserialize_message(raw, ros_type(connection.msgtype))
                yield connection.topic, connection.msgtype, stamp, message
    except BagError:
        raise
    except Exception as exc:  # rosbags, sqlite3, mcap and CDR errors alike: which bag, what fault
        first_line = (str(exc).strip().splitlines() or [""])[0]
        raise BagError(f"{path}: unreadable bag ({type(exc).__name__}: {first_line})") from None


def sensor_profile(reliability: str):
    """Sensor-data QoS with the given reliability ("best_effort" or "reliable")."""
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    policies = {"best_effort": ReliabilityPolicy.BEST_EFFORT, "reliable": ReliabilityPolicy.RELIABLE}
    if reliability not in policies:
        raise ValueError(f"sensor_reliability must be one of {sorted(policies)}, got {reliability!r}")
    return QoSProfile(history=SENSOR_QOS.history, depth=max(SENSOR_QOS.depth, 10), reliability=policies[reliability],
                      durability=SENSOR_QOS.durability)


RECORDER_PARAMETERS = [
    Param("output", "recording", "bag folder to create (must not exist)"),
    Param("storage", "sqlite3", "sqlite3 | mcap"),
    Param("topics", ["/camera/image_raw"], "topics to record"),
    Param("types", ["sensor_msgs/msg/Image"], "their message types, in the same order"),
    Param("max_messages", 0, "> 0: stop after this many messages"),
    # best effort by default: a robot's camera driver publishes best effort and a reliable
    # subscriber would not match it; "reliable" records a reliable publisher (bag_replay) losslessly
    Param("sensor_reliability", "best_effort", "QoS reliability for sensor topics: best_effort | reliable"),
]

REPLAY_PARAMETERS = [
    Param("bag", "", "rosbag2 folder to play"),
    Param("rate", 1.0, "playback speed factor"),
    Param("loop", False, "play again from the start at the end"),
    Param("start_delay_s", 1.0, "wait before the first message"),
    Param("restamp", False, "set header stamps to the replay time"),
    Param("wait_subscribers", 0, "> 0: first wait (up to 30 s) for this many subscribers on every topic"),
    # reliable by default, like `ros2 bag play`: best-effort (sensor-data) subscribers also get
    # it, and a reliable recorder gets every message even on a loaded machine
    Param("sensor_reliability", "reliable", "QoS reliability for sensor topics: best_effort | reliable"),
    # latched inputs: the edge subscribes to the instruction transient local, which a volatile
    # publisher cannot reach
    Param("latched_topics", ["/instruction", "/e_stop"], "topics replayed transient local (latched)"),
]


class BagRecorder(Node):
    def __init__(self):
        super().__init__("bag_recorder")
        p = declare_parameters(self, RECORDER_PARAMETERS)
        if len(p["topics"]) != len(p["types"]):
            raise ValueError("parameters topics and types must have the same length")
        self.max_messages = p["max_messages"]
        sensor_qos = sensor_profile(p["sensor_reliability"])
        self.writer = BagWriter(p["output"], p["storage"])
        for topic, type_name in zip(p["topics"], p["types"]):
            qos = sensor_qos if type_name in SENSOR_TYPES else COMMAND_QOS
            self.create_subscription(ros_type(type_name), topic,
                                     lambda msg, t=topic, n=type_name: self._on_message(t, n, msg), qos)
        self.get_logger().info(f"recording {len(p['topics'])} topics to {p['output']}")

    def _on_message(self, topic, type_name, msg):
        self.writer.write(topic, type_name, msg, self.get_clock().now().nanoseconds)
        if self.max_messages and self.writer.count >= self.max_messages:
            raise SystemExit(0)

    def destroy_node(self):
        self.writer.close()
        super().destroy_node()


class BagReplay(Node):
    def __init__(self):
        super().__init__("bag_replay")
        p = declare_parameters(self, REPLAY_PARAMETERS)
        self.path, self.rate, self.loop, self.restamp = p["bag"], p["rate"], p["loop"], p["restamp"]
        self.start_delay_s, self.wait_subscribers = p["start_delay_s"], p["wait_subscribers"]
        if not self.path:
            raise BagError("parameter bag must name a rosbag2 folder")
        sensor_qos = sensor_profile(p["sensor_reliability"])
        latched = set(p["latched_topics"])
        self.messages = list(read_bag(self.path))
        if not self.messages:
            raise BagError(f"{self.path}: no messages")
        self.publishers_ = {}
        for topic, type_name, _, _ in self.messages:
            if topic not in self.publishers_:
                qos = sensor_qos if type_name in SENSOR_TYPES else LATCHED_QOS if topic in latched else COMMAND_QOS
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
        # a reliable message still unacknowledged when the node goes away is lost (it was the last
        # one of each topic, under load): wait, bounded, until every subscriber has them all
        from rclpy.duration import Duration

        for pub in self.publishers_.values():
            pub.wait_for_all_acked(Duration(seconds=5))


def record_main(args=None):
    return run_node(BagRecorder, "bag_recorder", args)


def replay_main(args=None):
    rclpy.init(args=args)
    try:
        node = BagReplay()
    except Exception as exc:  # unreadable bag, bad parameter: one line, no traceback
        print(f"bag_replay: {exc}", file=sys.stderr)
        rclpy.try_shutdown()
        return 1
    try:
        node.play()
    except KeyboardInterrupt:
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0
