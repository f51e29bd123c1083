"""ROS 2 node ``go2_sim``: a simulated Go2 speaking the go2_ros2_sdk driver's topics.

Subscribes
  cmd_vel            geometry_msgs/Twist  body velocity; clamped to the real limits, dropped after
                                          cmd_timeout, all-zero Twists ignored (like the driver)
  stop_move          std_msgs/Empty       explicit stop
  sim/reset          std_msgs/UInt32      new episode from this seed
  /api/sport/request unitree_api/Request  Move / StopMove (only when unitree_api is installed)
Publishes
  odom               nav_msgs/Odometry    (odom -> base_link) at physics_rate_hz
  camera/image_raw   sensor_msgs/Image    bgr8, sensor-data QoS (BEST_EFFORT, depth 1)
  camera/camera_info sensor_msgs/CameraInfo  same QoS
  sim/episode        std_msgs/String      JSON: seed, instruction, target, objects (latched)
  sim/state          std_msgs/String      JSON: pose, distance/bearing to target, success
  <instruction_topic> std_msgs/String     the episode's instruction (latched; off by default)
"""

from __future__ import annotations

import json
import math
import time

import numpy as np
from geometry_msgs.msg import Twist
from nav_msgs.msg import Odometry
from rclpy.node import Node
from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy)
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Empty, String, UInt32

from specdec_ros.node_runtime import declare_parameters, run_node

from .camera import CameraConfig
from .episode import EpisodeConfig, Go2Episode
from .world import WorldConfig

NODE_NAME = "go2_sim"

PARAMETERS = {
    "seed": 0,
    "room_size": 6.0,
    "min_objects": 3,
    "max_objects": 6,
    "physics_rate_hz": 50.0,
    "camera_rate_hz": 10.0,
    "state_rate_hz": 5.0,
    "cmd_timeout": 0.5,
    "response_tau": 0.1,
    "drop_zero_twist": True,
    "image_width": 160,
    "image_height": 120,
    "hfov_deg": 90.0,
    "supersample": 2,
    "noise_std": 3.0,
    "gain_jitter": 0.12,
    "success_distance": 0.5,
    "frame_id": "camera_link",
    "odom_frame": "odom",
    "base_frame": "base_link",
    "sport_request_topic": "/api/sport/request",
    "instruction_topic": "",         # e.g. "instruction": publish each episode's instruction
}

# sensor-data QoS as the Go2 driver uses for images: BEST_EFFORT, depth 1
IMAGE_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                       reliability=ReliabilityPolicy.BEST_EFFORT,
                       durability=DurabilityPolicy.VOLATILE)


def _reliable(depth=10, latched=False) -> QoSProfile:
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                      reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL if latched
                      else DurabilityPolicy.VOLATILE)


def image_msg(img: np.ndarray, stamp, frame_id: str) -> Image:
    msg = Image()
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.height, msg.width = int(img.shape[0]), int(img.shape[1])
    msg.encoding = "bgr8"
    msg.is_bigendian = 0
    msg.step = int(img.shape[1] * 3)
    msg.data = np.ascontiguousarray(img, dtype=np.uint8).tobytes()
    return msg


def image_from_msg(msg: Image) -> np.ndarray:
    """bgr8/rgb8 Image -> (H, W, 3) BGR uint8 (no cv_bridge needed)."""
    arr = np.frombuffer(bytes(msg.data), dtype=np.uint8).reshape(msg.height, msg.step)
    img = arr[:, :msg.width * 3].reshape(msg.height, msg.width, 3)
    return img[:, :, ::-1].copy() if msg.encoding == "rgb8" else img.copy()


def camera_info_msg(cfg: CameraConfig, stamp, frame_id: str) -> CameraInfo:
    msg = CameraInfo()
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.width, msg.height = cfg.width, cfg.height
    msg.distortion_model = "plumb_bob"
    msg.d = [0.0] * 5
    msg.k = list(cfg.k_matrix())
    msg.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    msg.p = list(cfg.p_matrix())
    return msg


