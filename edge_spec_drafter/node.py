"""edge_spec_drafter node: camera + instruction -> draft VLM + cloud verifier -> DecodedAction.

Subscribes
  camera/image_raw             sensor_msgs/Image (bgr8/rgb8/mono8/...; sensor-data QoS), or
  camera/image_raw/compressed  sensor_msgs/CompressedImage when use_compressed is true
  instruction                  std_msgs/String   what to do ("go to the red ball"); a new one restarts
  action_status                std_msgs/String   controller JSON status: decide when the last action ends
  spec/to_edge/*               protocol replies from cloud_verifier_bridge
Publishes
  decoded_action               edge_cloud_vlm_msgs/DecodedAction (valid only if it parsed)
  spec_stats                   edge_cloud_vlm_msgs/SpecStats (rolling window)
  spec/to_cloud/*              protocol requests to cloud_verifier_bridge
  ~/annotated_image            sensor_msgs/Image, camera with action / acceptance / latency
  ~/planned_motion             visualization_msgs/MarkerArray
  /diagnostics                 diagnostic_msgs/DiagnosticArray

A decision runs when the controller reports the previous action finished (decide_on_completion)
and/or every decision_period_s, on the newest frame no older than max_frame_age_s. After a
``done`` action the node waits for a new instruction. Decoding errors (cloud unreachable, refused
session) publish an invalid DecodedAction so the controller stops the robot.
"""

from __future__ import annotations

import json
import threading
import time

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.node import Node
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import String
from visualization_msgs.msg import MarkerArray

from edge_cloud_vlm_msgs.msg import DecisionStats as DecisionStatsMsg
from edge_cloud_vlm_msgs.msg import DecodedAction, SpecStats
from go2_vlm_control.action_language import ActionLimits, ActionRejected, parse_action
from specdec.protocol import DecodingMode
from specdec_ros.node_runtime import run_node
from specdec_ros.images import ImageConversionError, image_to_rgb, rgb_to_image
from specdec_ros.qos import COMMAND_QOS, SENSOR_QOS
from specdec_ros.ros_transport import RosEdgeTransport

from .monitoring import RollingStats, annotate, planned_motion_markers

MODES = {m.name.lower(): m for m in DecodingMode}
FINISHED_STATES = ("completed", "stopped", "idle", "rejected")


