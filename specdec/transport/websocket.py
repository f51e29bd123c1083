"""WAN transport between a robot's bridge and a cloud verifier server: WebSockets.

Why WebSockets: one long-lived, full-duplex stream per robot that crosses NATs, proxies and
load balancers like HTTPS does, with TLS from the standard library. The server can push an
early-exit hint the moment it exists, independent of the final result.

* Health: ``GET /healthz`` answers ``200 ok`` without a credential, for load balancers.
* Authentication: each robot has its own token, sent as ``Authorization: Bearer <token>`` with
  ``X-Robot-Id`` in the opening handshake (a load balancer can route on that header); a wrong or
  missing credential is refused with HTTP 401 before any protocol message is read, and a message
  for another robot's session is refused. Tokens are compared in constant time and stored as
  sha256 digests. The client refuses to send its token over plain ``ws://`` to a host that is not
  loopback unless ``allow_insecure=True``; the server warns when it listens off loopback
  without TLS.
* Errors: whatever the websockets library, the socket or TLS raise, callers see
  :class:`~specdec.transport.base.TransportError` (:class:`AuthenticationError` for a refused
  credential). Every long-lived thread here catches everything, logs it and counts it in
  ``counters`` (``stats()``), so a fault never ends a thread silently.
* Deadlines: :meth:`WebSocketClient.recv` takes a timeout; ``send`` never waits on the network
  (a writer thread per connection does), only - for a new request - up to ``connect_timeout``
  for the link to come back. A session whose connection drops gets a
  ``SessionEnd(TIMEOUT)`` from the client at once, instead of a wait for its deadline.
* Reconnect: the client keeps its link up with capped exponential backoff, in a background
  thread. Verifier sessions live on the server by session id: a reply goes to the connection
  that last sent a message of its session (or another live connection of the same robot), so
  a robot may hold several connections, and a session survives a reconnect.
* Limits (:class:`ServerLimits`): connections in total, per peer address and per robot;
  handshake time and concurrent handshakes (a new connection displaces the oldest pending
  one); open sessions per robot (a new one closes the robot's oldest); prompt and image size;
  queued messages per robot (back-pressure: that robot's connections stop being read) and in
  total; queued replies per connection (a robot that does not read is disconnected). The
  accept loop is the server's own: it survives EMFILE and any other error (the websockets
  sync server's accept loop ends for good on the first one).
"""

from __future__ import annotations

import collections
import errno
import hashlib
import hmac
import ipaddress
import logging
import os
import queue
import selectors
import socket
import struct
import threading
import time
from dataclasses import dataclass
from typing import Dict, List, Optional
from urllib.parse import urlsplit

from ..protocol import EndReason, Message, SessionEnd, SessionStart
from ..settings import check_positive, setting as _limit
from . import wire
from .base import (
    CloudTimeout,
    CloudTransport,
    EdgeTransport,
    TransportClosed,
    TransportError,
)
from .queues import Counters, FairInbox, FrameWriter, InboxClosed

log = logging.getLogger(__name__)

# Sequence number of messages the server itself injects for the verifier (above any edge's count).
SERVER_SEQ = 2 ** 63 - 1
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
HEALTH_PATH = "/healthz"  # GET answers 200 "ok" without a credential (load-balancer health checks)


class AuthenticationError(TransportError):
    """The server refused this robot's credential."""


class InsecureLinkError(TransportError):
    """A bearer token would cross a network in clear text (plain ws:// to a non-loopback host)."""


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses; names are not resolved (DNS may lie)."""
    host = (host or "").strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def as_transport_error(exc: BaseException, what: str) -> TransportError:
    """Any exception of the network stack as a one-line :class:`TransportError`."""
    if isinstance(exc, TransportError):
        return exc
    text = str(exc) or type(exc).__name__
    return TransportError(f"{what}: {type(exc).__name__}: {text}")


def png_size(data: bytes):
    """(width, height) from a PNG's header, or None when ``data`` is not a PNG."""
    if len(data) < 24 or not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", data[16:24])


