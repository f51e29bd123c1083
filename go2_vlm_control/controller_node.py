"""ROS 2 node ``go2_vlm_control``: decoded VLM actions -> safe Go2 locomotion commands.

Subscribes
  decoded_action   edge_cloud_vlm_msgs/DecodedAction  decisions (moves only on valid + newer +
                                     stamped within tolerance; degraded ones at reduced speed)
  <text_topic>     std_msgs/String   raw action text, one decision per message (off by default)
  e_stop           std_msgs/Bool     true: stop at once and hold; false: release (to idle)
  odom             nav_msgs/Odometry progress tracking and the path (sensor-data QoS)
Publishes (the driver's topics: see go2_vlm_control.drivers and README "Drivers")
  cmd_vel          geometry_msgs/Twist  drivers go2_ros2_sdk, twist_only: at control_rate_hz,
                                        clamped to the limits in effect
  webrtc_req       go2_interfaces/WebRtcReq  driver go2_ros2_sdk: StopMove on every stop
  /api/sport/request  unitree_api/Request    driver unitree_sport: Move each period, StopMove
  action_status    edge_cloud_vlm_msgs/ActionStatus  on every change and at status_rate_hz
  ~/path           nav_msgs/Path        where the robot went (odom frame), since the instruction
  /diagnostics     diagnostic_msgs/DiagnosticArray  "go2_vlm_control: safety" (e-stop,
                   deadman, last stop cause, degraded) and "go2_vlm_control: driver"

Every stop (e-stop, deadman, invalid or badly stamped decision, stop/done, stall, shutdown)
goes out through the driver at once, in the callback that caused it, or at the latest on the
next control tick (deadman).
"""

from __future__ import annotations

import collections
import math
import signal
import sys
import time

import rclpy
import rclpy.executors
from geometry_msgs.msg import PoseStamped
from nav_msgs.msg import Odometry, Path
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions
from std_msgs.msg import Bool, String

from edge_cloud_vlm_msgs.msg import ActionStatus, DecodedAction
from specdec_ros.diagnostics import ERROR, OK, WARN, Diagnostics, Report
from specdec_ros.node_runtime import Param, build_dataclass, dataclass_params, declare_parameters
from specdec_ros.qos import COMMAND_QOS, LATCHED_QOS, SENSOR_QOS, STATE_QOS

from . import sport_api
from .action_language import ActionLimits
from .controller import EXECUTING, ControllerConfig, ControllerCore, Decision
from .drivers import make_driver
from .motion import MotionLimits, Pose2D, clamp_velocity

NODE_NAME = "go2_vlm_control"
PATH_MAX_POSES = 2000
PATH_STEP_M = 0.05
PATH_STEP_RAD = math.radians(5.0)

PARAMETERS = [
    Param("driver", "go2_ros2_sdk", "go2_ros2_sdk | unitree_sport | twist_only (README Drivers)"),
    Param("control_rate_hz", 20.0, "command rate; stops go out within one period"),
    Param("status_rate_hz", 5.0, "action_status and path rate (status also on every change)"),
    *dataclass_params(MotionLimits, {
        "max_vx": "m/s, forward and backward", "max_vy": "m/s, sideways",
        "max_wz": "rad/s", "max_ax": "m/s^2", "max_ay": "m/s^2", "max_aw": "rad/s^2"}),
    *dataclass_params(ActionLimits, {
        "max_forward_m": "largest forward step (larger: clamped, or refused if strict_range)",
        "max_backward_m": "largest backward step", "max_strafe_m": "largest sideways step",
        "max_turn_deg": "largest turn", "strict_range": "refuse instead of clamp"}),
    *dataclass_params(ControllerConfig, {
        "deadman_timeout": "s without a fresh valid decision while moving -> stop",
        "max_action_age": "s; a decision stamped longer ago stops the robot (0: off)",
        "max_clock_skew": "s; a decision stamped further in the future stops the robot",
        "degraded_speed_scale": "degraded decisions (cloud lost) run at max speeds x this",
        "odom_timeout": "s; older odometry is not used for progress",
        "use_odom": "progress from odometry (else from the commanded velocity)"}),
    Param("publish_idle_twist", True, "zero Twists at the control rate when idle (Twist drivers)"),
    Param("estop_repeat_period", 0.5, "s between repeated stops while e-stopped"),
    Param("action_topic", "decoded_action", "decisions (edge_cloud_vlm_msgs/DecodedAction)"),
    Param("text_topic", "", "raw action text input (std_msgs/String); empty: off"),
    Param("cmd_vel_topic", "cmd_vel", "Twist output (go2_ros2_sdk, twist_only)"),
    Param("webrtc_request_topic", sport_api.WEBRTC_REQUEST_TOPIC,
          "go2_ros2_sdk driver's request input (go2_interfaces/WebRtcReq)"),
    Param("sport_request_topic", sport_api.SPORT_REQUEST_TOPIC,
          "unitree_ros2 sport API (unitree_api/Request)"),
    Param("estop_topic", "e_stop", "std_msgs/Bool: true stops and holds, false releases"),
    Param("status_topic", "action_status", "edge_cloud_vlm_msgs/ActionStatus output"),
    Param("odom_topic", "odom", "nav_msgs/Odometry input"),
]