class EdgeSpecDrafter(Node):
    def __init__(self, **node_kwargs):
        super().__init__("edge_spec_drafter", **node_kwargs)
        p = lambda name, default: self.declare_parameter(name, default).value  # noqa: E731
        mode_name = p("mode", "speculative_early_exit")
        if mode_name not in MODES:
            raise ValueError(f"parameter mode must be one of {sorted(MODES)}, got {mode_name!r}")
        self.mode = MODES[mode_name]
        self.decision_period_s = p("decision_period_s", 0.0)
        self.decide_on_completion = p("decide_on_completion", True)
        self.max_frame_age_s = p("max_frame_age_s", 1.0)
        self.frame_id = p("base_frame", "base_link")
        self.instruction = p("instruction", "")
        self.limits = ActionLimits(max_forward_m=p("max_forward_m", 1.0), max_backward_m=p("max_backward_m", 0.5),
                                   max_strafe_m=p("max_strafe_m", 0.5), max_turn_deg=p("max_turn_deg", 90.0))
        threads = p("torch_threads", 0)
        import torch

        if threads:
            torch.set_num_threads(threads)
        from specdec.engine.drafter import EdgeDecoder
        from specdec.models.loading import load_model

        draft_path = p("draft_model", "")
        if not draft_path:
            raise ValueError("parameter draft_model (a model folder) is required")
        self.draft = load_model(draft_path, name="draft")
        self.transport = RosEdgeTransport(self)
        self.decoder = EdgeDecoder(
            self.draft, self.transport, robot_id=p("robot_id", "go2"), gamma=p("gamma", 4),
            max_new_tokens=p("max_new_tokens", 8), do_sample=p("do_sample", False),
            temperature=p("temperature", 1.0), top_k=p("top_k", 0), seed=p("seed", 0),
            timeout_s=p("cloud_timeout_s", 5.0), predraft=p("predraft", True),
            predraft_policy=p("predraft_policy", "hint"))

        self.rolling = RollingStats(p("stats_window", 50))
        self.decision_id = 0
        self.waiting_for_instruction = not self.instruction
        self.last_frame = None  # (monotonic time, msg)
        self.instruction_time = 0.0  # monotonic arrival of the current instruction
        self.last_status = {}
        self.trigger = threading.Event()
        self.stop_event = threading.Event()
        self.last_error = ""

        if p("use_compressed", False):
            self.create_subscription(CompressedImage, p("image_topic", "camera/image_raw/compressed"),
                                     self._on_frame, SENSOR_QOS)
        else:
            self.create_subscription(Image, p("image_topic", "camera/image_raw"), self._on_frame, SENSOR_QOS)
        self.create_subscription(String, "instruction", self._on_instruction, COMMAND_QOS)
        self.create_subscription(String, "action_status", self._on_status, COMMAND_QOS)
        self.action_pub = self.create_publisher(DecodedAction, "decoded_action", COMMAND_QOS)
        self.stats_pub = self.create_publisher(SpecStats, "spec_stats", COMMAND_QOS)
        self.image_pub = self.create_publisher(Image, "~/annotated_image", 1)
        self.marker_pub = self.create_publisher(MarkerArray, "~/planned_motion", 1)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        if self.decision_period_s > 0:
            self.create_timer(self.decision_period_s, self.trigger.set)
        self.create_timer(1.0, self._publish_diagnostics)
        self.worker = threading.Thread(target=self._decision_loop, name="decisions", daemon=True)
        self.worker.start()
        self.get_logger().info(f"mode {mode_name}, draft {draft_path}")
        if self.instruction:
            self.trigger.set()

    # -- inputs ------------------------------------------------------------------------------
    def _on_frame(self, msg):
        self.last_frame = (time.monotonic(), msg)

    def _on_instruction(self, msg: String):
        text = msg.data.strip()
        if not text:
            return
        self.instruction = text
        self.instruction_time = time.monotonic()
        self.waiting_for_instruction = False
        self.get_logger().info(f"instruction: {text!r}")
        self.trigger.set()

    def _on_status(self, msg: String):
        try:
            status = json.loads(msg.data)
        except ValueError:
            return
        self.last_status = status
        if (self.decide_on_completion and status.get("decision_id") == self.decision_id
                and status.get("state") in FINISHED_STATES and not status.get("estop")):
            self.trigger.set()

    # -- decisions ---------------------------------------------------------------------------
    def _decision_loop(self):
        while not self.stop_event.is_set():
            if not self.trigger.wait(0.1):
                continue
            self.trigger.clear()
            if self.waiting_for_instruction or not self.instruction:
                continue
            frame = self.last_frame
            # decide on a frame newer than the instruction: it is about the world as it is now
            if (frame is None or time.monotonic() - frame[0] > self.max_frame_age_s
                    or frame[0] < self.instruction_time):
                self.get_logger().warning("no fresh camera frame; not deciding", throttle_duration_sec=5.0)
                time.sleep(0.05)
                self.trigger.set()  # try again when a frame arrives
                continue
            try:
                rgb = image_to_rgb(frame[1])
            except ImageConversionError as exc:
                self.get_logger().error(f"camera frame refused: {exc}", throttle_duration_sec=5.0)
                time.sleep(0.05)
                self.trigger.set()
                continue
            self._decide(rgb, frame[1].header)

    def _decide(self, rgb, header):
        self.decision_id += 1
        instruction = self.instruction  # one value for the whole decision (a new one may arrive meanwhile)
        out = DecodedAction(decision_id=self.decision_id, instruction=instruction)
        out.header.stamp = header.stamp  # which frame this decision saw (replay tests match on it)
        out.header.frame_id = self.frame_id
        action, stats = None, None
        try:
            result = self.decoder.decode(instruction, rgb, self.mode)
            stats = result.stats
            out.session_id, out.text = result.session_id, result.text
            action = parse_action(result.text, self.limits)
            out.valid, out.action, out.value = True, action.verb, float(action.value)
        except ActionRejected as exc:
            out.reject_reason = f"unparsable action: {exc.reason}"
        except Exception as exc:  # cloud unreachable, refused session, model failure: robot stops
            out.reject_reason = f"decoding failed: {type(exc).__name__}: {exc}"
            self.last_error = out.reject_reason
        self.rolling.add(stats, error=stats is None)
        if stats is not None:
            out.stats = DecisionStatsMsg(**{k: type(getattr(DecisionStatsMsg(), k))(v)
                                            for k, v in stats.to_msg_fields().items()})
        if not out.valid:
            self.get_logger().warning(f"decision {self.decision_id} invalid: {out.reject_reason}")
        self.action_pub.publish(out)
        if out.valid and action.verb == "done":
            self.waiting_for_instruction = True
            self.get_logger().info("arrived (done); waiting for a new instruction")
        self._publish_monitoring(out, action, stats, rgb, header)

    # -- monitoring --------------------------------------------------------------------------
    def _publish_monitoring(self, out, action, stats, rgb, header):
        summary = self.rolling.fields()
        stats_msg = SpecStats(node_name=self.get_name(), window_s=0.0, **summary)
        stats_msg.header.stamp = self.get_clock().now().to_msg()
        stats_msg.last = out.stats
        self.stats_pub.publish(stats_msg)
        verdict = out.text if out.valid else f"REJECTED: {out.reject_reason[:40]}"
        lines = [f"{MODES_BY_VALUE[int(self.mode)]}: {verdict}"]
        if stats is not None:
            lines.append(f"{stats.latency_ms:.0f} ms  acc {stats.acceptance_rate:.2f}  "
                         f"hint {stats.hints_correct}/{stats.hints}  pre {stats.predraft_hits}/{stats.predrafts}")
        self.image_pub.publish(rgb_to_image(annotate(rgb, lines), header=header))
        self.marker_pub.publish(planned_motion_markers(action, verdict, self.frame_id, stats_msg.header.stamp))

    def _publish_diagnostics(self):
        summary = self.rolling.fields()
        status = DiagnosticStatus(name="edge_spec_drafter", hardware_id=MODES_BY_VALUE[int(self.mode)])
        status.level = DiagnosticStatus.WARN if summary["link_errors"] else DiagnosticStatus.OK
        status.message = self.last_error or "ok"
        values = {k: f"{v:.3f}" if isinstance(v, float) else str(v) for k, v in summary.items()}
        values.update(instruction=self.instruction, decision_id=str(self.decision_id),
                      bytes_sent=str(self.transport.bytes_sent), bytes_received=str(self.transport.bytes_received))
        status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        self.diag_pub.publish(array)

    def destroy_node(self):
        self.stop_event.set()
        super().destroy_node()


MODES_BY_VALUE = {int(m): name for name, m in MODES.items()}


def main(args=None):
    return run_node(EdgeSpecDrafter, "edge_spec_drafter", args, threads=2)


if __name__ == "__main__":
    raise SystemExit(main())
