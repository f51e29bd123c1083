"""ROS 2 node ``go2_vlm_control``: decoded VLM actions -> safe Go2 locomotion commands.

Subscribes
  decoded_action   edge_cloud_vlm_msgs/DecodedAction  decisions (moves only on valid + newer)
  <text_topic>     std_msgs/String   raw action text, one decision per message (off by default;
                                     used automatically when edge_cloud_vlm_msgs is missing)
  e_stop           std_msgs/Bool     true: stop at once and hold; false: release (to idle)
  odom             nav_msgs/Odometry progress tracking (sensor-data QoS)
Publishes
  cmd_vel          geometry_msgs/Twist  at control_rate_hz, clamped to the configured limits
  stop_move        std_msgs/Empty       explicit stop on every stop event (the Go2 driver drops
                                        all-zero Twists, so a zero Twist alone does not stop it)
  action_status    std_msgs/String      JSON status, on every change and at status_rate_hz
  /api/sport/request  unitree_api/Request  StopMove on stops (and Move when output_mode is
                                        sport_api/both), only when unitree_api is installed
"""

from __future__ import annotations

import json
import math
import signal
import sys
import time

import rclpy
import rclpy.executors
from geometry_msgs.msg import Twist
from nav_msgs.msg import Odometry
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.signals import SignalHandlerOptions
from std_msgs.msg import Bool, Empty, String

from specdec_ros.node_runtime import declare_parameters

from . import sport_api
from .action_language import ActionLimits
from .controller import ControllerConfig, ControllerCore, Decision
from .motion import MotionLimits, Pose2D, Velocity, clamp_velocity

NODE_NAME = "go2_vlm_control"


def load_decoded_action_type():
    """The one place that imports the project's message package; None when not built."""
    try:
        from edge_cloud_vlm_msgs.msg import DecodedAction  # type: ignore
    except Exception:
        return None
    return DecodedAction


def decision_from_msg(msg) -> Decision:
    """edge_cloud_vlm_msgs/DecodedAction -> Decision."""
    stamp = float(msg.header.stamp.sec) + float(msg.header.stamp.nanosec) * 1e-9
    return Decision(text=str(msg.text), valid=bool(msg.valid), reject_reason=str(msg.reject_reason),
                    decision_id=int(msg.decision_id), stamp=stamp, session_id=str(msg.session_id),
                    action=str(msg.action), value=float(msg.value),
                    instruction=str(msg.instruction))


def yaw_from_quaternion(q) -> float:
    return math.atan2(2.0 * (q.w * q.z + q.x * q.y), 1.0 - 2.0 * (q.y * q.y + q.z * q.z))


def _reliable(depth: int = 10) -> QoSProfile:
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                      reliability=ReliabilityPolicy.RELIABLE)


PARAMETERS = {
    "control_rate_hz": 20.0,
    "status_rate_hz": 5.0,
    "max_vx": 0.6, "max_vy": 0.4, "max_wz": 1.0,
    "max_ax": 0.8, "max_ay": 0.6, "max_aw": 1.5,
    "max_forward_m": 1.0, "max_backward_m": 0.5, "max_strafe_m": 0.5, "max_turn_deg": 90.0,
    "strict_range": False,
    "deadman_timeout": 3.5,
    "max_action_age": 30.0,          # s; older (header stamp) decisions stop the robot; 0: off
    "odom_timeout": 0.5,
    "use_odom": True,
    "publish_idle_twist": True,
    "output_mode": "twist",          # twist | sport_api | both
    "estop_repeat_period": 0.5,      # s between repeated stop commands while e-stopped
    "action_topic": "decoded_action",
    "text_topic": "",
    "cmd_vel_topic": "cmd_vel",
    "stop_topic": "stop_move",
    "estop_topic": "e_stop",
    "status_topic": "action_status",
    "odom_topic": "odom",
    "sport_request_topic": sport_api.SPORT_REQUEST_TOPIC,
}