def decision_from_msg(msg) -> Decision:
    """edge_cloud_vlm_msgs/DecodedAction -> Decision."""
    stamp = float(msg.header.stamp.sec) + float(msg.header.stamp.nanosec) * 1e-9
    return Decision(text=str(msg.text), valid=bool(msg.valid), reject_reason=str(msg.reject_reason),
                    decision_id=int(msg.decision_id), stamp=stamp, session_id=str(msg.session_id),
                    action=str(msg.action), value=float(msg.value),
                    instruction=str(msg.instruction), degraded=bool(msg.degraded))


def yaw_from_quaternion(q) -> float:
    return math.atan2(2.0 * (q.w * q.z + q.x * q.y), 1.0 - 2.0 * (q.y * q.y + q.z * q.z))


class ControllerNode(Node):
    def __init__(self, **kwargs):
        super().__init__(NODE_NAME, **kwargs)
        p = self.p = declare_parameters(self, PARAMETERS)
        self.motion_limits = build_dataclass(MotionLimits, {**p, "rate_hz": p["control_rate_hz"]})
        self.core = ControllerCore(build_dataclass(ControllerConfig, {
            **p, "action_limits": build_dataclass(ActionLimits, p),
            "motion_limits": self.motion_limits}))
        self.driver = make_driver(self, p)

        self.status_pub = self.create_publisher(ActionStatus, p["status_topic"], COMMAND_QOS)
        self.path_pub = self.create_publisher(Path, "~/path", STATE_QOS)
        self.path = collections.deque(maxlen=PATH_MAX_POSES)
        self.path_frame = "odom"
        self.instruction = ""
        self.create_subscription(DecodedAction, p["action_topic"], self._on_action, COMMAND_QOS)
        self._text_id = 0
        if p["text_topic"]:
            self.create_subscription(String, p["text_topic"], self._on_text, COMMAND_QOS)
        # e-stop: a latched subscription gets the state a latched publisher set before this node
        # started; a volatile one still hears any publisher (`ros2 topic pub` included) - an
        # e-stop must never be missed for a QoS mismatch
        self.create_subscription(Bool, p["estop_topic"], self._on_estop, LATCHED_QOS)
        self.create_subscription(Bool, p["estop_topic"], self._on_estop, COMMAND_QOS)
        self.create_subscription(Odometry, p["odom_topic"], self._on_odom, SENSOR_QOS)

        self.diagnostics = Diagnostics(self, hardware_id=f"go2 via {self.driver.name}")
        self.diagnostics.add("safety", self._safety_report)
        self.diagnostics.add("driver", self._driver_report)

        self._last_stop_sent = -math.inf
        self.create_timer(1.0 / float(p["control_rate_hz"]), self._on_tick)
        self.create_timer(1.0 / max(0.1, float(p["status_rate_hz"])), self._on_status_timer)
        self.get_logger().info(
            f"{NODE_NAME}: driver {self.driver.name}, rate {p['control_rate_hz']} Hz, limits vx "
            f"{p['max_vx']} vy {p['max_vy']} wz {p['max_wz']} (degraded x"
            f"{p['degraded_speed_scale']}), deadman {p['deadman_timeout']} s")

    # -- inputs -----------------------------------------------------------------------------
    def _wall_now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _on_action(self, msg) -> None:
        d = decision_from_msg(msg)
        if d.instruction and d.instruction != self.instruction:
            self.instruction = d.instruction
            self.path.clear()  # the path shows the current instruction's trip
        self.core.on_decision(d, time.monotonic(), self._wall_now())
        self._flush()

    def _on_text(self, msg: String) -> None:
        self._text_id += 1
        d = Decision(text=msg.data, valid=True, decision_id=self._text_id)
        self.core.on_decision(d, time.monotonic(), self._wall_now())
        self._flush()

    def _on_estop(self, msg: Bool) -> None:
        self.core.on_estop(bool(msg.data), time.monotonic())
        self._flush()

    def _on_odom(self, msg: Odometry) -> None:
        pos, q = msg.pose.pose.position, msg.pose.pose.orientation
        pose = Pose2D(pos.x, pos.y, yaw_from_quaternion(q))
        self.core.on_odom(pose, time.monotonic())
        self._extend_path(msg, pose)

    def _extend_path(self, msg: Odometry, pose: Pose2D) -> None:
        self.path_frame = msg.header.frame_id or self.path_frame
        if self.path:
            last = self.path[-1]
            if (math.hypot(pose.x - last[1].x, pose.y - last[1].y) < PATH_STEP_M
                    and abs(pose.yaw - last[1].yaw) < PATH_STEP_RAD):
                return
        stamped = PoseStamped()
        stamped.header = msg.header
        stamped.pose = msg.pose.pose
        self.path.append((stamped, pose))

    # -- outputs ----------------------------------------------------------------------------
    def _on_tick(self) -> None:
        now = time.monotonic()
        v = self.core.tick(now)
        if self.core.estop and now - self._last_stop_sent >= float(self.p["estop_repeat_period"]):
            self.core.repeat_stop()
        if self._flush():
            return
        if self.core.state == EXECUTING:
            self.driver.move(clamp_velocity(v, self.core.motion_limits))  # last line of defence
        else:
            self.driver.idle()

    def _flush(self) -> bool:
        """Send the stop and status the core asks for; True when a stop was sent."""
        stopped = self.core.take_stop()
        if stopped:
            self.send_stop()
        if self.core.take_status_changed():
            self._publish_status()
            self.diagnostics.publish()
        return stopped

    def send_stop(self) -> None:
        """The driver's explicit stop (see go2_vlm_control.drivers)."""
        self._last_stop_sent = time.monotonic()
        self.driver.stop()

    def shutdown_stop(self) -> None:
        """Last words: stop the robot and say why."""
        self.core.shutdown()
        self._flush()

    def _on_status_timer(self) -> None:
        self._publish_status()
        self._publish_path()

    def _publish_status(self) -> None:
        msg = ActionStatus(driver=self.driver.name, **self.core.status())
        msg.header.stamp = self.get_clock().now().to_msg()
        self.status_pub.publish(msg)

    def _publish_path(self) -> None:
        msg = Path(poses=[stamped for stamped, _ in self.path])
        msg.header.frame_id = self.path_frame
        msg.header.stamp = self.get_clock().now().to_msg()
        self.path_pub.publish(msg)

    # -- diagnostics ------------------------------------------------------------------------
    def _safety_report(self) -> Report:
        core = self.core
        st = core.status()
        values = {"state": st["state"], "estop": core.estop, "last_stop_cause": core.stop_cause,
                  "reason": core.reason, "degraded": core.degraded,
                  "deadman_timeout_s": core.cfg.deadman_timeout,
                  "decision_id": st["decision_id"], "accepted": core.accepted,
                  "rejected": core.rejected, "ignored": core.ignored}
        if core.estop:
            return Report(ERROR, "e_stop engaged: robot held", values)
        if core.fault:
            return Report(WARN, f"stopped by {core.stop_cause}: {core.reason}", values)
        if core.degraded:
            return Report(WARN, f"degraded: cloud lost, speed limits x"
                                f"{core.cfg.degraded_speed_scale:g}", values)
        return Report(OK, st["state"], values)

    def _driver_report(self) -> Report:
        pub = self.driver.stop_publisher
        values = {"driver": self.driver.name, "stop_topic": pub.topic_name,
                  "listeners": pub.get_subscription_count(), "moves_sent": self.driver.moves,
                  "stops_sent": self.driver.stops, "last_stop_cause": self.core.stop_cause}
        if values["listeners"] == 0:
            return Report(WARN, f"no driver listening on {pub.topic_name}", values)
        return Report(OK, f"{self.driver.name} on {pub.topic_name}", values)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def main(args=None) -> int:
    # Own the signals so that the node can still send a stop after Ctrl-C / SIGTERM (with
    # rclpy's handler the context would already be shut down). SIGINT is set explicitly too: a
    # process started as a background job of a script inherits SIGINT ignored, and would then
    # miss a launcher's SIGINT and leave the robot to the deadman.
    rclpy.init(args=sys.argv if args is None else args,
               signal_handler_options=SignalHandlerOptions.NO)
    signal.signal(signal.SIGINT, _raise_interrupt)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    node = None
    code = 0
    try:
        node = ControllerNode()
        rclpy.spin(node)
    except (KeyboardInterrupt, rclpy.executors.ExternalShutdownException):
        pass
    except Exception as exc:  # bad parameter, missing driver package: one line, exit non-zero
        rclpy.logging.get_logger(NODE_NAME).fatal(f"{type(exc).__name__}: {exc}")
        code = 1
    finally:
        if node is not None:
            try:
                if rclpy.ok():
                    node.shutdown_stop()
                    time.sleep(0.1)  # let the reliable stop go out before the node goes
            except Exception as exc:
                node.get_logger().error(f"shutdown stop failed: {type(exc).__name__}: {exc}")
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return code


if __name__ == "__main__":
    sys.exit(main())
