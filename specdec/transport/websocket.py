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
from typing import Callable, Dict, Optional

from ..protocol import EndReason, Message, ProtocolError, SessionEnd, SessionStart
from . import wire

log = logging.getLogger(__name__)

Emit = Callable[[Message], None]
# The cloud-side service behind the server: handle one message, emit replies (possibly several,
# possibly from inside a model forward pass, e.g. an early-exit hint before the final result).
Service = Callable[[Message, Emit], None]


class TransportError(RuntimeError):
    """The link to the cloud failed."""


class AuthenticationError(TransportError):
    """The server refused this robot's credential."""


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class VerifierServer:
    """Serve a cloud verifier over WebSockets to authenticated robots.

    ``tokens`` maps robot id -> sha256 hex digest of its token (see :func:`hash_token`).
    Messages from all robots are handled one at a time (``service`` owns one target model);
    the time a message waits for its turn is what the verifier reports as queue time.
    """

    def __init__(self, service: Service, tokens: Dict[str, str], host: str = "127.0.0.1", port: int = 0,
                 ssl_context=None):
        self.service = service
        self.tokens = dict(tokens)
        self.host, self.port = host, port
        self.ssl_context = ssl_context
        self.bytes_in = 0
        self.bytes_out = 0
        self.refused = 0
        self._lock = threading.Lock()  # one target model: serialise service calls
        self._connections: Dict[str, object] = {}
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

    # -- per connection ----------------------------------------------------------------
    def _emit_to(self, robot_id: str) -> Emit:
        def emit(message: Message):
            frame = wire.encode(message)
            connection = self._connections.get(robot_id)
            if connection is None:
                log.warning("robot %s disconnected; dropping %s", robot_id, message.KIND)
                return
            try:
                connection.send(frame)
                self.bytes_out += len(frame)
            except Exception as exc:  # closed mid-send: the edge will retry the block
                log.warning("send to robot %s failed: %s", robot_id, exc)

        return emit

    def _handler(self, connection):
        robot_id = connection.robot_id
        self._connections[robot_id] = connection
        emit = self._emit_to(robot_id)
        try:
            for frame in connection:
                self.bytes_in += len(frame)
                try:
                    message = wire.decode(frame)
                except ProtocolError as exc:
                    emit(SessionEnd(reason=int(EndReason.BAD_REQUEST), detail=f"malformed message: {exc}"))
                    continue
                if isinstance(message, SessionStart) and message.robot_id != robot_id:
                    emit(SessionEnd(session_id=message.session_id, reason=int(EndReason.UNAUTHORIZED),
                                    detail=f"session names robot {message.robot_id!r}, credential is {robot_id!r}"))
                    continue
                with self._lock:
                    try:
                        self.service(message, emit)
                    except Exception as exc:  # never let one bad session kill the server
                        log.exception("service failed")
                        emit(SessionEnd(session_id=message.session_id, reason=int(EndReason.INTERNAL_ERROR),
                                        detail=f"{type(exc).__name__}: {exc}"))
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

    def stop(self):
        if self._server is not None:
            self._server.shutdown()
            self._thread.join(5)
            self._server = None


class WebSocketClient:
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
                raise TransportError("link closed")
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

    def recv(self, timeout: Optional[float]) -> Optional[Message]:
        """Next message from the cloud, or None when ``timeout`` seconds pass first."""
        try:
            return self._inbox.get(timeout=timeout)
        except queue.Empty:
            return None

    def close(self):
        with self._lock:
            self._closed = True
            if self._conn is not None:
                self._conn.close()
                self._conn = None