# ---------------------------------------------------------------------------------------------
# server
# ---------------------------------------------------------------------------------------------
@dataclass
class ServerLimits:
    """What one verifier server grants; ``verifier_server --<name-with-dashes>`` sets each."""

    max_connections: int = _limit(256, "open connections, all peers, handshakes included")
    max_connections_per_address: int = _limit(
        32, "connections from one peer address (behind a load balancer every connection comes from it: raise it)")
    max_handshakes: int = _limit(64, "connections in their opening handshake; a new one displaces the oldest")
    handshake_timeout_s: float = _limit(5.0, "TLS + WebSocket opening handshake must finish within this")
    ping_timeout_s: float = _limit(20.0, "keepalive: a ping every half of this; no pong within it closes the connection")
    max_connections_per_robot: int = _limit(4, "connections of one robot; a new one closes the robot's oldest")
    max_sessions_per_robot: int = _limit(4, "open sessions of one robot; a new one closes the robot's oldest")
    max_queued_per_robot: int = _limit(32, "messages of one robot waiting for the verifier (more: back-pressure)")
    max_queued: int = _limit(1024, "messages of all robots waiting for the verifier")
    max_prompt_bytes: int = _limit(4096, "UTF-8 bytes of a session's instruction")
    max_image_bytes: int = _limit(4 * 1024 * 1024, "encoded bytes of a session's image")
    max_image_pixels: int = _limit(2048 * 2048, "width x height of a session's PNG image")
    max_session_id_chars: int = _limit(128, "characters of a session id")
    send_queue_frames: int = _limit(256, "replies queued per connection; a robot that does not read is dropped")
    send_timeout_s: float = _limit(30.0, "longest write of one frame before the connection counts as dead")
    session_linger_s: float = _limit(60.0, "a closed session's reply route is kept this long (>= verifier linger)")
    session_forget_s: float = _limit(600.0, "a session silent this long is closed and forgotten")

    def check(self) -> "ServerLimits":
        return check_positive(self, "server limit")


@dataclass(eq=False)
class _Connection:
    """One accepted socket, from accept to close."""

    sock: socket.socket
    peer: str
    opened: float
    robot: str = ""  # set once authenticated
    ws: object = None  # the websockets ServerConnection, once open
    writer: Optional[FrameWriter] = None
    closed: bool = False

    def abort(self) -> None:
        """Drop the connection now (any thread): its threads see EOF and end."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


@dataclass(eq=False)
class _Route:
    """Where a session's replies go, and whether it is still open."""

    robot: str
    connection: _Connection
    last_seen: float
    ended_at: Optional[float] = None


_SERVER_COUNTERS = (
    "accepted", "refused_capacity", "refused_address", "displaced_handshakes", "accept_errors",
    "fd_exhausted", "refused_auth", "replaced_connections", "bad_frames", "refused_sessions",
    "evicted_sessions", "forgotten_sessions", "unknown_sessions", "unauthorized", "backpressure_waits",
    "dropped_replies", "slow_consumers", "send_errors", "handler_errors",
)


