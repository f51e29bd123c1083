"""WebSocket transport: auth, TLS, hints ahead of results, reconnect, malformed input, routing, limits."""

import logging
import os
import socket
import ssl
import subprocess
import threading
import time

import pytest

from specdec.protocol import (
    PROTOCOL_VERSION,
    DecodingMode,
    DraftBlock,
    EarlyExitHint,
    EndReason,
    SessionEnd,
    SessionStart,
    VerifyResult,
)
from specdec.transport import wire
from specdec.transport.base import CloudTimeout, TransportError
from specdec.transport.link_emulator import LinkEmulator, LinkProfile
from specdec.transport.websocket import (
    AuthenticationError,
    InsecureLinkError,
    ServerLimits,
    VerifierServer,
    WebSocketClient,
    hash_token,
)

faults = pytest.mark.faults  # part of the fault suite (make faults)

TOKENS = {"go2-a": hash_token("secret-a"), "go2-b": hash_token("secret-b")}


def slow_echo_service(message, emit):
    """A stand-in verifier: a block gets a hint at once and its result 0.3 s later; a cloud-only
    start is answered with its tokens; an edge's SessionEnd is recorded."""
    if isinstance(message, DraftBlock):
        emit(EarlyExitHint(session_id=message.session_id, round=message.round, predicted_accepted=1))
        time.sleep(0.3)
        emit(VerifyResult(session_id=message.session_id, round=message.round, accepted=len(message.tokens)))
    elif isinstance(message, SessionStart) and message.mode == DecodingMode.CLOUD_ONLY:
        emit(SessionEnd(session_id=message.session_id, reason=int(EndReason.COMPLETED), tokens=[1, 2, 3]))


def start_server(service=slow_echo_service, **kwargs):
    """A VerifierServer with a loop that feeds its messages to ``service``; ``srv.seen`` lists them."""
    srv = VerifierServer(TOKENS, **kwargs)
    srv.start()
    srv.seen = []
    stop = threading.Event()

    def loop():
        while not stop.is_set():
            message = srv.recv(timeout=0.05)
            if message is not None:
                srv.seen.append(message)
                service(message, srv.send)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    srv.stop_loop = lambda: (stop.set(), thread.join(2))
    return srv


@pytest.fixture
def server():
    srv = start_server()
    yield srv
    srv.stop_loop()
    srv.close()


def client_for(srv, robot="go2-a", **kwargs):
    return WebSocketClient(f"ws://127.0.0.1:{srv.port}", robot, f"secret-{robot[-1]}", **kwargs)


def start(sid, robot="go2-a", **fields):
    return SessionStart(session_id=sid, robot_id=robot, **fields)


def cloud_only(sid, robot="go2-a"):
    return start(sid, robot, mode=int(DecodingMode.CLOUD_ONLY))


def next_of(client, sid, timeout=5.0):
    """The next message of session ``sid`` (others skipped), as an edge reads them."""
    deadline = time.monotonic() + timeout
    while True:
        message = client.recv(max(0.0, deadline - time.monotonic()))
        if message.session_id == sid:
            return message


