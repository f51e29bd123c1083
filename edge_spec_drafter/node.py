"""edge_spec_drafter node: camera + instruction -> draft VLM + cloud verifier -> DecodedAction.

Subscribes
  camera/image_raw             sensor_msgs/Image (bgr8/rgb8/mono8/...; sensor-data QoS), or
  camera/image_raw/compressed  sensor_msgs/CompressedImage when use_compressed is true
  instruction                  std_msgs/String, latched (transient local): what to do ("go to the
                               red ball"); one published before this node started still arrives
  action_status                edge_cloud_vlm_msgs/ActionStatus: decide when the last action ends
                               (a stall stop fills a prompt template's {last_move} with "blocked";
                               the verbs and values it ran count a full circle for {turned})
  spec/to_edge/*               protocol replies from cloud_verifier_bridge
Publishes
  decoded_action               edge_cloud_vlm_msgs/DecodedAction (valid only if it parsed;
                               degraded when decided by the draft alone)
  spec_stats                   edge_cloud_vlm_msgs/SpecStats (rolling window)
  spec/to_cloud/*              protocol requests to cloud_verifier_bridge
  ~/annotated_image            sensor_msgs/Image, camera with action / acceptance / latency
  ~/planned_motion             visualization_msgs/MarkerArray
  /diagnostics                 diagnostic_msgs/DiagnosticArray

This node is a shell: :class:`~edge_spec_drafter.scheduling.DecisionScheduler` decides when
(and whether degraded), the specdec ``EdgeDecoder`` decodes, this file moves messages between
them and ROS. Decoding errors publish an invalid DecodedAction, so the controller stops the robot.
"""

from __future__ import annotations

import threading
import time

from rclpy.node import Node
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import String
from visualization_msgs.msg import MarkerArray

from edge_cloud_vlm_msgs.msg import ActionStatus, DecodedAction, SpecStats
from edge_cloud_vlm_msgs.msg import DecisionStats as DecisionStatsMsg
from go2_vlm_control.action_language import GRAMMAR_PATTERN, ActionLimits, ActionRejected, parse_action
from go2_vlm_control.controller import FINISHED_STATES
from specdec.models.prompting import apply_prompt_template, check_prompt_template, folder_prompt_template
from specdec.protocol import DecodingMode
from specdec_ros.diagnostics import ERROR, OK, WARN, Diagnostics, Report
from specdec_ros.images import ImageConversionError, image_to_rgb, rgb_to_image
from specdec_ros.node_runtime import Param, build_dataclass, dataclass_params, declare_parameters, run_node
from specdec_ros.qos import COMMAND_QOS, LATCHED_QOS, SENSOR_QOS
from specdec_ros.ros_transport import RosEdgeTransport

from .monitoring import RollingStats, annotate, planned_motion_markers
from .scheduling import DecisionScheduler, Job, LinkState, Outcome, SchedulerConfig, classify_failure

NODE_NAME = "edge_spec_drafter"
MODES = {m.name.lower(): m for m in DecodingMode}
MODES_BY_VALUE = {int(m): name for name, m in MODES.items()}
PROBE_PROMPT = "ping"  # a one-token cloud-only request: does the cloud answer again?