class VerifierServer(CloudTransport):
    """Serve a cloud verifier over WebSockets to authenticated robots.

    It is the verifier's :class:`CloudTransport`: messages from every connected robot come out
    of :meth:`recv` round-robin by robot, and :meth:`send` (thread-safe, never blocks) routes a
    reply to the connection of its session. ``tokens`` maps robot id -> sha256 hex digest of its
    token (see :func:`hash_token`); ``limits`` bounds what any robot or peer can hold.
    """

    def __init__(self, tokens: Dict[str, str], host: str = "127.0.0.1", port: int = 0, ssl_context=None,
                 limits: Optional[ServerLimits] = None):
        self.tokens = dict(tokens)
        self.host, self.port = host, port
        self.ssl_context = ssl_context
        self.limits = (limits or ServerLimits()).check()
        self.counters = Counters(*_SERVER_COUNTERS)
        self.bytes_in = 0
        self.bytes_out = 0
        self._inbox = FairInbox(self.limits.max_queued_per_robot, self.limits.max_queued)
        self._lock = threading.RLock()
        self._connections: Dict[int, _Connection] = {}  # id(socket) -> connection
        self._per_address: Dict[str, int] = collections.Counter()
        self._routes: Dict[str, _Route] = {}  # session id -> route (open or lingering)
        self._open: Dict[str, "collections.OrderedDict[str, _Route]"] = {}  # robot -> its open sessions, oldest first
        self._last_housekeeping = 0.0
        self._server = None
        self._stopping = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._reserve_fd: Optional[int] = None
        self._fd_exhausted = False

    @property
    def refused(self) -> int:
        """Refused credentials (kept for existing callers; see ``counters``)."""
        return self.counters["refused_auth"]

    def stats(self) -> Dict[str, object]:
        """Counters and current sizes, for a node's diagnostics."""
        with self._lock:
            live = [c for c in self._connections.values() if not c.closed]
            sizes = {
                "connections": len(live),
                "handshakes": sum(1 for c in live if c.ws is None),
                "robots_connected": len({c.robot for c in live if c.ws is not None}),
                "open_sessions": sum(len(s) for s in self._open.values()),
                "routes": len(self._routes),
                "queued": len(self._inbox),
            }
        return {**sizes, **self.counters.snapshot(), "bytes_in": self.bytes_in, "bytes_out": self.bytes_out}

    # -- accepting ---------------------------------------------------------------------------
    def _accept_loop(self) -> None:
        listener = self._server.socket
        poller = selectors.DefaultSelector()
        poller.register(listener, selectors.EVENT_READ)
        try:
            while not self._stopping.is_set():
                try:
                    if not poller.select(0.25):
                        continue
                    sock, addr = listener.accept()
                except OSError as exc:
                    if self._stopping.is_set():
                        break
                    self._accept_failed(exc)
                    continue
                except Exception as exc:  # the accept thread must outlive anything
                    self.counters.error("accept_errors", f"accept: {type(exc).__name__}: {exc}")
                    log.exception("accept loop error (continuing)")
                    time.sleep(0.05)
                    continue
                if self._fd_exhausted:
                    self._fd_exhausted = False
                    log.warning("accepting again after running out of file descriptors")
                try:
                    self._admit(sock, addr)
                except Exception as exc:
                    self.counters.error("accept_errors", f"admit: {type(exc).__name__}: {exc}")
                    log.exception("could not start a connection (continuing)")
                    _close_quietly(sock)
        finally:
            poller.close()
            self._server.socket_closed.set()  # what websockets' own accept loop signals to shutdown()

    def _accept_failed(self, exc: OSError) -> None:
        if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
            self.counters.error("fd_exhausted", f"accept: {exc}")
            if not self._fd_exhausted:
                self._fd_exhausted = True
                log.error("out of file descriptors (%s): shedding the oldest handshake and waiting connections", exc)
            self._displace_oldest_handshake()
            self._shed_one_waiting()
            time.sleep(0.01)
        else:  # ECONNABORTED and friends: that one connection is gone, the listener is fine
            self.counters.error("accept_errors", f"accept: {exc}")

    def _shed_one_waiting(self) -> None:
        """Out of descriptors: give the reserve one back, accept and drop a waiting connection."""
        if self._reserve_fd is None:
            return
        os.close(self._reserve_fd)
        self._reserve_fd = None
        try:
            sock, _ = self._server.socket.accept()
            _close_quietly(sock)
        except OSError:
            pass
        finally:
            try:
                self._reserve_fd = os.open(os.devnull, os.O_RDONLY)
            except OSError:
                self._reserve_fd = None

    def _admit(self, sock: socket.socket, addr) -> None:
        peer = addr[0] if isinstance(addr, tuple) else str(addr)
        limits = self.limits
        with self._lock:
            live = len(self._connections)
            if live >= limits.max_connections:
                return self._refuse_socket(sock, "refused_capacity", f"{live} connections open (limit)")
            if self._per_address[peer] >= limits.max_connections_per_address:
                return self._refuse_socket(sock, "refused_address", f"{peer} holds {self._per_address[peer]}")
            if sum(1 for c in self._connections.values() if c.ws is None) >= limits.max_handshakes:
                self._displace_oldest_handshake()
            conn = _Connection(sock, peer, time.monotonic())
            self._connections[id(sock)] = conn
            self._per_address[peer] += 1
        self.counters.bump("accepted")
        thread = threading.Thread(target=self._run_connection, args=(conn, addr), name="ws-connection", daemon=True)
        with self._server.lock:  # websockets' shutdown() waits for the threads registered here
            self._server.handler_threads.add(thread)
        thread.start()

    def _refuse_socket(self, sock, counter: str, why: str) -> None:
        self.counters.bump(counter)
        log.debug("refusing a connection: %s", why)
        _close_quietly(sock)

    def _displace_oldest_handshake(self) -> None:
        with self._lock:
            pending = [c for c in self._connections.values() if c.ws is None and not c.closed]
        if pending:
            oldest = min(pending, key=lambda c: c.opened)
            self.counters.bump("displaced_handshakes")
            oldest.abort()

    def _run_connection(self, conn: _Connection, addr) -> None:
        try:
            self._server.handler(conn.sock, addr)  # TLS + opening handshake, then self._handler
        except Exception as exc:
            self.counters.error("handler_errors", f"connection: {type(exc).__name__}: {exc}")
        finally:
            with self._lock:
                conn.closed = True
                self._connections.pop(id(conn.sock), None)
                self._per_address[conn.peer] -= 1
                if self._per_address[conn.peer] <= 0:
                    del self._per_address[conn.peer]
            if conn.writer is not None:
                conn.writer.close()

    # -- handshake ---------------------------------------------------------------------------
    def _authenticate(self, connection, request):
        if request.path == HEALTH_PATH:  # a load balancer's health check: no credential, no secrets
            return connection.respond(200, "ok\n")
        robot_id = request.headers.get("X-Robot-Id", "")
        auth = request.headers.get("Authorization", "")
        token = auth[len("Bearer "):] if auth.startswith("Bearer ") else ""
        expected = self.tokens.get(robot_id)
        if not token or expected is None or not hmac.compare_digest(hash_token(token), expected):
            self.counters.bump("refused_auth")
            log.warning("refused connection for robot %r from %s", robot_id[:64], connection.remote_address)
            return connection.respond(401, "unknown robot or bad token\n")
        with self._lock:
            conn = self._connections.get(id(connection.socket))
            if conn is None:
                return connection.respond(503, "connection was dropped\n")
            conn.robot = robot_id
            mine = sorted((c for c in self._connections.values()
                           if c.robot == robot_id and c.ws is not None and not c.closed), key=lambda c: c.opened)
        for old in mine[:max(0, len(mine) - self.limits.max_connections_per_robot + 1)]:
            self.counters.bump("replaced_connections")
            log.warning("robot %s: closing its oldest connection (limit %d per robot)", robot_id,
                        self.limits.max_connections_per_robot)
            old.abort()
        return None

    # -- per connection ----------------------------------------------------------------------
    def _handler(self, connection) -> None:
        with self._lock:
            conn = self._connections.get(id(connection.socket))
        if conn is None:
            return
        connection.socket.settimeout(self.limits.send_timeout_s)  # a write to a stalled peer fails
        conn.writer = FrameWriter(connection.send, lambda exc: self._writer_failed(conn, exc),
                                  self.limits.send_queue_frames, f"ws-writer-{conn.robot}")
        conn.ws = connection
        log.info("robot %s connected from %s", conn.robot, conn.peer)
        try:
            for frame in connection:
                try:
                    self._on_frame(conn, frame)
                except InboxClosed:
                    return
                except Exception as exc:  # one bad message never ends the connection
                    self.counters.error("handler_errors", f"robot {conn.robot}: {type(exc).__name__}: {exc}")
                    log.exception("error handling a message from robot %s (continuing)", conn.robot)
        except Exception as exc:  # the peer went away abnormally
            log.info("robot %s connection ended: %s", conn.robot, exc)
        finally:
            conn.closed = True
            conn.writer.close()

    def _writer_failed(self, conn: _Connection, exc: BaseException) -> None:
        self.counters.error("send_errors", f"send to robot {conn.robot}: {type(exc).__name__}: {exc}")
        conn.abort()

    def _on_frame(self, conn: _Connection, frame) -> None:
        self.bytes_in += len(frame)
        arrived = time.monotonic()
        try:
            message = wire.decode(frame)
        except wire.WireError as exc:
            self.counters.error("bad_frames", f"robot {conn.robot}: {exc}")
            self._write(conn, SessionEnd(session_id=exc.session_id, reason=int(exc.reason),
                                         detail=f"refused message: {exc}"))
            if exc.session_id:
                self._end_session(exc.session_id, conn.robot, EndReason.BAD_REQUEST, str(exc), notify_edge=False)
            return
        if not self._admit_message(conn, message):
            return
        if not self._inbox.put(conn.robot, (message, arrived), timeout=0):
            self.counters.bump("backpressure_waits")  # this robot's queue is full: stop reading it
            while not self._inbox.put(conn.robot, (message, arrived), timeout=1.0):
                if conn.closed or self._stopping.is_set():
                    return

    def _admit_message(self, conn: _Connection, message: Message) -> bool:
        """Route bookkeeping and the limits; answers a refusal itself and returns False."""
        sid, robot = message.session_id, conn.robot
        if not sid or len(sid) > self.limits.max_session_id_chars:
            return self._refuse(conn, message, EndReason.BAD_REQUEST,
                                f"session id must be 1..{self.limits.max_session_id_chars} characters",
                                "bad_frames", quote_session=len(sid) <= self.limits.max_session_id_chars)
        is_start = isinstance(message, SessionStart)
        with self._lock:
            route = self._routes.get(sid)
            if route is not None and route.robot != robot or is_start and message.robot_id != robot:
                return self._refuse(conn, message, EndReason.UNAUTHORIZED,
                                    f"session does not belong to robot {robot!r}", "unauthorized")
            if route is None:
                if not is_start:
                    if isinstance(message, SessionEnd):
                        return False  # nothing open to close
                    return self._refuse(conn, message, EndReason.UNKNOWN_SESSION, f"unknown session {sid!r}",
                                        "unknown_sessions")
                problem = self._check_start(message)
                if problem is not None:
                    return self._refuse(conn, message, EndReason.BAD_REQUEST, problem, "refused_sessions")
                self._make_room(robot)
                route = self._routes[sid] = _Route(robot, conn, time.monotonic())
                self._open.setdefault(robot, collections.OrderedDict())[sid] = route
            route.connection = conn  # replies follow the connection the robot last used for it
            route.last_seen = time.monotonic()
            if isinstance(message, SessionEnd):
                self._mark_ended(sid, route)
        return True

    def _check_start(self, message: SessionStart) -> Optional[str]:
        limits = self.limits
        prompt_bytes = len(message.prompt.encode("utf-8", "surrogatepass"))
        if prompt_bytes > limits.max_prompt_bytes:
            return f"prompt of {prompt_bytes} bytes exceeds this server's limit of {limits.max_prompt_bytes}"
        if len(message.image_data) > limits.max_image_bytes:
            return (f"image of {len(message.image_data)} bytes exceeds this server's limit of "
                    f"{limits.max_image_bytes}")
        size = png_size(message.image_data)
        if size is not None and size[0] * size[1] > limits.max_image_pixels:
            return (f"image of {size[0]}x{size[1]} pixels exceeds this server's limit of "
                    f"{limits.max_image_pixels} pixels")
        return None

    def _make_room(self, robot: str) -> None:
        """Close the robot's oldest open sessions until one more fits (caller holds the lock)."""
        sessions = self._open.get(robot)
        while sessions and len(sessions) >= self.limits.max_sessions_per_robot:
            old_sid = next(iter(sessions))
            self.counters.bump("evicted_sessions")
            self._end_session(old_sid, robot, EndReason.OVERLOADED,
                              f"closed by the server: robot {robot!r} opened more than "
                              f"{self.limits.max_sessions_per_robot} sessions", notify_edge=True)

    def _refuse(self, conn: _Connection, message: Message, reason: EndReason, detail: str, counter: str,
                quote_session: bool = True) -> bool:
        self.counters.error(counter, f"robot {conn.robot}: {detail}")
        if not isinstance(message, SessionEnd):  # never answer an end with an end
            self._write(conn, SessionEnd(session_id=message.session_id if quote_session else "",
                                         reason=int(reason), detail=detail))
        return False

    def _mark_ended(self, sid: str, route: _Route) -> None:
        if route.ended_at is None:
            route.ended_at = time.monotonic()
            sessions = self._open.get(route.robot)
            if sessions is not None:
                sessions.pop(sid, None)
                if not sessions:
                    del self._open[route.robot]

    def _end_session(self, sid: str, robot: str, reason: EndReason, detail: str, notify_edge: bool) -> None:
        """Close an open session of ``robot`` on both sides: the verifier frees it, the edge is told."""
        with self._lock:
            route = self._routes.get(sid)
            if route is None or route.robot != robot or route.ended_at is not None:
                return
            self._mark_ended(sid, route)
        self._inbox.put(robot, (SessionEnd(session_id=sid, seq=SERVER_SEQ, reason=int(EndReason.CANCELLED),
                                           detail=detail), time.monotonic()), force=True)
        if notify_edge:
            self._deliver(route, SessionEnd(session_id=sid, reason=int(reason), detail=detail))

    # -- CloudTransport ----------------------------------------------------------------------
    def recv_with_time(self, timeout: float):
        """``(message, arrival time.monotonic())``, or ``(None, None)`` after ``timeout`` seconds."""
        self._housekeeping()
        got = self._inbox.get(timeout)
        if got is None:
            return None, None
        return got[1]

    def recv(self, timeout: float) -> Optional[Message]:
        return self.recv_with_time(timeout)[0]

    def waiting(self) -> bool:
        return len(self._inbox) > 0

    def send(self, msg: Message) -> None:
        """Route ``msg`` to its session's robot. Never blocks, never raises."""
        try:
            with self._lock:
                route = self._routes.get(msg.session_id)
                if route is not None and isinstance(msg, SessionEnd):
                    self._mark_ended(msg.session_id, route)
            if route is None:
                self.counters.bump("dropped_replies")
                log.debug("no route for session %r; dropping %s", msg.session_id, msg.KIND)
                return
            self._deliver(route, msg)
        except Exception as exc:
            self.counters.error("send_errors", f"send {msg.KIND}: {type(exc).__name__}: {exc}")
            log.exception("could not send %s", msg.KIND)

    def _deliver(self, route: _Route, msg: Message) -> None:
        conn = route.connection
        if conn.closed:  # its connection is gone: any live connection of the same robot
            with self._lock:
                live = [c for c in self._connections.values() if c.robot == route.robot and c.ws is not None
                        and not c.closed]
            conn = max(live, key=lambda c: c.opened) if live else None
            if conn is None:
                self.counters.bump("dropped_replies")
                return
            route.connection = conn
        self._write(conn, msg)

    def _write(self, conn: _Connection, msg: Message) -> None:
        try:
            frame = wire.encode(msg)
        except ValueError as exc:  # e.g. a NaN in a reply: tell the edge instead of going silent
            self.counters.error("send_errors", f"cannot encode {msg.KIND}: {exc}")
            frame = wire.encode(SessionEnd(session_id=msg.session_id, reason=int(EndReason.INTERNAL_ERROR),
                                           detail=f"server could not encode its {msg.KIND}: {exc}"))
        if conn.writer is None or not conn.writer.put(frame):
            if conn.writer is not None and not conn.writer.closed:
                self.counters.error("slow_consumers", f"robot {conn.robot} does not read its replies")
                log.warning("robot %s does not read its replies: dropping its connection", conn.robot)
                conn.abort()
            self.counters.bump("dropped_replies")
            return
        self.bytes_out += len(frame)

    def _housekeeping(self, period_s: float = 1.0) -> None:
        """Forget lingering routes; close sessions silent for ``session_forget_s``."""
        now = time.monotonic()
        if now - self._last_housekeeping < period_s:
            return
        self._last_housekeeping = now
        limits = self.limits
        stale: List[tuple] = []
        with self._lock:
            for sid, route in list(self._routes.items()):
                if route.ended_at is not None:
                    if now - route.ended_at > limits.session_linger_s:
                        del self._routes[sid]
                elif now - route.last_seen > limits.session_forget_s:
                    stale.append((sid, route.robot))
        for sid, robot in stale:
            self.counters.bump("forgotten_sessions")
            self._end_session(sid, robot, EndReason.TIMEOUT, "session silent for too long", notify_edge=True)

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> int:
        """Start serving in a background thread; returns the bound port."""
        from websockets.sync.server import serve

        listener = socket.create_server((self.host, self.port), backlog=1024)
        self._server = serve(self._handler, sock=listener, ssl=self.ssl_context, process_request=self._authenticate,
                             compression=None, max_size=wire.MAX_FRAME_BYTES, max_queue=4,
                             open_timeout=self.limits.handshake_timeout_s, ping_interval=self.limits.ping_timeout_s / 2,
                             ping_timeout=self.limits.ping_timeout_s,
                             close_timeout=1)
        self.port = self._server.socket.getsockname()[1]  # TLS wraps (and detaches) the listener
        try:
            self._reserve_fd = os.open(os.devnull, os.O_RDONLY)
        except OSError:
            self._reserve_fd = None
        if self.ssl_context is None and not is_loopback(self.host):
            log.warning("*** INSECURE: listening on %s:%d WITHOUT TLS; robot tokens and camera frames cross the "
                        "network in clear text. Pass a certificate (--tls-cert/--tls-key) or bind to loopback "
                        "behind a TLS-terminating proxy. ***", self.host, self.port)
        self._thread = threading.Thread(target=self._accept_loop, name="verifier-accept", daemon=True)
        self._thread.start()
        return self.port

    def serve_forever(self):
        self.start()
        self._thread.join()

    def close(self):
        if self._server is None:
            return
        self._stopping.set()
        self._thread.join(5)
        self._inbox.close()
        with self._lock:
            pending = [c for c in self._connections.values() if c.ws is None]
        for conn in pending:  # shutdown() would wait out their handshake timeout
            conn.abort()
        self._server.shutdown()
        self._server = None
        if self._reserve_fd is not None:
            os.close(self._reserve_fd)
            self._reserve_fd = None