class SimNode(Node):
    def __init__(self, **kwargs):
        super().__init__(NODE_NAME, **kwargs)
        p = self.p = declare_parameters(self, PARAMETERS)
        wcfg = WorldConfig(room_size=float(p["room_size"]), min_objects=int(p["min_objects"]),
                           max_objects=int(p["max_objects"]), cmd_timeout=float(p["cmd_timeout"]),
                           response_tau=float(p["response_tau"]),
                           drop_zero_twist=bool(p["drop_zero_twist"]))
        ccfg = CameraConfig(width=int(p["image_width"]), height=int(p["image_height"]),
                            hfov_deg=float(p["hfov_deg"]), supersample=int(p["supersample"]),
                            noise_std=float(p["noise_std"]), gain_jitter=float(p["gain_jitter"]))
        self.env = Go2Episode(wcfg, ccfg,
                              EpisodeConfig(success_distance=float(p["success_distance"])))
        self.dt = 1.0 / float(p["physics_rate_hz"])

        self.odom_pub = self.create_publisher(Odometry, "odom", _reliable())
        self.image_pub = self.create_publisher(Image, "camera/image_raw", IMAGE_QOS)
        self.info_pub = self.create_publisher(CameraInfo, "camera/camera_info", IMAGE_QOS)
        self.episode_pub = self.create_publisher(String, "sim/episode", _reliable(1, latched=True))
        self.state_pub = self.create_publisher(String, "sim/state", _reliable())
        self.instruction_pub = None
        if p["instruction_topic"]:
            self.instruction_pub = self.create_publisher(String, p["instruction_topic"],
                                                         _reliable(1, latched=True))
        self.create_subscription(Twist, "cmd_vel", self._on_cmd, _reliable())
        self.create_subscription(Empty, "stop_move", self._on_stop, _reliable())
        self.create_subscription(UInt32, "sim/reset", self._on_reset, _reliable())
        self.twists_received = 0
        self.twists_dropped = 0
        try:
            from unitree_api.msg import Request  # type: ignore
            self.create_subscription(Request, p["sport_request_topic"], self._on_request,
                                     _reliable())
        except Exception:
            pass
        self.reset(int(p["seed"]))
        self._last_physics = time.monotonic()
        self.create_timer(self.dt, self._on_physics)
        self.create_timer(1.0 / float(p["camera_rate_hz"]), self._on_camera)
        self.create_timer(1.0 / float(p["state_rate_hz"]), self._publish_state)
        self.get_logger().info(f"{NODE_NAME}: seed {p['seed']}, '{self.env.instruction}', "
                               f"camera {ccfg.width}x{ccfg.height}")

    def reset(self, seed: int) -> None:
        self.env.reset(seed)
        info = self.env.info()
        self.episode_pub.publish(String(data=json.dumps({
            "seed": seed, "instruction": self.env.instruction, "target": info["target"],
            "objects": info["world"]["objects"], "pose": info["world"]["pose"],
            "room_size": info["world"]["room_size"],
            # camera frames stamped before this belong to the previous episode
            "start_stamp": self.get_clock().now().nanoseconds * 1e-9})))
        if self.instruction_pub is not None:
            self.instruction_pub.publish(String(data=self.env.instruction))

    # -- inputs -----------------------------------------------------------------------------
    def _on_cmd(self, msg: Twist) -> None:
        self.twists_received += 1
        if not self.env.world.set_cmd(msg.linear.x, msg.linear.y, msg.angular.z):
            self.twists_dropped += 1

    def _on_stop(self, _msg: Empty) -> None:
        self.env.stop()

    def _on_reset(self, msg: UInt32) -> None:
        self.reset(int(msg.data))

    def _on_request(self, msg) -> None:
        api_id = int(msg.header.identity.api_id)
        if api_id == 1003:  # StopMove
            self.env.stop()
        elif api_id == 1008:  # Move
            try:
                v = json.loads(msg.parameter)
                self.env.world.set_cmd(float(v["x"]), float(v["y"]), float(v["z"]))
            except (ValueError, KeyError, TypeError):
                self.get_logger().warning(f"bad Move parameter: {msg.parameter!r}")

    # -- outputs ----------------------------------------------------------------------------
    def _on_physics(self) -> None:
        # integrate the wall-clock time since the last tick (timers slip under load), in
        # sub-steps of at most one nominal period
        now = time.monotonic()
        elapsed = min(0.25, max(0.0, now - self._last_physics))
        self._last_physics = now
        while elapsed > 1e-6:
            step = min(self.dt, elapsed)
            self.env.step(None, step)
            elapsed -= step
        w = self.env.world
        msg = Odometry()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.header.frame_id = self.p["odom_frame"]
        msg.child_frame_id = self.p["base_frame"]
        msg.pose.pose.position.x, msg.pose.pose.position.y = w.x, w.y
        msg.pose.pose.orientation.z = math.sin(w.yaw / 2.0)
        msg.pose.pose.orientation.w = math.cos(w.yaw / 2.0)
        msg.twist.twist.linear.x, msg.twist.twist.linear.y = float(w.v[0]), float(w.v[1])
        msg.twist.twist.angular.z = float(w.v[2])
        self.odom_pub.publish(msg)

    def _on_camera(self) -> None:
        stamp = self.get_clock().now().to_msg()
        img = self.env.render()
        self.image_pub.publish(image_msg(img, stamp, self.p["frame_id"]))
        self.info_pub.publish(camera_info_msg(self.env.camera.cfg, stamp, self.p["frame_id"]))

    def _publish_state(self) -> None:
        w = self.env.world
        self.state_pub.publish(String(data=json.dumps({
            "t": w.t, "pose": list(w.pose), "velocity": [float(v) for v in w.v],
            "distance": self.env.surface_distance(),
            "bearing_deg": math.degrees(self.env.bearing()), "success": self.env.success(),
            "collided": w.collided, "stops": w.stops, "twists_received": self.twists_received,
            "twists_dropped": self.twists_dropped})))


def main(args=None) -> int:
    return run_node(SimNode, NODE_NAME, args)


if __name__ == "__main__":
    main()