PARAMETERS = [
    Param("draft_model", "", "draft model: a folder, or a hub id in the local HF cache"),
    Param("device", "auto", "auto | cpu | cuda[:N]"),
    Param("dtype", "float32", "float32 | bfloat16 | float16"),
    Param("quantization", "none", "draft quantization: none | int8 | bf16 | 4bit (changes acceptance, never the output)"),
    Param("prompt_template", "", "prompt around the instruction, with {instruction} once, {last_move} and {turned} "
                                 "at most once ('' = the draft folder's prompt_template.txt, else the instruction)"),
    Param("mode", "speculative_early_exit", "speculative_early_exit | speculative | cloud_only | edge_only"),
    Param("gamma", 4, "draft tokens per verification block"),
    Param("max_new_tokens", 8, "longest decision in tokens (actions are a few tokens long)"),
    Param("do_sample", False, "sample instead of greedy (greedy: identical to the target's output)"),
    Param("temperature", 1.0, "sampling temperature"),
    Param("top_k", 0, "target top-k when sampling (0: full vocabulary)"),
    Param("seed", 0, "sampling seed"),
    Param("predraft", True, "pre-draft on early-exit hints"),
    Param("predraft_policy", "hint", "hint: the paper's (on the hint) | eager: from the moment a block is sent"),
    Param("hint_min_confidence", 0.0, "pre-draft only on hints whose exit gives the outcome they name at least "
                                      "this probability (0: every hint)"),
    Param("draft_length", "adaptive", "fixed: gamma tokens | confidence: stop below confidence_threshold | "
                                   "adaptive: the length with the most expected tokens per second"),
    Param("confidence_threshold", 0.4, "draft_length confidence: stop after a token below this probability"),
    Param("alternatives", 1, "greedy: the draft's next-best tokens per block position, verified as branches "
                             "of the same pass (a hit commits one token more; 0: none)"),
    Param("merge_first_block", False, "the cloud verifies block 0 in its prefill pass (one pass fewer)"),
    Param("cloud_finish_tokens", 0, "after a verified block the cloud decodes up to this many tokens itself "
                                    "(a short answer ends in one round trip; 0: never)"),
    Param("grammar", "", "'' | action (the action language) | a regular expression the output must match"),
    Param("image_format", "png", "camera frame on the wire: png (lossless) | jpeg"),
    Param("image_size", "full", "full | processor (the draft processor's input size) | WxH"),
    Param("jpeg_quality", 90, "JPEG quality 1..95 (image_format jpeg)"),
    Param("cloud_timeout_s", 5.0, "no cloud answer for this long -> invalid action -> the robot stops"),
    Param("cloud_probe_timeout_s", 1.0, "degraded mode: how long one probe of the cloud waits"),
    Param("robot_id", "go2", "robot id in protocol sessions"),
    *dataclass_params(SchedulerConfig, {
        "decide_on_completion": "decide again when the controller ends the last action",
        "max_frame_age_s": "never decide on an older camera frame",
        "on_cloud_loss": "stop: invalid decisions, the robot stops | edge_only: draft alone, degraded",
        "cloud_retry_s": "cloud lost: retry (stop) or probe (edge_only) this often",
        "refusal_backoff_s": "first wait after the cloud refuses a decision (doubles per refusal)",
        "refusal_backoff_max_s": "longest wait between refused decisions",
    }),
    Param("decision_period_s", 0.0, "> 0: also decide at this period"),
    Param("use_compressed", False, "subscribe to <image_topic>/compressed (sensor_msgs/CompressedImage)"),
    Param("image_topic", "camera/image_raw", "camera topic"),
    Param("base_frame", "base_link", "frame of the planned-motion markers"),
    Param("instruction", "", "initial instruction (else from the instruction topic)"),
    *dataclass_params(ActionLimits, {
        "max_forward_m": "largest forward step the edge reports valid (the controller has its own)",
        "max_backward_m": "largest backward step",
        "max_strafe_m": "largest sideways step",
        "max_turn_deg": "largest turn",
        "strict_range": "refuse (instead of clamp) out-of-range actions",
    }),
    Param("stats_window", 50, "decisions in the rolling SpecStats window"),
    Param("torch_threads", 1, "torch CPU threads (0: torch default)"),
]