def _close_quietly(sock) -> None:
    try:
        sock.close()
    except OSError:
        pass


# ---------------------------------------------------------------------------------------------
# client
# ---------------------------------------------------------------------------------------------
_CLIENT_COUNTERS = ("connects", "connect_failures", "link_losses", "lost_sessions", "dropped_frames",
                    "dropped_messages", "send_errors", "link_errors")
_MAX_TRACKED_SESSIONS = 1024


class WebSocketClient(EdgeTransport):
    """Edge end of the link: send protocol messages, receive replies with deadlines.

    ``send`` returns at once when the link is up (a writer thread writes); when it is down it
    waits up to ``connect_timeout`` for the background connector - except an abort
    (``SessionEnd``), which is dropped: a dead link has no session to cancel. Errors are
    :class:`TransportError` (:class:`AuthenticationError` when the credential is refused).
    ``allow_insecure`` permits a token over plain ``ws://`` to a non-loopback host.
    """

    def __init__(self, uri: str, robot_id: str, token: str, ssl_context=None, connect_timeout: float = 5.0,
                 max_backoff: float = 0.5, *, allow_insecure: bool = False, max_refused_backoff: float = 30.0,
                 send_queue_frames: int = 64, send_timeout_s: float = 30.0, max_inbox: int = 1024,
                 ping_timeout_s: float = 20.0):
        parts = urlsplit(uri)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise TransportError(f"verifier uri {uri!r} must be ws://host:port or wss://host:port")
        if parts.scheme == "ws" and token and not is_loopback(parts.hostname) and not allow_insecure:
            raise InsecureLinkError(
                f"refusing to send robot {robot_id!r}'s token in clear text to {parts.hostname}: use wss:// "
                f"(and a CA file), or set allow_insecure: true on a network you trust")
        self.uri = uri
        self.robot_id = robot_id
        self._token = token
        self.ssl_context = ssl_context
        self.connect_timeout = connect_timeout
        self.ping_timeout_s = ping_timeout_s  # keepalive: a ping every half of this, a pong due within it
        self.max_backoff = max_backoff
        self.max_refused_backoff = max_refused_backoff
        self.send_queue_frames = send_queue_frames
        self.send_timeout_s = send_timeout_s
        self.counters = Counters(*_CLIENT_COUNTERS)
        self.bytes_sent = 0
        self.bytes_received = 0
        self.reconnects = 0
        self._inbox: "queue.Queue[Message]" = queue.Queue(max_inbox)
        self._cond = threading.Condition()
        self._closed = threading.Event()
        self._conn = None
        self._writer: Optional[FrameWriter] = None
        self._last_error: Optional[TransportError] = None
        self._thread: Optional[threading.Thread] = None
        self._open_sessions: "collections.OrderedDict[str, None]" = collections.OrderedDict()
        self._lost_sessions: "collections.OrderedDict[str, None]" = collections.OrderedDict()

    @property
    def connected(self) -> bool:
        return self._writer is not None

    @property
    def last_error(self) -> str:
        return self.counters.last_error

    def stats(self) -> Dict[str, object]:
        return {**self.counters.snapshot(), "connected": self.connected, "reconnects": self.reconnects,
                "bytes_sent": self.bytes_sent, "bytes_received": self.bytes_received}

    # -- connecting ----------------------------------------------------------------------------
    def connect(self) -> None:
        """Start the background connector (``send`` does it too); returns at once."""
        with self._cond:
            if self._thread is None and not self._closed.is_set():
                self._thread = threading.Thread(target=self._link_loop, name=f"ws-link-{self.robot_id}", daemon=True)
                self._thread.start()

    def _open(self):
        """One connection attempt; every failure as a TransportError."""
        from websockets.exceptions import InvalidStatus
        from websockets.sync.client import connect

        try:
            return connect(self.uri, ssl=self.ssl_context, compression=None, proxy=None,
                           additional_headers={"Authorization": f"Bearer {self._token}", "X-Robot-Id": self.robot_id},
                           open_timeout=self.connect_timeout, close_timeout=1, max_size=wire.MAX_FRAME_BYTES,
                           max_queue=16, ping_interval=self.ping_timeout_s / 2, ping_timeout=self.ping_timeout_s,
                           legacy=True)
        except InvalidStatus as exc:
            code = exc.response.status_code
            if code in (401, 403):
                raise AuthenticationError(f"{self.uri} refused robot {self.robot_id!r}: HTTP {code}") from None
            raise TransportError(f"cannot reach verifier at {self.uri}: HTTP {code}") from None
        except Exception as exc:  # InvalidMessage, InvalidHandshake, OSError, SSLError, TimeoutError, ...
            raise as_transport_error(exc, f"cannot reach verifier at {self.uri}") from None

    def _link_loop(self) -> None:
        """Keep a connection up until close(): connect with backoff, read, repeat."""
        backoff = refused_backoff = 0.05
        ever_connected = False
        while not self._closed.is_set():
            try:
                try:
                    conn = self._open()
                except AuthenticationError as exc:
                    self._attempt_failed(exc)
                    refused_backoff = min(refused_backoff * 2, self.max_refused_backoff)
                    self._closed.wait(refused_backoff)
                    continue
                except TransportError as exc:
                    self._attempt_failed(exc)
                    self._closed.wait(backoff)
                    backoff = min(backoff * 2, self.max_backoff)
                    continue
                backoff = refused_backoff = 0.05
                if ever_connected:
                    self.reconnects += 1
                ever_connected = True
                self._serve_connection(conn)
            except Exception as exc:  # the link thread outlives anything
                self.counters.error("link_errors", f"link thread: {type(exc).__name__}: {exc}")
                log.exception("link to %s: unexpected error (continuing)", self.uri)
                self._closed.wait(backoff)

    def _attempt_failed(self, exc: TransportError) -> None:
        self.counters.error("connect_failures", str(exc))
        with self._cond:
            changed = type(exc) is not type(self._last_error)
            self._last_error = exc
            self._cond.notify_all()
        if changed:  # once per change of state, not once per retry
            log.warning("%s", exc)

    def _serve_connection(self, conn) -> None:
        conn.socket.settimeout(self.send_timeout_s)  # a write to a stalled server fails instead of hanging
        writer = FrameWriter(conn.send, lambda exc: self._writer_failed(conn, exc), self.send_queue_frames,
                             f"ws-writer-{self.robot_id}")
        with self._cond:
            if self._closed.is_set():
                writer.close()
                conn.close()
                return
            self._conn, self._writer, self._last_error = conn, writer, None
            self._cond.notify_all()
        self.counters.bump("connects")
        why = "closed"
        try:
            for frame in conn:
                self.bytes_received += len(frame)
                try:
                    message = wire.decode(frame)
                except wire.WireError as exc:
                    self.counters.error("dropped_frames", f"malformed message from the cloud: {exc}")
                    log.warning("dropping malformed message from the cloud: %s", exc)
                    continue
                if isinstance(message, SessionEnd):
                    with self._cond:
                        self._open_sessions.pop(message.session_id, None)
                self._deliver(message)
        except Exception as exc:  # ConnectionClosedError and anything else: the link is gone
            why = f"{type(exc).__name__}: {exc}"
        finally:
            with self._cond:
                self._conn = self._writer = None
                lost = list(self._open_sessions)
                self._open_sessions.clear()
                for sid in lost:
                    _remember(self._lost_sessions, sid)
            writer.close()
            try:
                conn.close()
            except Exception:
                pass
        if self._closed.is_set():
            return
        self.counters.error("link_losses", f"connection to {self.uri} lost: {why}")
        log.warning("connection to %s lost (%s); reconnecting", self.uri, why)
        for sid in lost:  # their replies went down with the connection: say so now
            self.counters.bump("lost_sessions")
            self._deliver(SessionEnd(session_id=sid, reason=int(EndReason.TIMEOUT),
                                     detail=f"connection to the verifier lost ({why})"))

    def _writer_failed(self, conn, exc: BaseException) -> None:
        self.counters.error("send_errors", f"send to {self.uri}: {type(exc).__name__}: {exc}")
        try:
            conn.socket.shutdown(socket.SHUT_RDWR)  # the reader sees it and reconnects
        except OSError:
            pass

    def _deliver(self, message: Message) -> None:
        while not self._closed.is_set():
            try:
                self._inbox.put(message, timeout=0.5)  # full: nobody reads; stop reading the socket too
                return
            except queue.Full:
                continue

    # -- EdgeTransport -------------------------------------------------------------------------
    def send(self, message: Message) -> None:
        try:
            frame = wire.encode(message)
        except ValueError as exc:  # NaN or infinity in a field: JSON cannot carry it
            raise TransportError(f"cannot send {message.KIND}: {exc}") from None
        sid = message.session_id
        is_end = isinstance(message, SessionEnd)
        deadline = time.monotonic() + self.connect_timeout
        self.connect()
        with self._cond:
            while True:
                if self._closed.is_set():
                    raise TransportClosed("link closed")
                if sid in self._lost_sessions and not is_end:
                    self.counters.bump("dropped_messages")  # the edge already has this session's end
                    return
                if self._writer is not None:
                    break
                if is_end:
                    self.counters.bump("dropped_messages")  # nothing to cancel on a dead link
                    return
                if isinstance(self._last_error, AuthenticationError):
                    raise self._last_error
                left = deadline - time.monotonic()
                if left <= 0:
                    raise self._last_error or TransportError(f"cannot reach verifier at {self.uri}: no answer")
                self._cond.wait(left)
            if not self._writer.put(frame):
                self.counters.error("send_errors", f"{self.uri}: send queue full")
                raise TransportError(f"link to {self.uri} is stalled: {self.send_queue_frames} messages unsent")
            if is_end:
                self._open_sessions.pop(sid, None)
            else:
                _remember(self._open_sessions, sid)
            self.bytes_sent += len(frame)

    def recv(self, timeout: float) -> Message:
        """Next message from the cloud; :class:`CloudTimeout` when ``timeout`` seconds pass first."""
        if self._closed.is_set():
            raise TransportClosed("link closed")
        try:
            return self._inbox.get(timeout=max(timeout, 0.0))
        except queue.Empty:
            raise CloudTimeout(f"no message from {self.uri} within {timeout:.3g} s") from None

    def close(self):
        with self._cond:
            if self._closed.is_set():
                return
            self._closed.set()
            conn, writer = self._conn, self._writer
            self._cond.notify_all()
        if writer is not None:
            writer.close()
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass
        if self._thread is not None:
            self._thread.join(2)


def _remember(ordered: "collections.OrderedDict[str, None]", key: str) -> None:
    ordered[key] = None
    ordered.move_to_end(key)
    while len(ordered) > _MAX_TRACKED_SESSIONS:
        ordered.popitem(last=False)
