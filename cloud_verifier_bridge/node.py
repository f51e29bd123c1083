"""cloud_verifier_bridge node: serves the speculative protocol topics for the robot's edge node.

``mode: local`` loads the target and its early exits here (a cloud machine on the ROS network, or
simulation); ``mode: remote`` relays every message to a verifier server over WebSockets and every
reply back, hints the moment they arrive. Parameters: ``PARAMETERS`` below and
config/cloud_verifier_bridge.yaml.

Remote relaying runs in two threads (up: topics -> server, down: server -> topics). Neither may
die: each step runs under :func:`_keep_running`, which counts and reports any exception and
carries on. When the server cannot be reached the bridge answers the edge at once
(``SessionEnd`` TIMEOUT, or UNAUTHORIZED for a refused credential) instead of letting it wait for
its deadline, fails the other messages already queued behind the failed one, and drops later
messages of sessions it has failed, so an outage never builds a backlog of stale requests that
would hit the server when it comes back. Diagnostics: level ERROR while the link is failing, OK
again after the next successful exchange; ``link_errors`` counts every failure.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections import OrderedDict

from rclpy.node import Node

from specdec.engine.verifier_settings import VerifierSettings
from specdec.protocol import EndReason, SessionEnd
from specdec.transport.base import CloudTimeout
from specdec.transport.websocket import AuthenticationError
from specdec_ros.diagnostics import ERROR, OK, WARN, Diagnostics, Report
from specdec_ros.node_runtime import Param, build_dataclass, dataclass_params, declare_parameters, run_node
from specdec_ros.ros_transport import RosCloudTransport

NODE_NAME = "cloud_verifier_bridge"
MODES = ("local", "remote")
FAILED_SESSIONS_KEPT = 256  # remembered so their later messages are dropped, not retried

PARAMETERS = [
    Param("mode", "remote", "local: the target in this process | remote: a WebSocket verifier server"),
    Param("target_model", "", "local: target model folder"),
    Param("exit_adapters", "", "local: early-exit adapter file ('' = no hints)"),
    Param("exit_layer", -1, "local: the one exit layer sending hints (-1: every layer in the file, deepest last)"),
    Param("dtype", "float32", "local: float32 | bfloat16 | float16"),
    Param("device", "auto", "local: auto | cpu | cuda"),
    Param("server_uri", "ws://127.0.0.1:8765", "remote: verifier server (wss://... with tls_ca_file for TLS)"),
    Param("robot_id", "go2", "remote: this robot's id at the server"),
    Param("token", "", "remote: robot token (prefer token_file or EDGE_CLOUD_VLM_TOKEN)"),
    Param("token_file", "", "remote: file holding the robot token"),
    Param("tls_ca_file", "", "remote: CA certificate for wss://"),
    Param("connect_timeout_s", 5.0, "remote: longest wait for one connection attempt"),
    Param("allow_insecure", False, "remote: allow the token over plain ws:// to a non-loopback host (never on a WAN)"),
    Param("diagnostics_period_s", 1.0, "diagnostics publication period"),
    *dataclass_params(VerifierSettings, {f.name: "local: " + f.metadata["help"]
                                         for f in dataclasses.fields(VerifierSettings)}),
]


class CloudVerifierBridge(Node):
    def __init__(self, **node_kwargs):
        super().__init__(NODE_NAME, **node_kwargs)
        self.p = p = declare_parameters(self, PARAMETERS)
        self.mode = p["mode"]
        if self.mode not in MODES:
            raise ValueError(f"parameter mode must be one of {MODES}, got {self.mode!r}")
        self.stop_event = threading.Event()
        self.transport = RosCloudTransport(self)
        self.started = time.monotonic()
        self.relayed_up = 0
        self.relayed_down = 0
        self.link_errors = 0
        self.link_failing = False
        self.last_error = ""
        self.verifier = None
        self.client = None
        self._failed_sessions: "OrderedDict[str, None]" = OrderedDict()
        if self.mode == "local":
            self._start_local()
        else:
            self._start_remote()
        hardware = p["target_model"] if self.mode == "local" else p["server_uri"]
        self.diagnostics = Diagnostics(self, hardware_id=hardware, period_s=p["diagnostics_period_s"])
        self.diagnostics.add("verifier link", self._link_report)

    # -- threads that must not die ---------------------------------------------------------
    def _keep_running(self, name: str, step) -> None:
        """Start a thread that runs ``step()`` until shutdown; an exception is reported, counted
        and the loop goes on (after a short pause, so a persistent fault does not spin)."""
        def loop():
            while not self.stop_event.is_set():
                try:
                    step()
                except Exception as exc:
                    self._link_failed(f"{name}: {type(exc).__name__}: {exc}")
                    self.stop_event.wait(0.1)

        threading.Thread(target=loop, name=name, daemon=True).start()

    def _link_failed(self, error: str) -> None:
        self.link_errors += 1
        if not self.link_failing or error != self.last_error:  # once per change, not per message
            self.get_logger().error(error)
        self.link_failing, self.last_error = True, error

    def _link_ok(self) -> None:
        if self.link_failing:
            self.get_logger().info("verifier link working again")
        self.link_failing = False

    # -- local: the target runs in this process --------------------------------------------
    def _start_local(self):
        from specdec.models.loading import freeze_loaded_objects

        from .target import build_verifier

        p = self.p
        if not p["target_model"]:
            raise ValueError("mode local needs parameter target_model (a model folder)")
        self.verifier = build_verifier(p["target_model"], p["exit_adapters"] or None, p["exit_layer"],
                                       p["dtype"], p["device"], settings=build_dataclass(VerifierSettings, p))
        freeze_loaded_objects()  # no 100+ ms full collections of the target's objects mid-pass
        self._keep_running("verifier", lambda: self.verifier.serve(self.transport, self.stop_event))
        self.get_logger().info(f"serving target {p['target_model']} in-process (exit layer {self.verifier.exit_layer})")

    # -- remote: relay to a verifier server ------------------------------------------------
    def _start_remote(self):
        import ssl

        from specdec.transport.websocket import WebSocketClient

        p = self.p
        token = p["token"] or os.environ.get("EDGE_CLOUD_VLM_TOKEN", "")
        if p["token_file"]:
            with open(os.path.expanduser(p["token_file"])) as handle:
                token = handle.read().strip()
        if not token:
            raise ValueError("mode remote needs a robot token (parameter token or token_file, "
                             "or EDGE_CLOUD_VLM_TOKEN)")
        context = ssl.create_default_context(cafile=p["tls_ca_file"]) if p["tls_ca_file"] else None
        self.client = WebSocketClient(p["server_uri"], p["robot_id"], token, ssl_context=context,
                                      connect_timeout=p["connect_timeout_s"], allow_insecure=p["allow_insecure"])
        self._keep_running("relay-up", self._relay_up)
        self._keep_running("relay-down", self._relay_down)
        self.get_logger().info(f"relaying protocol topics to {p['server_uri']}")

    def _relay_up(self):
        message = self.transport.recv(0.1)
        if message is None or message.session_id in self._failed_sessions:
            return
        try:
            self.client.send(message)
        except Exception as exc:
            self._link_failed(f"cannot reach the verifier server: {type(exc).__name__}: {exc}")
            refused = isinstance(exc, AuthenticationError)
            self._fail_session(message, refused, str(exc))
            while (queued := self.transport.recv(0)) is not None:  # stale by now: fail them too
                self._fail_session(queued, refused, str(exc))
            return
        self.relayed_up += 1
        self._link_ok()

    def _fail_session(self, message, refused: bool, error: str) -> None:
        """Tell the edge now instead of letting it wait for its deadline (once per session)."""
        sid = message.session_id
        if sid in self._failed_sessions:
            return
        self._failed_sessions[sid] = None
        if len(self._failed_sessions) > FAILED_SESSIONS_KEPT:
            self._failed_sessions.popitem(last=False)
        if isinstance(message, SessionEnd):
            return  # the edge ended it: nobody waits for an answer
        self.transport.send(SessionEnd(
            session_id=sid, reason=int(EndReason.UNAUTHORIZED if refused else EndReason.TIMEOUT),
            detail=f"{'credential refused' if refused else 'cloud unreachable'}: {error}"))

    def _relay_down(self):
        try:
            message = self.client.recv(0.1)
        except CloudTimeout:
            return
        self.transport.send(message)
        self.relayed_down += 1
        self._link_ok()

    # -- monitoring ------------------------------------------------------------------------
    def _link_report(self) -> Report:
        values = {"mode": self.mode, "uptime_s": f"{time.monotonic() - self.started:.0f}"}
        if self.verifier is not None:
            stats = self.verifier.stats
            values.update(vars(stats))
            values["open_sessions"] = len(self.verifier.open_sessions)
            if getattr(stats, "errors", 0):
                return Report(WARN, "verifier errors seen (see values)", values)
            return Report(OK, "ok", values)
        values.update(relayed_up=self.relayed_up, relayed_down=self.relayed_down, link_errors=self.link_errors,
                      reconnects=self.client.reconnects, bytes_sent=self.client.bytes_sent,
                      bytes_received=self.client.bytes_received, last_error=self.last_error)
        if self.link_failing:
            return Report(ERROR, f"verifier link failing: {self.last_error}", values)
        return Report(OK, "ok", values)

    def destroy_node(self):
        self.stop_event.set()
        if self.client is not None:
            self.client.close()
        super().destroy_node()


def main(args=None):
    return run_node(CloudVerifierBridge, NODE_NAME, args, threads=2)


if __name__ == "__main__":
    raise SystemExit(main())