class EdgeSpecDrafter(Node):
    def __init__(self, **node_kwargs):
        super().__init__(NODE_NAME, **node_kwargs)
        p = declare_parameters(self, PARAMETERS)
        if p["mode"] not in MODES:
            raise ValueError(f"parameter mode must be one of {sorted(MODES)}, got {p['mode']!r}")
        if not p["draft_model"]:
            raise ValueError("parameter draft_model (a model folder) is required")
        self.mode = MODES[p["mode"]]
        self.frame_id = p["base_frame"]
        self.probe_timeout_s = p["cloud_probe_timeout_s"]
        self.limits = build_dataclass(ActionLimits, p)
        self.scheduler = DecisionScheduler(build_dataclass(SchedulerConfig, p), instruction=p["instruction"])
        import torch

        if p["torch_threads"]:
            torch.set_num_threads(p["torch_threads"])
        from specdec.engine.drafter import EdgeDecoder
        from specdec.models.loading import freeze_loaded_objects, load_model

        self.prompt_template = check_prompt_template(p["prompt_template"]) or folder_prompt_template(p["draft_model"])
        self.draft = load_model(p["draft_model"], device=p["device"], dtype=p["dtype"],
                                quantization=p["quantization"], name="draft")
        self.transport = RosEdgeTransport(self)
        self.decoder = EdgeDecoder(
            self.draft, self.transport, robot_id=p["robot_id"], gamma=p["gamma"],
            max_new_tokens=p["max_new_tokens"], do_sample=p["do_sample"], temperature=p["temperature"],
            top_k=p["top_k"], seed=p["seed"], timeout_s=p["cloud_timeout_s"], predraft=p["predraft"],
            predraft_policy=p["predraft_policy"], hint_min_confidence=p["hint_min_confidence"],
            draft_length=p["draft_length"],
            confidence_threshold=p["confidence_threshold"], alternatives=p["alternatives"],
            merge_first_block=p["merge_first_block"],
            cloud_finish_tokens=p["cloud_finish_tokens"],
            grammar=GRAMMAR_PATTERN if p["grammar"] == "action" else p["grammar"], image_format=p["image_format"],
            image_size=p["image_size"], jpeg_quality=p["jpeg_quality"])
        freeze_loaded_objects()  # no 100+ ms full collections of the draft's objects mid-decision
        self.rolling = RollingStats(p["stats_window"])
        self.last_error = ""

        if p["use_compressed"]:
            self.create_subscription(CompressedImage, p["image_topic"] + "/compressed", self.scheduler.frame,
                                     SENSOR_QOS)
        else:
            self.create_subscription(Image, p["image_topic"], self.scheduler.frame, SENSOR_QOS)
        self.create_subscription(String, "instruction", self._on_instruction, LATCHED_QOS)
        self.create_subscription(ActionStatus, "action_status", self._on_status, COMMAND_QOS)
        self.action_pub = self.create_publisher(DecodedAction, "decoded_action", COMMAND_QOS)
        self.stats_pub = self.create_publisher(SpecStats, "spec_stats", COMMAND_QOS)
        self.image_pub = self.create_publisher(Image, "~/annotated_image", 1)
        self.marker_pub = self.create_publisher(MarkerArray, "~/planned_motion", 1)
        if p["decision_period_s"] > 0:
            self.create_timer(p["decision_period_s"], self.scheduler.request)
        self.diagnostics = Diagnostics(self, hardware_id=f"draft {p['draft_model']}")
        self.diagnostics.add("decisions", self._decisions_report)
        self.worker = threading.Thread(target=self._decision_loop, name="decisions", daemon=True)
        self.worker.start()
        self.get_logger().info(f"mode {p['mode']}, on cloud loss {p['on_cloud_loss']}, draft {p['draft_model']}")

    # -- inputs ------------------------------------------------------------------------------
    def _on_instruction(self, msg: String):
        if self.scheduler.set_instruction(msg.data):
            self.get_logger().info(f"instruction: {msg.data.strip()!r}")

    def _on_status(self, msg: ActionStatus):
        if msg.state in FINISHED_STATES:
            self.scheduler.action_ended(msg.decision_id, estop=msg.estop,
                                        stalled=msg.state == ActionStatus.STATE_STOPPED
                                        and msg.stop_cause == ActionStatus.CAUSE_STALL,
                                        verb=msg.verb, value=msg.value)

    # -- decisions ---------------------------------------------------------------------------
    def _decision_loop(self):
        while not self.scheduler.stopped:
            try:
                self._run_next_job()
            except Exception as exc:  # never end the decisions thread silently
                self.get_logger().error(f"decision loop: {type(exc).__name__}: {exc}", throttle_duration_sec=5.0)
                time.sleep(0.1)

    def _run_next_job(self):
        job = self.scheduler.next_job(timeout=0.5)
        if job is None:
            return
        try:
            outcome, detail = self._probe() if job.probe else self._decide(job)
        except Exception as exc:  # a bug in the shell: counted as a failed decision, backed off
            outcome, detail = Outcome.REFUSED, f"edge error: {type(exc).__name__}: {exc}"
            self.get_logger().error(f"decision {job.decision_id} failed: {detail}")
        self.scheduler.finished(job, outcome, detail)
        change = self.scheduler.take_link_change()
        if change and self.scheduler.link == LinkState.OK:
            self.get_logger().info(change)
        elif change:
            self.get_logger().warning(change)

    def _probe(self):
        try:
            self.decoder.decode(PROBE_PROMPT, None, DecodingMode.CLOUD_ONLY, max_new_tokens=1,
                                timeout_s=self.probe_timeout_s)
        except Exception as exc:
            return Outcome.PROBE_FAILED, f"{type(exc).__name__}: {exc}"
        return Outcome.PROBE_OK, ""

    def _decide(self, job: Job):
        frame = job.frame
        out = DecodedAction(decision_id=job.decision_id, instruction=job.instruction, degraded=job.degraded)
        out.header.stamp = frame.header.stamp  # which frame this decision saw (replay tests match on it)
        out.header.frame_id = self.frame_id
        action, stats, rgb = None, None, None
        outcome, detail = Outcome.INVALID, ""
        try:
            rgb = image_to_rgb(frame)
            mode = DecodingMode.EDGE_ONLY if job.degraded else self.mode
            prompt = apply_prompt_template(self.prompt_template, job.instruction, job.last_move_blocked, job.turned_deg)
            result = self.decoder.decode(prompt, rgb, mode)
            stats = result.stats
            out.session_id, out.text = result.session_id, result.text
            action = parse_action(result.text, self.limits)
            out.valid, out.action, out.value = True, action.verb, float(action.value)
            outcome = Outcome.DONE if action.verb == "done" else Outcome.VALID
        except ActionRejected as exc:
            out.reject_reason = f"unparsable action: {exc.reason}"
        except ImageConversionError as exc:
            out.reject_reason = detail = f"camera frame refused: {exc}"
            outcome = Outcome.REFUSED
        except Exception as exc:  # cloud unreachable, refused session, model failure: robot stops
            out.reject_reason = detail = f"decoding failed: {type(exc).__name__}: {exc}"
            outcome = classify_failure(exc)
        if outcome in (Outcome.REFUSED, Outcome.CLOUD_LOST):
            self.last_error = detail
        self.rolling.add(stats, error=stats is None)
        if stats is not None:
            out.stats = DecisionStatsMsg(**{k: type(getattr(DecisionStatsMsg(), k))(v)
                                            for k, v in stats.to_msg_fields().items()})
        if not out.valid and self.scheduler.link == LinkState.OK:  # failures in a row: logged once
            self.get_logger().warning(f"decision {job.decision_id} invalid: {out.reject_reason}")
        self.action_pub.publish(out)
        if outcome == Outcome.DONE:
            self.get_logger().info("arrived (done); waiting for a new instruction")
        if rgb is not None:
            self._publish_monitoring(out, action, stats, rgb, frame.header)
        return outcome, detail

    # -- monitoring --------------------------------------------------------------------------
    def _publish_monitoring(self, out, action, stats, rgb, header):
        summary = self.rolling.fields()
        stats_msg = SpecStats(node_name=self.get_name(), window_s=0.0, **summary)
        stats_msg.header.stamp = self.get_clock().now().to_msg()
        stats_msg.last = out.stats
        self.stats_pub.publish(stats_msg)
        verdict = out.text if out.valid else f"REJECTED: {out.reject_reason[:40]}"
        mode = "edge_only (degraded)" if out.degraded else MODES_BY_VALUE[int(self.mode)]
        lines = [f"{mode}: {verdict}"]
        if stats is not None:
            lines.append(f"{stats.latency_ms:.0f} ms  acc {stats.acceptance_rate:.2f}  "
                         f"hint {stats.hints_correct}/{stats.hints}  pre {stats.predraft_hits}/{stats.predrafts}")
        self.image_pub.publish(rgb_to_image(annotate(rgb, lines), header=header))
        self.marker_pub.publish(planned_motion_markers(action, verdict, self.frame_id, stats_msg.header.stamp))

    def _decisions_report(self) -> Report:
        link = self.scheduler.link
        if link == LinkState.OK:
            level, message = OK, f"ok ({MODES_BY_VALUE[int(self.mode)]})"
        elif link == LinkState.DEGRADED:
            level, message = WARN, "degraded: cloud lost, deciding with the draft alone"
        else:
            level, message = ERROR, f"{link.value}: {self.scheduler.last_failure}"
        values = dict(self.rolling.fields())
        values.update(mode=MODES_BY_VALUE[int(self.mode)], link=link.value, degraded=self.scheduler.degraded,
                      instruction=self.scheduler.instruction, decision_id=self.scheduler.decision_id,
                      refusals_in_a_row=self.scheduler.failures, last_error=self.last_error,
                      bytes_sent=self.transport.bytes_sent, bytes_received=self.transport.bytes_received)
        return Report(level, message, values)

    def destroy_node(self):
        self.scheduler.stop()
        super().destroy_node()


def main(args=None):
    return run_node(EdgeSpecDrafter, NODE_NAME, args, threads=2)


if __name__ == "__main__":
    raise SystemExit(main())
