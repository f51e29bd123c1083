"""ROS 2 node ``go2_sim``: a simulated Go2 speaking the real Go2 drivers' topics.

Subscribes (what go2_ros2_sdk and unitree_ros2 listen on)
  cmd_vel            geometry_msgs/Twist  body velocity; clamped to the real limits, dropped after
                                          cmd_timeout, all-zero Twists ignored (like go2_ros2_sdk)
  webrtc_req         go2_interfaces/WebRtcReq  go2_ros2_sdk's requests: StopMove, Move
  /api/sport/request unitree_api/Request  unitree_ros2's sport requests: StopMove, Move
  sim/reset          std_msgs/UInt32      new episode from this seed
Publishes
  odom               nav_msgs/Odometry    (odom -> base_link) at physics_rate_hz
  /tf, /tf_static    tf2_msgs/TFMessage   odom -> base_link, base_link -> front_camera (the
                                          frames go2_ros2_sdk publishes)
  camera/image_raw   sensor_msgs/Image    bgr8, the driver's QoS (BEST_EFFORT, depth 1)
  camera/camera_info sensor_msgs/CameraInfo  same QoS
  sim/episode        std_msgs/String      JSON: seed, instruction, target, objects (latched)
  sim/state          std_msgs/String      JSON: pose, distance/bearing to target, success
  <instruction_topic> std_msgs/String     the episode's instruction (latched; off by default)
  /diagnostics       diagnostic_msgs/DiagnosticArray  "go2_sim: robot" (WARN while colliding)

The driver message packages are required (on a development machine they are the stand-ins
built by scripts/setup.sh): a simulator that ignored stop requests would hide missing stops.
"""

from __future__ import annotations

import json
import math
import time

import numpy as np
from geometry_msgs.msg import TransformStamped, Twist
from nav_msgs.msg import Odometry
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import String, UInt32

from go2_vlm_control import sport_api
from go2_vlm_control.drivers import import_message
from specdec_ros.diagnostics import OK, WARN, Diagnostics, Report
from specdec_ros.node_runtime import Param, declare_parameters, run_node
from specdec_ros.qos import CAMERA_QOS, COMMAND_QOS, LATCHED_QOS, STATE_QOS

from .camera import CameraConfig
from .episode import EpisodeConfig, Go2Episode
from .world import WorldConfig

NODE_NAME = "go2_sim"

