"""The speculative protocol over ROS 2 topics (DDS): edge and cloud ends of specdec transports.

Topics, relative to the node's namespace, one per message type and direction:

    spec/to_cloud/session_start   SessionStart   edge -> cloud
    spec/to_cloud/draft_block     DraftBlock     edge -> cloud
    spec/to_cloud/session_end     SessionEnd     edge -> cloud (cancel)
    spec/to_edge/early_exit_hint  EarlyExitHint  cloud -> edge
    spec/to_edge/verify_result    VerifyResult   cloud -> edge
    spec/to_edge/session_end      SessionEnd     cloud -> edge (result or error)

Subscriptions feed a queue that the engine reads with ``recv(timeout)``; the node must be
spun by an executor in another thread (the nodes here use a MultiThreadedExecutor).
Several robots may share one bridge: replies carry the session id, and an edge drops messages
of sessions it did not open. Byte counters use the real serialised (CDR) size.
"""

from __future__ import annotations

import queue
from typing import Optional

from rclpy.node import Node
from rclpy.serialization import serialize_message

from edge_cloud_vlm_msgs import msg as ros_msgs
from specdec.protocol import Message, ProtocolError
from specdec.transport.base import CloudTimeout, CloudTransport, EdgeTransport

from .conversions import from_ros, to_ros
from .qos import PROTOCOL_QOS

TO_CLOUD = {
    "session_start": ros_msgs.SessionStart,
    "draft_block": ros_msgs.DraftBlock,
    "session_end": ros_msgs.SessionEnd,
}
TO_EDGE = {
    "early_exit_hint": ros_msgs.EarlyExitHint,
    "verify_result": ros_msgs.VerifyResult,
    "session_end": ros_msgs.SessionEnd,
}


class _RosEnd:
    """Publishers for one direction, subscriptions for the other, a queue in between."""

    def __init__(self, node: Node, outgoing: dict, out_prefix: str, incoming: dict, in_prefix: str):
        self.node = node
        self.bytes_sent = 0
        self.bytes_received = 0
        self.malformed = 0
        self._inbox: "queue.Queue[Message]" = queue.Queue()
        self._pubs = {kind: node.create_publisher(t, f"{out_prefix}/{kind}", PROTOCOL_QOS)
                      for kind, t in outgoing.items()}
        for kind, t in incoming.items():
            node.create_subscription(t, f"{in_prefix}/{kind}", self._on_message, PROTOCOL_QOS)

    def _accept(self, message: Message) -> bool:
        return True

    def _on_message(self, ros_msg):
        try:
            message = from_ros(ros_msg)
        except (ProtocolError, TypeError, ValueError) as exc:
            self.malformed += 1
            self.node.get_logger().warning(f"dropping malformed protocol message: {exc}")
            return
        if self._accept(message):
            self.bytes_received += len(serialize_message(ros_msg))
            self._inbox.put(message)

    def send(self, msg: Message) -> None:
        ros_msg = to_ros(msg)
        self.bytes_sent += len(serialize_message(ros_msg))
        self._pubs[msg.KIND].publish(ros_msg)

    def _get(self, timeout: float) -> Optional[Message]:
        try:
            return self._inbox.get(timeout=timeout)
        except queue.Empty:
            return None


class RosEdgeTransport(_RosEnd, EdgeTransport):
    """Edge end: publishes to ``spec/to_cloud/*``, listens on ``spec/to_edge/*``."""

    def __init__(self, node: Node):
        super().__init__(node, TO_CLOUD, "spec/to_cloud", TO_EDGE, "spec/to_edge")
        self._sessions = set()

    def _accept(self, message: Message) -> bool:
        return message.session_id in self._sessions  # other robots' traffic on a shared bus

    def send(self, msg: Message) -> None:
        self._sessions.add(msg.session_id)
        super().send(msg)

    def recv(self, timeout: float) -> Message:
        message = self._get(timeout)
        if message is None:
            raise CloudTimeout(f"no answer from the cloud verifier within {timeout:.3g} s "
                               f"(is cloud_verifier_bridge running on this ROS network?)")
        return message


class RosCloudTransport(_RosEnd, CloudTransport):
    """Cloud end: listens on ``spec/to_cloud/*``, publishes to ``spec/to_edge/*``."""

    def __init__(self, node: Node):
        super().__init__(node, TO_EDGE, "spec/to_edge", TO_CLOUD, "spec/to_cloud")

    def recv(self, timeout: float) -> Optional[Message]:
        return self._get(timeout)

    def waiting(self) -> bool:
        return not self._inbox.empty()