class ControllerNode(Node):
    def __init__(self, **kwargs):
        super().__init__(NODE_NAME, **kwargs)
        p = self.p = declare_parameters(self, PARAMETERS)
        self.motion_limits = MotionLimits(
            max_vx=float(p["max_vx"]), max_vy=float(p["max_vy"]), max_wz=float(p["max_wz"]),
            max_ax=float(p["max_ax"]), max_ay=float(p["max_ay"]), max_aw=float(p["max_aw"]),
            rate_hz=float(p["control_rate_hz"]))
        action_limits = ActionLimits(
            max_forward_m=float(p["max_forward_m"]), max_backward_m=float(p["max_backward_m"]),
            max_strafe_m=float(p["max_strafe_m"]), max_turn_deg=float(p["max_turn_deg"]),
            strict_range=bool(p["strict_range"]))
        self.core = ControllerCore(ControllerConfig(
            action_limits=action_limits, motion_limits=self.motion_limits,
            deadman_timeout=float(p["deadman_timeout"]), max_action_age=float(p["max_action_age"]),
            odom_timeout=float(p["odom_timeout"]), use_odom=bool(p["use_odom"])))
        self.output_mode = str(p["output_mode"])
        if self.output_mode not in ("twist", "sport_api", "both"):
            raise ValueError(
                f"output_mode must be twist, sport_api or both, not {self.output_mode}")

        self.cmd_pub = self.create_publisher(Twist, p["cmd_vel_topic"], _reliable())
        self.stop_pub = self.create_publisher(Empty, p["stop_topic"], _reliable())
        self.status_pub = self.create_publisher(String, p["status_topic"], _reliable())
        self.request_type = sport_api.load_request_type()
        self.request_pub = None
        self._request_id = 0
        if self.request_type is not None:
            self.request_pub = self.create_publisher(self.request_type, p["sport_request_topic"],
                                                     _reliable())
        elif self.output_mode != "twist":
            self.get_logger().warning("unitree_api not installed: output_mode falls back to twist")
            self.output_mode = "twist"

        action_type = load_decoded_action_type()
        text_topic = str(p["text_topic"])
        if action_type is not None:
            self.create_subscription(action_type, p["action_topic"], self._on_action, _reliable())
        elif not text_topic:
            text_topic = str(p["action_topic"]) + "_text"
            self.get_logger().warning(
                f"edge_cloud_vlm_msgs not available: listening for raw text on '{text_topic}'")
        self._text_id = 0
        if text_topic:
            self.create_subscription(String, text_topic, self._on_text, _reliable())
        self.create_subscription(Bool, p["estop_topic"], self._on_estop, _reliable())
        self.create_subscription(Odometry, p["odom_topic"], self._on_odom, qos_profile_sensor_data)

        self._last_stop_sent = -math.inf
        self.create_timer(1.0 / float(p["control_rate_hz"]), self._on_tick)
        self.create_timer(1.0 / max(0.1, float(p["status_rate_hz"])), self._publish_status)
        self.get_logger().info(
            f"{NODE_NAME}: rate {p['control_rate_hz']} Hz, limits vx {p['max_vx']} vy {p['max_vy']}"
            f" wz {p['max_wz']}, deadman {p['deadman_timeout']} s, output {self.output_mode}, "
            f"unitree_api {'yes' if self.request_type else 'no'}")

    # -- inputs -----------------------------------------------------------------------------
    def _on_action(self, msg) -> None:
        self.core.on_decision(decision_from_msg(msg), time.monotonic(), time.time())
        self._flush()

    def _on_text(self, msg: String) -> None:
        self._text_id += 1
        d = Decision(text=msg.data, valid=True, decision_id=self._text_id)
        self.core.on_decision(d, time.monotonic(), time.time())
        self._flush()

    def _on_estop(self, msg: Bool) -> None:
        self.core.on_estop(bool(msg.data), time.monotonic())
        self._flush()

    def _on_odom(self, msg: Odometry) -> None:
        pos, q = msg.pose.pose.position, msg.pose.pose.orientation
        self.core.on_odom(Pose2D(pos.x, pos.y, yaw_from_quaternion(q)), time.monotonic())

    # -- outputs ----------------------------------------------------------------------------
    def _on_tick(self) -> None:
        now = time.monotonic()
        v = self.core.tick(now)
        if self.core.estop and now - self._last_stop_sent >= float(self.p["estop_repeat_period"]):
            self.core.repeat_stop()
        if self._flush(v):
            return
        if not v.is_zero() or self.p["publish_idle_twist"]:
            self._publish_velocity(v)

    def _flush(self, v: Velocity = Velocity()) -> bool:
        """Send the stop and status the core asks for; True when a stop was sent."""
        stopped = self.core.take_stop()
        if stopped:
            self.send_stop()
        if self.core.take_status_changed():
            self._publish_status()
        return stopped

    def send_stop(self) -> None:
        """Explicit stop: zero Twist, Empty on stop_move, and StopMove when unitree_api exists."""
        self._last_stop_sent = time.monotonic()
        self.cmd_pub.publish(Twist())
        self.stop_pub.publish(Empty())
        if self.request_pub is not None:
            self._publish_request(sport_api.stop_move_request())

    def _publish_velocity(self, v: Velocity) -> None:
        v = clamp_velocity(v, self.motion_limits)  # last line of defence
        if self.output_mode in ("twist", "both"):
            t = Twist()
            t.linear.x, t.linear.y, t.angular.z = v.vx, v.vy, v.wz
            self.cmd_pub.publish(t)
        if self.output_mode in ("sport_api", "both") and self.request_pub is not None:
            if v.is_zero():
                return  # a zero Move is not a stop; stops go through send_stop
            self._publish_request(sport_api.move_request(v.vx, v.vy, v.wz))

    def _publish_request(self, req: sport_api.SportRequest) -> None:
        self._request_id += 1
        self.request_pub.publish(sport_api.to_ros(req, self.request_type, self._request_id))

    def _publish_status(self) -> None:
        status = self.core.status()
        status["time"] = time.time()
        self.status_pub.publish(String(data=json.dumps(status, sort_keys=True)))


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def main(args=None) -> None:
    # Own the signals so that the node can still send a stop after Ctrl-C / SIGTERM (with
    # rclpy's handler the context would already be shut down).
    rclpy.init(args=sys.argv if args is None else args,
               signal_handler_options=SignalHandlerOptions.NO)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    node = None
    try:
        node = ControllerNode()
        rclpy.spin(node)
    except (KeyboardInterrupt, rclpy.executors.ExternalShutdownException):
        pass
    finally:
        if node is not None:
            try:
                if rclpy.ok():
                    node.send_stop()
                    time.sleep(0.1)  # let the reliable stop go out before the node goes
            except Exception:
                pass
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()


if __name__ == "__main__":
    main()
