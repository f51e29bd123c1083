"""WAN transport between a robot's bridge and a cloud verifier server: WebSockets.

Why WebSockets: one long-lived, full-duplex stream per robot that crosses NATs, proxies and
load balancers like HTTPS does, with TLS from the standard library. The server can push an
early-exit hint the moment it exists, independent of the final result.

* Authentication: each robot has its own token, sent as ``Authorization: Bearer <token>`` with
  ``X-Robot-Id`` in the opening handshake; a wrong or missing credential is refused with HTTP
  401 before any protocol message is read, and a SessionStart naming another robot is refused.
  Tokens are compared in constant time and stored as sha256 digests.
* TLS: pass an ``ssl.SSLContext`` to both ends (``wss://``).
* Deadlines: :meth:`WebSocketClient.recv` takes a timeout; the edge turns a missed deadline
  into a clear error (the cloud stopped answering) instead of hanging.
* Reconnect: the client reconnects with capped exponential backoff when the stream drops.
  Verifier sessions live on the server by session id, not by connection, so a session
  survives a reconnect; replies go to the robot's current connection.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import queue
import threading
import time
from typing import Dict, Optional

from ..protocol import EndReason, Message, ProtocolError, SessionEnd, SessionStart
from . import wire
from .base import CloudTimeout, CloudTransport, EdgeTransport, TransportClosed, TransportError

log = logging.getLogger(__name__)


class AuthenticationError(TransportError):
    """The server refused this robot's credential."""


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class VerifierServer(CloudTransport):
    """Serve a cloud verifier over WebSockets to authenticated robots.

    It is the verifier's :class:`CloudTransport`: messages from every connected robot come out
    of :meth:`recv` in arrival order, and :meth:`send` routes a reply to the robot that owns
    its session (over that robot's current connection, so a session survives a reconnect).
    ``tokens`` maps robot id -> sha256 hex digest of its token (see :func:`hash_token`).
    """

    def __init__(self, tokens: Dict[str, str], host: str = "127.0.0.1", port: int = 0, ssl_context=None):
        self.tokens = dict(tokens)
        self.host, self.port = host, port
        self.ssl_context = ssl_context
        self.bytes_in = 0
        self.bytes_out = 0
        self.refused = 0
        self._inbox: "queue.Queue[Message]" = queue.Queue()
        self._connections: Dict[str, object] = {}  # robot id -> its current connection
        self._session_robot: Dict[str, str] = {}  # session id -> robot id
        self._server = None
        self._thread: Optional[threading.Thread] = None

    # -- handshake ---------------------------------------------------------------------
    def _authenticate(self, connection, request):
        robot_id = request.headers.get("X-Robot-Id", "")
        auth = request.headers.get("Authorization", "")
        token = auth[len("Bearer "):] if auth.startswith("Bearer ") else ""
        expected = self.tokens.get(robot_id)
        if not token or expected is None or not hmac.compare_digest(hash_token(token), expected):
            self.refused += 1
            log.warning("refused connection for robot %r from %s", robot_id, connection.remote_address)
            return connection.respond(401, "unknown robot or bad token\n")
        connection.robot_id = robot_id
        return None

    # -- CloudTransport ----------------------------------------------------------------
    def recv(self, timeout: float) -> Optional[Message]:
        try:
            return self._inbox.get(timeout=timeout)
        except queue.Empty:
            return None

    def send(self, msg: Message) -> None:
        robot_id = self._session_robot.get(msg.session_id)
        connection = self._connections.get(robot_id) if robot_id else None
        if connection is None:
            log.warning("no connection for session %r; dropping %s", msg.session_id, msg.KIND)
            return
        self._send_frame(connection, msg)

    def _send_frame(self, connection, msg: Message):
        frame = wire.encode(msg)
        try:
            connection.send(frame)
            self.bytes_out += len(frame)
        except Exception as exc:  # closed mid-send: the edge times out and retries
            log.warning("send to robot %s failed: %s", getattr(connection, "robot_id", "?"), exc)

    # -- per connection ----------------------------------------------------------------
    def _handler(self, connection):
        robot_id = connection.robot_id
        self._connections[robot_id] = connection
        try:
            for frame in connection:
                self.bytes_in += len(frame)
                try:
                    message = wire.decode(frame)
                except ProtocolError as exc:
                    self._send_frame(connection, SessionEnd(reason=int(EndReason.BAD_REQUEST),
                                                            detail=f"malformed message: {exc}"))
                    continue
                owner = self._session_robot.get(message.session_id)
                if isinstance(message, SessionStart) and message.robot_id != robot_id or owner not in (None, robot_id):
                    self._send_frame(connection, SessionEnd(
                        session_id=message.session_id, reason=int(EndReason.UNAUTHORIZED),
                        detail=f"session does not belong to robot {robot_id!r}"))
                    continue
                self._session_robot[message.session_id] = robot_id
                self._inbox.put(message)
        finally:
            if self._connections.get(robot_id) is connection:
                del self._connections[robot_id]

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> int:
        """Start serving in a background thread; returns the bound port."""
        from websockets.sync.server import serve

        self._server = serve(self._handler, self.host, self.port, ssl=self.ssl_context,
                             process_request=self._authenticate, compression=None,
                             max_size=wire.MAX_FRAME_BYTES, ping_interval=10, ping_timeout=20,
                             close_timeout=1)
        self.port = self._server.socket.getsockname()[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="verifier-server", daemon=True)
        self._thread.start()
        return self.port

    def serve_forever(self):
        self.start()
        self._thread.join()

    def close(self):
        if self._server is not None:
            self._server.shutdown()
            self._thread.join(5)
            self._server = None

    stop = close


