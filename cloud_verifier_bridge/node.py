"""cloud_verifier_bridge node: serves the speculative protocol topics for the robot's edge node.

Parameters (config/cloud_verifier_bridge.yaml):
  mode             "local": load the target + early exits here (a cloud machine on the ROS
                   network, or simulation); "remote": relay every message to a verifier server
                   over WebSockets and every reply back, hints the moment they arrive.
  target_model, exit_adapters, exit_layer, dtype, device          (local mode)
  server_uri, robot_id, token | token_file, tls_ca_file,
  connect_timeout_s                                               (remote mode)
  diagnostics_period_s
"""

from __future__ import annotations

import os
import threading
import time

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.node import Node

from specdec.protocol import EndReason, SessionEnd
from specdec.transport.base import CloudTimeout, TransportError
from specdec.transport.websocket import AuthenticationError
from specdec_ros.node_runtime import run_node
from specdec_ros.ros_transport import RosCloudTransport


class CloudVerifierBridge(Node):
    def __init__(self, **node_kwargs):
        super().__init__("cloud_verifier_bridge", **node_kwargs)
        p = self.declare_parameter
        self.mode = p("mode", "local").value
        self.stop_event = threading.Event()
        self.transport = RosCloudTransport(self)
        self.started = time.monotonic()
        self.relayed_up = 0
        self.relayed_down = 0
        self.link_errors = 0
        self.last_error = ""
        self.verifier = None
        self.client = None
        if self.mode == "local":
            self._start_local()
        elif self.mode == "remote":
            self._start_remote()
        else:
            raise ValueError(f"parameter mode must be 'local' or 'remote', got {self.mode!r}")
        self.diagnostics = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_timer(p("diagnostics_period_s", 1.0).value, self._publish_diagnostics)

    # -- local: the target runs in this process --------------------------------------------
    def _start_local(self):
        from .target import build_verifier

        p = self.declare_parameter
        model = p("target_model", "").value
        if not model:
            raise ValueError("mode local needs parameter target_model (a model folder)")
        self.verifier = build_verifier(model, p("exit_adapters", "").value or None, p("exit_layer", -1).value,
                                       p("dtype", "float32").value, p("device", "auto").value)
        threading.Thread(target=self.verifier.serve, args=(self.transport, self.stop_event),
                         name="verifier", daemon=True).start()
        self.get_logger().info(f"serving target {model} in-process (exit layer {self.verifier.exit_layer})")

    # -- remote: relay to a verifier server ------------------------------------------------
    def _start_remote(self):
        import ssl

        from specdec.transport.websocket import WebSocketClient

        p = self.declare_parameter
        uri = p("server_uri", "ws://127.0.0.1:8765").value
        token = p("token", "").value or os.environ.get("EDGE_CLOUD_VLM_TOKEN", "")
        token_file = p("token_file", "").value
        if token_file:
            with open(os.path.expanduser(token_file)) as handle:
                token = handle.read().strip()
        if not token:
            raise ValueError("mode remote needs a robot token (parameter token or token_file, "
                             "or EDGE_CLOUD_VLM_TOKEN)")
        ca_file = p("tls_ca_file", "").value
        context = ssl.create_default_context(cafile=ca_file) if ca_file else None
        self.client = WebSocketClient(uri, p("robot_id", "go2").value, token, ssl_context=context,
                                      connect_timeout=p("connect_timeout_s", 5.0).value)
        threading.Thread(target=self._relay_up, name="relay-up", daemon=True).start()
        threading.Thread(target=self._relay_down, name="relay-down", daemon=True).start()
        self.get_logger().info(f"relaying protocol topics to {uri}")

    def _relay_up(self):
        while not self.stop_event.is_set():
            message = self.transport.recv(0.1)
            if message is None:
                continue
            try:
                self.client.send(message)
                self.relayed_up += 1
            except TransportError as exc:
                # Tell the edge now instead of letting it wait for its deadline.
                self.link_errors += 1
                self.last_error = str(exc)
                self.get_logger().error(f"cannot reach the verifier server: {exc}")
                refused = isinstance(exc, AuthenticationError)
                self.transport.send(SessionEnd(
                    session_id=message.session_id,
                    reason=int(EndReason.UNAUTHORIZED if refused else EndReason.TIMEOUT),
                    detail=f"{'credential refused' if refused else 'cloud unreachable'}: {exc}"))

    def _relay_down(self):
        while not self.stop_event.is_set():
            try:
                message = self.client.recv(0.1)
            except CloudTimeout:
                continue
            self.transport.send(message)
            self.relayed_down += 1

    # -- monitoring ------------------------------------------------------------------------
    def _publish_diagnostics(self):
        status = DiagnosticStatus(name="cloud_verifier_bridge", hardware_id=self.mode)
        values = {"mode": self.mode, "uptime_s": f"{time.monotonic() - self.started:.0f}"}
        if self.verifier is not None:
            stats = self.verifier.stats
            values.update({k: str(v) for k, v in vars(stats).items()})
            values["open_sessions"] = str(len(self.verifier.open_sessions))
            errors = getattr(stats, "errors", 0)
        else:
            values.update(relayed_up=str(self.relayed_up), relayed_down=str(self.relayed_down),
                          link_errors=str(self.link_errors), reconnects=str(self.client.reconnects),
                          bytes_sent=str(self.client.bytes_sent), bytes_received=str(self.client.bytes_received),
                          last_error=self.last_error)
            errors = self.link_errors
        status.level = DiagnosticStatus.OK if not errors else DiagnosticStatus.WARN
        status.message = "ok" if not errors else "errors seen (see values)"
        status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        self.diagnostics.publish(array)

    def destroy_node(self):
        self.stop_event.set()
        if self.client is not None:
            self.client.close()
        super().destroy_node()


def main(args=None):
    return run_node(CloudVerifierBridge, "cloud_verifier_bridge", args, threads=2)


if __name__ == "__main__":
    raise SystemExit(main())