def wait_until(condition, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def raw_connection(srv, robot="go2-a"):
    from websockets.sync.client import connect
    return connect(f"ws://127.0.0.1:{srv.port}", proxy=None, additional_headers={
        "Authorization": f"Bearer secret-{robot[-1]}", "X-Robot-Id": robot})


def test_hint_arrives_before_result(server):
    client = client_for(server)
    client.send(start("s"))
    client.send(DraftBlock(session_id="s", round=0, tokens=[4, 5]))
    t0 = time.monotonic()
    hint = client.recv(timeout=5)
    t_hint = time.monotonic() - t0
    result = client.recv(timeout=5)
    t_result = time.monotonic() - t0
    assert isinstance(hint, EarlyExitHint) and isinstance(result, VerifyResult)
    assert t_hint < 0.2 <= t_result  # pushed the moment it exists, not batched with the result
    assert result.accepted == 2
    assert client.bytes_sent > 0 and client.bytes_received > 0
    client.close()


def test_wrong_token_and_unknown_robot_are_refused(server):
    # a refused client keeps retrying with backoff (a token may be rotated on the server): each is
    # closed once refused, and the server counts at least one refusal per client
    counted = server.refused
    for robot, token in (("go2-a", "secret-b"), ("intruder", "secret-a")):
        client = WebSocketClient(f"ws://127.0.0.1:{server.port}", robot, token)
        try:
            with pytest.raises(AuthenticationError):
                client.send(DraftBlock())
        finally:
            client.close()
        assert server.refused >= counted + 1
        counted = server.refused


def test_session_for_another_robot_is_refused(server):
    client = client_for(server)
    client.send(start("s", robot="go2-b"))
    reply = client.recv(timeout=5)
    assert isinstance(reply, SessionEnd) and reply.reason == EndReason.UNAUTHORIZED
    # A robot cannot inject blocks into another robot's session either.
    owner = client_for(server, "go2-b")
    owner.send(cloud_only("b-session", "go2-b"))
    assert owner.recv(timeout=5).session_id == "b-session"
    client.send(DraftBlock(session_id="b-session", tokens=[1]))
    reply = client.recv(timeout=5)
    assert isinstance(reply, SessionEnd) and reply.reason == EndReason.UNAUTHORIZED
    client.close()
    owner.close()


JUNK = [
    ("not json", ""), ('{"kind": "draft_block"}', ""), ('{"kind":"draft_block","data":{"tokens":"x"}}', ""),
    ('{"kind":"draft_block","data":{"round": true}}', ""), ('{"kind":"nope","data":{}}', ""),
    ('{"kind":"draft_block","data":{"session_id":"j1","topk_probs":[NaN]}}', "j1"),
    ('{"kind":"draft_block","data":{"session_id":"j2","topk_probs":[Infinity]}}', "j2"),
    ('{"kind":"draft_block","data":{"session_id":"j3","topk_probs":[1e999]}}', "j3"),
    ('{"kind":"draft_block","data":{"session_id":"j4","seq":' + "7" * 5000 + "}}", "j4"),
    ('{"kind":"draft_block","data":{"session_id":"j5","tokens":' + "[" * 5000 + "]" * 5000 + "}}", "j5"),
    ("[" * 100000 + "]" * 100000, ""),
]


@faults
def test_malformed_frames_get_bad_request_and_the_connection_is_kept(server):
    with raw_connection(server) as conn:
        for junk, sid in JUNK:
            conn.send(junk)
            reply = wire.decode(conn.recv(timeout=5))
            assert isinstance(reply, SessionEnd) and reply.reason == EndReason.BAD_REQUEST, junk[:60]
            assert reply.session_id == sid and reply.detail.startswith("refused message: "), reply
        conn.send(wire.encode(cloud_only("after-junk")))  # the same connection still works
        assert wire.decode(conn.recv(timeout=5)).session_id == "after-junk"
    assert server.stats()["bad_frames"] == len(JUNK)
    assert server.stats()["handler_errors"] == 0


@faults
def test_protocol_version_mismatch_reaches_the_edge_for_its_session(server):
    newer = wire.encode(start("v", prompt="x")).replace(f'"protocol_version":{PROTOCOL_VERSION}',
                                                        f'"protocol_version":{PROTOCOL_VERSION + 1}')
    newer = newer.replace('"data":{', '"data":{"field_from_the_future":1,')
    with raw_connection(server) as conn:
        t0 = time.monotonic()
        conn.send(newer)
        reply = wire.decode(conn.recv(timeout=5))
    assert time.monotonic() - t0 < 2  # answered, not left to the edge's timeout
    assert isinstance(reply, SessionEnd) and reply.session_id == "v"
    assert reply.reason == EndReason.PROTOCOL_VERSION_MISMATCH, reply


@faults
def test_reconnects_after_the_stream_drops(server):
    client = client_for(server)
    client.send(cloud_only("a"))
    assert client.recv(timeout=5) is not None
    client._conn.close()  # the network drops the stream
    time.sleep(0.1)
    client.send(cloud_only("b"))
    assert next_of(client, "b").session_id == "b"
    assert client.reconnects == 1


@faults
def test_unreachable_cloud_is_a_clear_error():
    client = WebSocketClient("ws://127.0.0.1:9", "go2-a", "secret-a", connect_timeout=0.5)
    with pytest.raises(TransportError, match="cannot reach verifier"):
        client.send(DraftBlock(session_id="x"))
    client.close()


def test_silent_cloud_times_out(server):
    client = client_for(server)
    client.send(start("quiet"))  # the service answers nothing to a speculative start
    t0 = time.monotonic()
    with pytest.raises(CloudTimeout):
        client.recv(timeout=0.3)
    assert 0.25 < time.monotonic() - t0 < 2


def _serve_raw(reply: bytes):
    """A TCP server that answers any connection with ``reply`` and closes it (a broken peer)."""
    listener = socket.create_server(("127.0.0.1", 0))

    def run():
        while True:
            try:
                sock, _ = listener.accept()
            except OSError:
                return
            try:
                sock.recv(4096)
                sock.sendall(reply)
            except OSError:
                pass
            sock.close()

    threading.Thread(target=run, daemon=True).start()
    return listener


@faults
@pytest.mark.parametrize("reply", [
    b"garbage\r\n\r\n", b"", b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
], ids=["garbage", "eof", "http500", "http200", "bad-upgrade"])
def test_every_library_error_is_a_transport_error(reply):
    listener = _serve_raw(reply)
    client = WebSocketClient(f"ws://127.0.0.1:{listener.getsockname()[1]}", "go2-a", "secret-a",
                             connect_timeout=0.5)
    try:
        with pytest.raises(TransportError) as info:
            client.send(start("s"))
        assert type(info.value) in (TransportError, AuthenticationError)
        assert "cannot reach verifier" in str(info.value)
        assert client.counters["connect_failures"] >= 1 and client.last_error
    finally:
        client.close()
        listener.close()


@faults
def test_tls_to_a_plain_server_is_a_transport_error(server):
    client = WebSocketClient(f"wss://localhost:{server.port}", "go2-a", "secret-a",
                             ssl_context=ssl.create_default_context(), connect_timeout=0.5)
    with pytest.raises(TransportError):
        client.send(start("s"))
    client.close()


@faults
def test_a_second_connection_of_a_robot_does_not_take_its_replies(server):
    first, second = client_for(server), client_for(server)
    first.send(start("one"))
    second.send(start("two"))
    first.send(DraftBlock(session_id="one", tokens=[1]))
    second.send(DraftBlock(session_id="two", tokens=[1, 2]))
    assert {m.session_id for m in (first.recv(5), first.recv(5))} == {"one"}
    assert {m.session_id for m in (second.recv(5), second.recv(5))} == {"two"}
    second.close()  # the first connection's replies must keep coming
    time.sleep(0.2)
    first.send(DraftBlock(session_id="one", round=1, tokens=[3]))
    assert isinstance(first.recv(5), EarlyExitHint) and isinstance(first.recv(5), VerifyResult)
    first.close()


@faults
def test_replies_follow_a_session_to_the_robots_other_connection(server):
    first, second = client_for(server), client_for(server)
    first.send(start("moving"))
    wait_until(lambda: [m for m in server.seen if m.session_id == "moving"])
    first._conn.close()  # dropped: the session lives on at the server
    second.send(DraftBlock(session_id="moving", tokens=[1]))
    assert isinstance(next_of(second, "moving"), EarlyExitHint)
    first.close()
    second.close()


@faults
def test_session_cap_per_robot_closes_the_oldest():
    srv = start_server(limits=ServerLimits(max_sessions_per_robot=2))
    try:
        client, other = client_for(srv), client_for(srv, "go2-b")
        other.send(start("b1", "go2-b"))
        for sid in ("s1", "s2", "s3"):
            client.send(start(sid))
        end = client.recv(5)
        assert isinstance(end, SessionEnd) and end.session_id == "s1" and end.reason == EndReason.OVERLOADED
        wait_until(lambda: any(isinstance(m, SessionEnd) and m.session_id == "s1" for m in srv.seen))  # freed
        assert srv.stats()["open_sessions"] == 3  # s2, s3 and the other robot's b1
        other.send(DraftBlock(session_id="b1", tokens=[1]))  # the other robot is untouched
        assert isinstance(other.recv(5), EarlyExitHint)
    finally:
        srv.stop_loop()
        srv.close()


def _png_header(width, height):
    import struct
    import zlib
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))