class WebSocketClient(EdgeTransport):
    """Edge end of the link: send protocol messages, receive replies with deadlines."""

    def __init__(self, uri: str, robot_id: str, token: str, ssl_context=None, connect_timeout: float = 5.0,
                 max_backoff: float = 2.0):
        self.uri = uri
        self.robot_id = robot_id
        self._token = token
        self.ssl_context = ssl_context
        self.connect_timeout = connect_timeout
        self.max_backoff = max_backoff
        self.bytes_sent = 0
        self.bytes_received = 0
        self.reconnects = 0
        self._inbox: "queue.Queue[Message]" = queue.Queue()
        self._conn = None
        self._lock = threading.Lock()
        self._closed = False

    def _connect(self):
        from websockets.exceptions import InvalidStatus
        from websockets.sync.client import connect

        deadline = time.monotonic() + self.connect_timeout
        backoff = 0.05
        while True:
            try:
                conn = connect(self.uri, ssl=self.ssl_context, compression=None, proxy=None, legacy=True,
                               additional_headers={"Authorization": f"Bearer {self._token}",
                                                   "X-Robot-Id": self.robot_id},
                               open_timeout=max(0.1, deadline - time.monotonic()),
                               max_size=wire.MAX_FRAME_BYTES, ping_interval=10, ping_timeout=20)
                break
            except InvalidStatus as exc:
                if exc.response.status_code in (401, 403):
                    raise AuthenticationError(f"{self.uri} refused robot {self.robot_id!r}: "
                                              f"HTTP {exc.response.status_code}") from None
                error = exc
            except (OSError, TimeoutError) as exc:
                error = exc
            if time.monotonic() + backoff > deadline:
                raise TransportError(f"cannot reach verifier at {self.uri}: {error}")
            time.sleep(backoff)
            backoff = min(backoff * 2, self.max_backoff)
        threading.Thread(target=self._reader, args=(conn,), name="ws-reader", daemon=True).start()
        return conn

    def _reader(self, conn):
        try:
            for frame in conn:
                self.bytes_received += len(frame)
                try:
                    self._inbox.put(wire.decode(frame))
                except ProtocolError as exc:
                    log.warning("dropping malformed message from cloud: %s", exc)
        except Exception:
            pass
        finally:  # connection dropped: the next send reconnects
            if self._conn is conn:
                self._conn = None

    def send(self, message: Message):
        frame = wire.encode(message)
        with self._lock:
            if self._closed:
                raise TransportClosed("link closed")
            for attempt in range(2):
                if self._conn is None:
                    if attempt or self.reconnects or self._ever_connected:
                        self.reconnects += 1
                    self._conn = self._connect()
                    self._ever_connected = True
                try:
                    self._conn.send(frame)
                    self.bytes_sent += len(frame)
                    return
                except Exception:
                    self._conn = None  # stale connection: reconnect once and resend
            raise TransportError(f"could not send {message.KIND} to {self.uri}")

    _ever_connected = False

    def recv(self, timeout: float) -> Message:
        """Next message from the cloud; :class:`CloudTimeout` when ``timeout`` seconds pass first."""
        try:
            return self._inbox.get(timeout=timeout)
        except queue.Empty:
            raise CloudTimeout(f"no message from {self.uri} within {timeout:.3g} s") from None

    def close(self):
        with self._lock:
            self._closed = True
            if self._conn is not None:
                self._conn.close()
                self._conn = None