PARAMETERS = [
    Param("seed", 0, "first episode (room layout, target, start pose); sim/reset starts others"),
    Param("room_size", 6.0, "m, square room with walls"),
    Param("min_objects", 3, "fewest objects in a room"),
    Param("max_objects", 6, "most objects in a room"),
    Param("physics_rate_hz", 50.0, "physics, odom and /tf rate"),
    Param("camera_rate_hz", 10.0, "camera rate"),
    Param("state_rate_hz", 5.0, "sim/state rate"),
    Param("cmd_timeout", 0.5, "s; a Twist or Move older than this no longer drives (twist_mux)"),
    Param("response_tau", 0.1, "s; first-order lag of the body velocity"),
    Param("drop_zero_twist", True, "ignore all-zero Twists as go2_ros2_sdk does (stop: StopMove)"),
    Param("image_width", 160, "px (the real camera: 1280)"),
    Param("image_height", 120, "px (the real camera: 720)"),
    Param("hfov_deg", 90.0, "horizontal field of view"),
    Param("supersample", 2, "anti-aliasing rays per pixel per axis"),
    Param("noise_std", 3.0, "sensor noise (grey levels)"),
    Param("gain_jitter", 0.12, "per-frame brightness change"),
    Param("success_distance", 0.5, "m from the target's surface counted as arrived"),
    Param("frame_id", "front_camera", "camera frame (go2_ros2_sdk's name)"),
    Param("odom_frame", "odom", "odometry frame"),
    Param("base_frame", "base_link", "robot frame"),
    Param("publish_tf", True, "/tf odom -> base_link and /tf_static base_link -> camera"),
    Param("webrtc_request_topic", sport_api.WEBRTC_REQUEST_TOPIC,
          "go2_ros2_sdk requests (go2_interfaces/WebRtcReq)"),
    Param("sport_request_topic", sport_api.SPORT_REQUEST_TOPIC,
          "unitree_ros2 sport requests (unitree_api/Request)"),
    Param("instruction_topic", "", "publish each episode's instruction here (latched); empty: off"),
]


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

        self.odom_pub = self.create_publisher(Odometry, "odom", STATE_QOS)
        self.image_pub = self.create_publisher(Image, "camera/image_raw", CAMERA_QOS)
        self.info_pub = self.create_publisher(CameraInfo, "camera/camera_info", CAMERA_QOS)
        self.episode_pub = self.create_publisher(String, "sim/episode", LATCHED_QOS)
        self.state_pub = self.create_publisher(String, "sim/state", STATE_QOS)
        self.instruction_pub = None
        if p["instruction_topic"]:
            self.instruction_pub = self.create_publisher(String, p["instruction_topic"],
                                                         LATCHED_QOS)
        self.tf_pub = None
        if p["publish_tf"]:
            tf_type = import_message("tf2_msgs.msg", "TFMessage", "go2_sim", "ROS 2's tf2_msgs")
            self.tf_pub = self.create_publisher(tf_type, "/tf", STATE_QOS)
            self.static_tf_pub = self.create_publisher(tf_type, "/tf_static", LATCHED_QOS)
            self.static_tf_pub.publish(tf_type(transforms=[self._camera_transform()]))
        self.create_subscription(Twist, "cmd_vel", self._on_cmd, COMMAND_QOS)
        self.create_subscription(UInt32, "sim/reset", self._on_reset, COMMAND_QOS)
        webrtc_type = import_message("go2_interfaces.msg", "WebRtcReq", "go2_sim",
                                     "go2_ros2_sdk's go2_interfaces")
        self.create_subscription(webrtc_type, p["webrtc_request_topic"],
                                 lambda m: self._on_sport_request(m.api_id, m.parameter,
                                                                  "webrtc_req"), COMMAND_QOS)
        request_type = import_message("unitree_api.msg", "Request", "go2_sim",
                                      "unitree_ros2's unitree_api")
        self.create_subscription(request_type, p["sport_request_topic"],
                                 lambda m: self._on_sport_request(m.header.identity.api_id,
                                                                  m.parameter, "sport_request"),
                                 COMMAND_QOS)
        self.twists_received = 0
        self.twists_dropped = 0
        self.last_stop_via = ""
        self.bad_requests = 0
        self.diagnostics = Diagnostics(self, hardware_id="simulated go2")
        self.diagnostics.add("robot", self._robot_report)
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

    def _on_reset(self, msg: UInt32) -> None:
        self.reset(int(msg.data))

    def _on_sport_request(self, api_id: int, parameter: str, via: str) -> None:
        """StopMove / Move from either driver interface, as the robot would take them."""
        if int(api_id) == sport_api.API_STOP_MOVE:
            self.env.stop()
            self.last_stop_via = via
        elif int(api_id) == sport_api.API_MOVE:
            try:
                self.env.world.set_cmd(*sport_api.decode_move(parameter))
            except ValueError as exc:
                self.bad_requests += 1
                self.get_logger().warning(str(exc), throttle_duration_sec=5.0)

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
        if self.tf_pub is not None:
            tf = TransformStamped(header=msg.header, child_frame_id=msg.child_frame_id)
            tf.transform.translation.x = msg.pose.pose.position.x
            tf.transform.translation.y = msg.pose.pose.position.y
            tf.transform.rotation = msg.pose.pose.orientation
            self.tf_pub.publish(self.tf_pub.msg_type(transforms=[tf]))

    def _camera_transform(self) -> TransformStamped:
        """base_link -> camera frame, where the simulated camera is mounted."""
        cam = self.env.camera.cfg
        tf = TransformStamped(child_frame_id=self.p["frame_id"])
        tf.header.frame_id = self.p["base_frame"]
        tf.header.stamp = self.get_clock().now().to_msg()
        tf.transform.translation.x = cam.mount_forward
        tf.transform.translation.z = cam.mount_height
        tf.transform.rotation.w = 1.0
        return tf

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
            "twists_dropped": self.twists_dropped, "last_stop_via": self.last_stop_via})))

    def _robot_report(self) -> Report:
        w = self.env.world
        values = {"seed": self.env.seed, "instruction": self.env.instruction,
                  "x_m": w.x, "y_m": w.y, "yaw_deg": math.degrees(w.yaw),
                  "target_distance_m": self.env.surface_distance(), "success": self.env.success(),
                  "stops": w.stops, "last_stop_via": self.last_stop_via,
                  "twists_dropped": self.twists_dropped, "bad_requests": self.bad_requests}
        if w.collided:
            return Report(WARN, "in collision: pressing against a wall or an object", values)
        return Report(OK, "reached the target" if values["success"] else "ok", values)


def main(args=None) -> int:
    return run_node(SimNode, NODE_NAME, args)


if __name__ == "__main__":
    main()