@faults
@pytest.mark.parametrize("fields, words", [
    (dict(prompt="go " * 2000), "prompt of 6000 bytes"),
    (dict(image_format="png", image_data=b"\0" * 5000), "image of 5000 bytes"),
    (dict(image_format="png", image_data=_png_header(30000, 30000)), "30000x30000 pixels"),
], ids=["prompt", "image-bytes", "image-pixels"])
def test_oversized_requests_are_refused_for_their_session(fields, words):
    srv = start_server(limits=ServerLimits(max_image_bytes=4096))
    try:
        client = client_for(srv)
        client.send(start("big", **fields))
        reply = client.recv(5)
        assert isinstance(reply, SessionEnd) and reply.session_id == "big" and reply.reason == EndReason.BAD_REQUEST
        assert words in reply.detail and "limit" in reply.detail
        assert not srv.seen  # the verifier never saw it
    finally:
        srv.stop_loop()
        srv.close()


def test_unknown_session_is_answered_at_once(server):
    client = client_for(server)
    client.send(DraftBlock(session_id="never-started", tokens=[1]))
    reply = client.recv(5)
    assert isinstance(reply, SessionEnd) and reply.reason == EndReason.UNKNOWN_SESSION
    assert not server.seen


@faults
def test_session_routes_are_forgotten():
    srv = start_server(limits=ServerLimits(session_linger_s=0.2, session_forget_s=0.5))
    try:
        client = client_for(srv)
        client.send(cloud_only("done"))  # ends at once
        client.send(start("abandoned"))  # the edge never ends it
        assert client.recv(5).session_id == "done"
        deadline = time.monotonic() + 10
        while srv.stats()["routes"]:
            assert time.monotonic() < deadline, srv.stats()
            time.sleep(0.1)
        assert srv.stats()["forgotten_sessions"] == 1
        assert next_of(client, "abandoned").reason == EndReason.TIMEOUT
    finally:
        srv.stop_loop()
        srv.close()


