"""In-process transport: the verifier runs in its own thread, messages go through queues.

Early-exit hints are queued from inside the target's forward pass, so the edge
(the caller's thread) really receives them while verification continues. An
optional one-way ``latency_s`` simulates a network link.

    link = InProcessTransport(verifier)      # starts verifier.serve(link.cloud, stop) in a thread
    edge = EdgeDecoder(draft, link)
    ...
    link.close()

``InProcessTransport(None)`` has no cloud behind it (messages are swallowed): an
edge using it times out with :class:`CloudTimeout`, as with a dead cloud.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Optional, Tuple

from ..protocol import Message, SessionEnd
from .base import CloudTimeout, CloudTransport, EdgeTransport, TransportClosed, message_nbytes


class _Pipe:
    """One direction of the link: FIFO with an optional constant delivery delay."""

    def __init__(self, latency_s: float = 0.0):
        self._queue: "queue.SimpleQueue[Tuple[float, float, Optional[Message]]]" = queue.SimpleQueue()
        self.latency_s = latency_s
        self._held: Optional[Tuple[float, float, Optional[Message]]] = None  # taken but not yet delivered

    def put(self, msg: Optional[Message]) -> None:
        now = time.monotonic()
        self._queue.put((now, now + self.latency_s, msg))

    def get(self, timeout: float) -> Tuple[Optional[float], Optional[Message]]:
        """``(sent_at, msg)``; ``(None, None)`` on timeout. One consumer per pipe."""
        deadline = time.monotonic() + max(timeout, 0.0)
        if self._held is None:
            try:
                self._held = self._queue.get(timeout=max(timeout, 0.0))
            except queue.Empty:
                return None, None
        sent_at, deliver_at, msg = self._held
        wait = deliver_at - time.monotonic()
        if wait > 0:
            if deliver_at > deadline:  # would not arrive in time: keep it for the next call
                time.sleep(max(deadline - time.monotonic(), 0.0))
                return None, None
            time.sleep(wait)
        self._held = None
        return sent_at, msg

    def waiting(self) -> bool:
        """Something was sent (it may still be on its way through the delay)."""
        return self._held is not None or not self._queue.empty()


class InProcessCloudEnd(CloudTransport):
    """The verifier's end of an in-process link."""

    def __init__(self, to_cloud: _Pipe, to_edge: _Pipe, owner: "InProcessTransport"):
        self._in = to_cloud
        self._out = to_edge
        self._owner = owner

    def recv(self, timeout: float) -> Optional[Message]:
        return self.recv_with_time(timeout)[0]

    def recv_with_time(self, timeout: float):
        """``(msg, arrival_time)`` where arrival is when it entered the link (for queue_ms)."""
        sent_at, msg = self._in.get(timeout)
        if msg is None:
            return None, None
        return msg, sent_at + self._in.latency_s

    def waiting(self) -> bool:
        return self._in.waiting()

    def send(self, msg: Message) -> None:
        if self._owner.closed:
            return
        if self._owner.count_bytes:
            self._owner.bytes_received += message_nbytes(msg)
        self._out.put(msg)


class InProcessTransport(EdgeTransport):
    """Edge end of an in-process link, with the cloud end served by ``server`` in a thread.

    ``server`` is anything with ``serve(cloud_transport, stop_event)`` (a
    :class:`specdec.engine.verifier.Verifier`), or None for a cloud that never answers.
    """

    def __init__(self, server=None, *, latency_s: float = 0.0, count_bytes: bool = True, name: str = "verifier"):
        self._to_cloud = _Pipe(latency_s)
        self._to_edge = _Pipe(latency_s)
        self.count_bytes = count_bytes
        self.bytes_sent = 0
        self.bytes_received = 0
        self.closed = False
        self.cloud = InProcessCloudEnd(self._to_cloud, self._to_edge, self)
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.server = server
        if server is not None:
            self._thread = threading.Thread(
                target=server.serve, args=(self.cloud, self._stop), name=f"specdec-{name}", daemon=True
            )
            self._thread.start()

    def send(self, msg: Message) -> None:
        if self.closed:
            raise TransportClosed("in-process transport is closed")
        if self.count_bytes:
            self.bytes_sent += message_nbytes(msg)
        self._to_cloud.put(msg)

    def recv(self, timeout: float) -> Message:
        if self.closed:
            raise TransportClosed("in-process transport is closed")
        _, msg = self._to_edge.get(timeout)
        if msg is None:
            raise CloudTimeout(f"no message from the cloud within {timeout:.3g} s")
        return msg

    def close(self, timeout: float = 5.0) -> None:
        if self.closed:
            return
        self.closed = True
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)


class InProcessHub:
    """One verifier thread serving several in-process edges: a fleet in one process.

        hub = InProcessHub(verifier)             # starts verifier.serve(hub.cloud, stop) in a thread
        edges = [EdgeDecoder(draft, hub.connect(), robot_id=f"r{i}") for i in range(4)]

    Every edge's messages go into one queue to the verifier; replies are routed back to the edge
    that opened the session. Each edge is used by one thread.
    """

    def __init__(self, server, *, latency_s: float = 0.0):
        self._to_cloud = _Pipe(latency_s)
        self.latency_s = latency_s
        self._routes = {}  # session id -> edge end
        self._routes_lock = threading.Lock()
        self.closed = False
        self.cloud = _HubCloudEnd(self)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=server.serve, args=(self.cloud, self._stop), name="specdec-hub",
                                        daemon=True)
        self._thread.start()

    def connect(self) -> "EdgeTransport":
        return _HubEdge(self)

    def close(self, timeout: float = 5.0) -> None:
        if not self.closed:
            self.closed = True
            self._stop.set()
            self._thread.join(timeout)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _HubEdge(EdgeTransport):
    def __init__(self, hub: InProcessHub):
        self.hub = hub
        self._from_cloud = _Pipe(hub.latency_s)
        self.bytes_sent = 0
        self.bytes_received = 0

    def send(self, msg: Message) -> None:
        if self.hub.closed:
            raise TransportClosed("in-process hub is closed")
        with self.hub._routes_lock:
            self.hub._routes[msg.session_id] = self
        self.bytes_sent += message_nbytes(msg)
        self.hub._to_cloud.put(msg)

    def recv(self, timeout: float) -> Message:
        if self.hub.closed:
            raise TransportClosed("in-process hub is closed")
        _, msg = self._from_cloud.get(timeout)
        if msg is None:
            raise CloudTimeout(f"no message from the cloud within {timeout:.3g} s")
        return msg


class _HubCloudEnd(CloudTransport):
    def __init__(self, hub: InProcessHub):
        self.hub = hub

    def recv(self, timeout: float) -> Optional[Message]:
        return self.recv_with_time(timeout)[0]

    def recv_with_time(self, timeout: float):
        sent_at, msg = self.hub._to_cloud.get(timeout)
        if msg is None:
            return None, None
        return msg, sent_at + self.hub.latency_s

    def waiting(self) -> bool:
        return self.hub._to_cloud.waiting()

    def send(self, msg: Message) -> None:
        with self.hub._routes_lock:
            if isinstance(msg, SessionEnd):  # the session is over: forget its route
                edge = self.hub._routes.pop(msg.session_id, None)
            else:
                edge = self.hub._routes.get(msg.session_id)
        if edge is not None and not self.hub.closed:
            edge.bytes_received += message_nbytes(msg)
            edge._from_cloud.put(msg)
