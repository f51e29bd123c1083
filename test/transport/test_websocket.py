"""WebSocket transport: auth, TLS, hints ahead of results, reconnect, malformed input."""

import os
import ssl
import subprocess
import threading
import time

import pytest

from specdec.protocol import DraftBlock, EarlyExitHint, EndReason, SessionEnd, SessionStart, VerifyResult
from specdec.transport import wire
from specdec.transport.link_emulator import LinkEmulator, LinkProfile
from specdec.transport.base import CloudTimeout, TransportError
from specdec.transport.websocket import AuthenticationError, VerifierServer, WebSocketClient, hash_token

TOKENS = {"go2-a": hash_token("secret-a"), "go2-b": hash_token("secret-b")}


def slow_echo_service(message, emit):
    """Replies to a block with a hint at once and the result 0.3 s later (a stand-in verifier)."""
    if isinstance(message, DraftBlock):
        emit(EarlyExitHint(session_id=message.session_id, round=message.round, predicted_accepted=1))
        time.sleep(0.3)
        emit(VerifyResult(session_id=message.session_id, round=message.round, accepted=len(message.tokens)))
    elif isinstance(message, SessionStart):
        emit(SessionEnd(session_id=message.session_id, reason=int(EndReason.COMPLETED), tokens=[1, 2, 3]))


def start_server(**kwargs):
    """A VerifierServer with a loop that feeds its messages to slow_echo_service."""
    srv = VerifierServer(TOKENS, **kwargs)
    srv.start()
    stop = threading.Event()

    def loop():
        while not stop.is_set():
            message = srv.recv(timeout=0.05)
            if message is not None:
                slow_echo_service(message, srv.send)

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


def test_hint_arrives_before_result(server):
    client = WebSocketClient(f"ws://127.0.0.1:{server.port}", "go2-a", "secret-a")
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
    with pytest.raises(AuthenticationError):
        WebSocketClient(f"ws://127.0.0.1:{server.port}", "go2-a", "secret-b").send(DraftBlock())
    with pytest.raises(AuthenticationError):
        WebSocketClient(f"ws://127.0.0.1:{server.port}", "intruder", "secret-a").send(DraftBlock())
    assert server.refused == 2


def test_session_for_another_robot_is_refused(server):
    client = WebSocketClient(f"ws://127.0.0.1:{server.port}", "go2-a", "secret-a")
    client.send(SessionStart(session_id="s", robot_id="go2-b"))
    reply = client.recv(timeout=5)
    assert isinstance(reply, SessionEnd) and reply.reason == EndReason.UNAUTHORIZED
    # A robot cannot inject blocks into another robot's session either.
    owner = WebSocketClient(f"ws://127.0.0.1:{server.port}", "go2-b", "secret-b")
    owner.send(SessionStart(session_id="b-session", robot_id="go2-b"))
    assert owner.recv(timeout=5).session_id == "b-session"
    client.send(DraftBlock(session_id="b-session", tokens=[1]))
    reply = client.recv(timeout=5)
    assert isinstance(reply, SessionEnd) and reply.reason == EndReason.UNAUTHORIZED
    client.close()
    owner.close()


def test_malformed_frames_get_bad_request_and_server_survives(server):
    from websockets.sync.client import connect
    with connect(f"ws://127.0.0.1:{server.port}", proxy=None,
                 additional_headers={"Authorization": "Bearer secret-a", "X-Robot-Id": "go2-a"}) as conn:
        send_junk(conn)
    client = WebSocketClient(f"ws://127.0.0.1:{server.port}", "go2-a", "secret-a")
    client.send(SessionStart(session_id="ok", robot_id="go2-a"))
    assert isinstance(client.recv(timeout=5), SessionEnd)


def send_junk(conn):
    for junk in ["not json", '{"kind": "draft_block"}', '{"kind":"draft_block","data":{"tokens":"x"}}',
                 '{"kind":"draft_block","data":{"round": true}}', '{"kind":"nope","data":{}}',
                 wire.encode(DraftBlock()).replace('"protocol_version":1', '"protocol_version":7')]:
        conn.send(junk)
        reply = wire.decode(conn.recv(timeout=5))
        assert isinstance(reply, SessionEnd) and reply.reason == EndReason.BAD_REQUEST, junk


def test_reconnects_after_the_stream_drops(server):
    client = WebSocketClient(f"ws://127.0.0.1:{server.port}", "go2-a", "secret-a")
    client.send(SessionStart(session_id="a", robot_id="go2-a"))
    assert client.recv(timeout=5) is not None
    client._conn.close()  # the network drops the stream
    time.sleep(0.1)
    client.send(SessionStart(session_id="b", robot_id="go2-a"))
    assert client.recv(timeout=5).session_id == "b"
    assert client.reconnects == 1


def test_unreachable_cloud_is_a_clear_error():
    client = WebSocketClient("ws://127.0.0.1:9", "go2-a", "secret-a", connect_timeout=0.5)
    with pytest.raises(TransportError, match="cannot reach verifier"):
        client.send(DraftBlock())


def test_silent_cloud_times_out(server):
    client = WebSocketClient(f"ws://127.0.0.1:{server.port}", "go2-a", "secret-a")
    client.send(VerifyResult())  # the service ignores it: nothing comes back
    t0 = time.monotonic()
    with pytest.raises(CloudTimeout):
        client.recv(timeout=0.3)
    assert 0.25 < time.monotonic() - t0 < 2


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
        client.send(SessionStart(session_id="tls", robot_id="go2-a"))
        assert client.recv(timeout=5).session_id == "tls"
        # A client that does not trust the certificate does not connect.
        untrusting = WebSocketClient(f"wss://localhost:{srv.port}", "go2-a", "secret-a",
                                     ssl_context=ssl.create_default_context(), connect_timeout=0.5)
        with pytest.raises(TransportError):
            untrusting.send(DraftBlock())
    finally:
        srv.stop_loop()
        srv.close()


def test_link_emulator_adds_round_trip_delay(server):
    emulator = LinkEmulator("127.0.0.1", server.port, LinkProfile(one_way_delay_ms=40))
    port = emulator.start()
    try:
        client = WebSocketClient(f"ws://127.0.0.1:{port}", "go2-a", "secret-a")
        client.send(SessionStart(session_id="warm", robot_id="go2-a"))
        client.recv(timeout=5)
        t0 = time.monotonic()
        client.send(SessionStart(session_id="rtt", robot_id="go2-a"))
        assert client.recv(timeout=5).session_id == "rtt"
        rtt = time.monotonic() - t0
        assert 0.075 < rtt < 0.5, rtt
        assert emulator.bytes_up > 0 and emulator.bytes_down > 0
        client.close()
    finally:
        emulator.stop()


def test_link_emulator_bandwidth_and_order():
    from specdec.transport.link_emulator import _Direction
    import random
    d = _Direction(LinkProfile(one_way_delay_ms=10, jitter_ms=9, bandwidth_mbps=8), random.Random(0))
    times = [d.delivery_time(1000, 0.0) for _ in range(50)]
    assert times == sorted(times)  # never reorders
    assert times[-1] >= 50 * 1000 * 8 / 8e6  # 50 kB at 8 Mbit/s takes >= 50 ms