@faults
def test_a_flooding_robot_is_pushed_back_alone():
    srv = VerifierServer(TOKENS, limits=ServerLimits(max_queued_per_robot=4))
    srv.start()
    try:
        flooder, polite = client_for(srv), client_for(srv, "go2-b")
        flooder.send(start("f"))
        for i in range(60):
            flooder.send(DraftBlock(session_id="f", seq=i + 1, round=i, tokens=[1]))
        wait_until(lambda: srv.stats()["backpressure_waits"])
        polite.send(start("p", "go2-b"))
        time.sleep(0.2)
        got = [srv.recv(2) for _ in range(4)]
        assert "p" in [m.session_id for m in got]  # served within the first rounds, not after 60
        rest = []
        while len(rest) < 61 - 3:
            message = srv.recv(5)
            assert message is not None, len(rest)
            rest.append(message)
        assert sum(1 for m in got + rest if m.session_id == "f") == 61  # pushed back, nothing lost
    finally:
        srv.close()


@faults
def test_send_never_blocks_on_a_robot_that_does_not_read():
    srv = VerifierServer(TOKENS, limits=ServerLimits(send_queue_frames=8, send_timeout_s=2))
    srv.start()
    try:
        with raw_connection(srv) as conn:
            conn.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            conn.send(wire.encode(start("deaf")))
            assert srv.recv(5).session_id == "deaf"
            sender = threading.Thread(target=lambda: [
                srv.send(SessionEnd(session_id="deaf", detail="x" * 100_000)) for _ in range(500)])
            sender.start()
            sender.join(20)
            assert not sender.is_alive()  # the verifier's thread never waits on a slow robot
            deadline = time.monotonic() + 10
            while not srv.stats()["slow_consumers"] and time.monotonic() < deadline:
                time.sleep(0.05)
            assert srv.stats()["slow_consumers"] >= 1
    finally:
        srv.close()


@faults
def test_link_loss_ends_open_sessions_at_once_and_aborts_do_not_wait():
    srv = start_server()
    client = client_for(srv, connect_timeout=5)
    try:
        client.send(start("in-flight"))
        time.sleep(0.2)
        srv.stop_loop()
        srv.close()  # the cloud goes away while the edge waits
        end = client.recv(timeout=3)
        assert isinstance(end, SessionEnd) and end.session_id == "in-flight" and end.reason == EndReason.TIMEOUT
        assert "connection to the verifier lost" in end.detail
        t0 = time.monotonic()
        client.send(SessionEnd(session_id="in-flight", reason=int(EndReason.TIMEOUT)))  # the edge's abort
        client.send(DraftBlock(session_id="in-flight", seq=1))  # a late block of the lost session
        assert time.monotonic() - t0 < 1.0  # returned at once, not after connect_timeout
        assert client.counters["dropped_messages"] == 2 and client.counters["link_losses"] == 1
    finally:
        client.close()


@faults
def test_the_edge_link_survives_garbage_from_the_cloud():
    from websockets.sync.server import serve

    def handler(conn):
        for frame in conn:
            conn.send("certainly not a protocol message")
            conn.send('{"kind":"verify_result","data":{"accepted":1e999}}')
            conn.send(wire.encode(SessionEnd(session_id=wire.decode(frame).session_id)))

    with serve(handler, "127.0.0.1", 0) as raw:
        threading.Thread(target=raw.serve_forever, daemon=True).start()
        client = WebSocketClient(f"ws://127.0.0.1:{raw.socket.getsockname()[1]}", "go2-a", "secret-a")
        for sid in ("g1", "g2"):
            client.send(start(sid))
            assert client.recv(5).session_id == sid
        assert client.counters["dropped_frames"] == 4 and client.connected
        client.close()


@faults
def test_a_failing_message_handler_keeps_the_connection(server, monkeypatch):
    real = server._check_start
    calls = []

    def flaky(message):
        calls.append(message)
        if len(calls) == 1:
            raise RuntimeError("injected fault")
        return real(message)

    monkeypatch.setattr(server, "_check_start", flaky)
    client = client_for(server)
    client.send(cloud_only("first"))  # the handler raises on this one
    client.send(cloud_only("second"))
    assert next_of(client, "second").reason == EndReason.COMPLETED
    assert server.stats()["handler_errors"] == 1 and "injected fault" in server.stats()["last_error"]
    client.close()


@faults
@pytest.mark.parametrize("uri, allowed", [
    ("ws://10.0.0.5:8765", False), ("ws://robot-cloud.example:8765", False), ("ws://127.0.0.1:8765", True),
    ("ws://localhost:8765", True), ("ws://[::1]:8765", True), ("wss://10.0.0.5:8765", True),
])
def test_a_token_is_not_sent_in_clear_text_off_loopback(uri, allowed):
    if allowed:
        WebSocketClient(uri, "go2-a", "secret-a").close()
    else:
        with pytest.raises(InsecureLinkError, match="allow_insecure"):
            WebSocketClient(uri, "go2-a", "secret-a")
        WebSocketClient(uri, "go2-a", "secret-a", allow_insecure=True).close()


@faults
def test_server_warns_when_serving_off_loopback_without_tls(caplog):
    for host, loud in (("127.0.0.1", False), ("0.0.0.0", True)):
        caplog.clear()
        srv = VerifierServer(TOKENS, host=host)
        with caplog.at_level(logging.WARNING, logger="specdec.transport.websocket"):
            srv.start()
        srv.close()
        assert any("INSECURE" in r.message for r in caplog.records) == loud, host


def idle_sockets(port, count, source="127.0.0.2"):
    """``count`` TCP connections that never say anything (a flood from one address)."""
    socks = []
    for _ in range(count):
        s = socket.socket()
        s.bind((source, 0))
        s.connect(("127.0.0.1", port))
        socks.append(s)
    return socks


def closed_by_server(sock, timeout=5.0):
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False


@faults
def test_connections_per_address_are_capped_and_idle_handshakes_time_out():
    srv = start_server(limits=ServerLimits(max_connections_per_address=5, handshake_timeout_s=0.5))
    flood = idle_sockets(srv.port, 20)
    try:
        client = client_for(srv)  # another address is not affected
        client.send(cloud_only("ok"))
        assert client.recv(5).session_id == "ok"
        assert sum(closed_by_server(s, 3) for s in flood) == 20  # 15 at once, 5 at their timeout
        assert srv.stats()["refused_address"] >= 15
        client.close()
    finally:
        for s in flood:
            s.close()
        srv.stop_loop()
        srv.close()


@faults
def test_a_new_connection_displaces_the_oldest_handshake():
    srv = start_server(limits=ServerLimits(max_handshakes=4, handshake_timeout_s=30))
    flood = idle_sockets(srv.port, 10)
    try:
        client = client_for(srv, connect_timeout=2)
        client.send(cloud_only("ok"))
        assert client.recv(5).session_id == "ok"
        assert srv.stats()["displaced_handshakes"] >= 6
        assert closed_by_server(flood[0], 3)  # the oldest went first
        client.close()
    finally:
        for s in flood:
            s.close()
        srv.stop_loop()
        srv.close()


def test_tls(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    srv = start_server(ssl_context=server_ctx)
    try:
        client_ctx = ssl.create_default_context(cafile=str(cert))
        client = WebSocketClient(f"wss://localhost:{srv.port}", "go2-a", "secret-a", ssl_context=client_ctx)
        client.send(cloud_only("tls"))
        assert client.recv(timeout=5).session_id == "tls"
        # A client that does not trust the certificate does not connect.
        untrusting = WebSocketClient(f"wss://localhost:{srv.port}", "go2-a", "secret-a",
                                     ssl_context=ssl.create_default_context(), connect_timeout=0.5)
        with pytest.raises(TransportError):
            untrusting.send(DraftBlock(session_id="x"))
        untrusting.close()
        client.close()
    finally:
        srv.stop_loop()
        srv.close()


def test_link_emulator_adds_round_trip_delay(server):
    emulator = LinkEmulator("127.0.0.1", server.port, LinkProfile(one_way_delay_ms=40))
    port = emulator.start()
    try:
        client = WebSocketClient(f"ws://127.0.0.1:{port}", "go2-a", "secret-a")
        client.send(cloud_only("warm"))
        client.recv(timeout=5)
        t0 = time.monotonic()
        client.send(cloud_only("rtt"))
        assert client.recv(timeout=5).session_id == "rtt"
        rtt = time.monotonic() - t0
        assert 0.075 < rtt < 0.5, rtt
        assert emulator.bytes_up > 0 and emulator.bytes_down > 0
        client.close()
    finally:
        emulator.stop()


@faults
def test_link_emulator_drop_connections_is_a_link_loss(server):
    emulator = LinkEmulator("127.0.0.1", server.port, LinkProfile())
    port = emulator.start()
    try:
        client = WebSocketClient(f"ws://127.0.0.1:{port}", "go2-a", "secret-a")
        client.send(start("cut"))
        time.sleep(0.2)
        assert emulator.drop_connections() == 1
        assert next_of(client, "cut").reason == EndReason.TIMEOUT
        client.send(cloud_only("again"))  # reconnected through the emulator
        assert next_of(client, "again").reason == EndReason.COMPLETED
        client.close()
    finally:
        emulator.stop()


def test_link_emulator_bandwidth_and_order():
    import random

    from specdec.transport.link_emulator import _Direction
    d = _Direction(LinkProfile(one_way_delay_ms=10, jitter_ms=9, bandwidth_mbps=8), random.Random(0))
    times = [d.delivery_time(1000, 0.0) for _ in range(50)]
    assert times == sorted(times)  # never reorders
    assert times[-1] >= 50 * 1000 * 8 / 8e6  # 50 kB at 8 Mbit/s takes >= 50 ms


@faults
def test_server_threads_and_descriptors_are_released(server):
    before = threading.active_count()
    fds = len(os.listdir("/proc/self/fd"))
    for i in range(20):
        client = client_for(server)
        client.send(cloud_only(f"c{i}"))
        client.recv(5)
        client.close()
    def released():  # handler threads, their sockets and the server's count of connections
        return (threading.active_count() <= before + 2 and len(os.listdir("/proc/self/fd")) <= fds + 4
                and server.stats()["connections"] == 0)

    deadline = time.monotonic() + 10
    while not released() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert threading.active_count() <= before + 2
    assert len(os.listdir("/proc/self/fd")) <= fds + 4
    assert server.stats()["connections"] == 0


def test_health_check_needs_no_credential_and_reveals_nothing(server):
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    conn.request("GET", "/healthz")
    response = conn.getresponse()
    assert response.status == 200 and response.read() == b"ok\n"
    conn.request("GET", "/")  # anything else still needs a robot's credential
    assert conn.getresponse().status == 401
    assert server.refused == 1
