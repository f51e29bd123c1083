"""Edge and cloud as two devices on one machine: pinned processes and an emulated WAN link.

The cloud is the real ``verifier_server`` process (WebSocket transport, token auth) pinned to
its own core(s); the link emulator process sits in front of it; the edge is the benchmark
process itself, pinned to another core. On this 2-core machine: edge = core 0, cloud = core 1.

With a compute profile the server emulates a cloud device (``--compute-profile``) and keeps its
clock's summary in a stats file: :meth:`Cloud.snapshot` asks for a fresh one (SIGUSR1), so a
benchmark can tell which of its cells overran the emulated device. One server can admit several
robots (``robot_ids``), each with its own token, for the shared-cloud runs.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence

from specdec.transport.websocket import WebSocketClient, hash_token

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def core_split():
    """(edge cores, cloud cores) for this machine, or (None, None) when there is one core."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        return None, None
    return {cores[0]}, set(cores[1:])


def pin_self(cores) -> None:
    if cores:
        os.sched_setaffinity(0, cores)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen, timeout: float, what: str, log_path: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{open(log_path).read()[-2000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"{what} did not listen on {port} within {timeout} s")


@dataclass
class Cloud:
    port: int
    tokens: Dict[str, str]  # robot id -> token
    proc: subprocess.Popen
    log_path: str
    stats_path: str
    profile: Optional[str] = None  # the --compute-profile file, if the server emulates a device
    robot_ids: Sequence[str] = field(default_factory=list)

    @property
    def robot_id(self) -> str:
        return self.robot_ids[0]

    @property
    def token(self) -> str:
        return self.tokens[self.robot_id]

    def snapshot(self, timeout: float = 10.0) -> dict:
        """A fresh copy of the server's stats file (verifier totals, compute clock summary)."""
        before = _read_json(self.stats_path).get("written_ns", 0)
        self.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            doc = _read_json(self.stats_path)
            if doc.get("written_ns", 0) > before:
                return doc
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        raise TimeoutError(f"verifier_server wrote no stats snapshot within {timeout} s:\n"
                           f"{open(self.log_path).read()[-1000:]}")


def _read_json(path: str) -> dict:
    try:
        with open(path) as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return {}


# A dilated link delays the opening handshake by a dilated one-way time (the paper's 120 ms RTT at
# x105: 6.3 s), past the server's 5 s default, and the robots saw "did not receive a valid HTTP
# response"; a keepalive ping's pong comes a dilated round trip later, past the 20 s default beyond
# about x160. The bench's servers listen on loopback only, so they wait as long as any link it emulates.
BENCH_HANDSHAKE_TIMEOUT_S = 120.0
BENCH_PING_TIMEOUT_S = 120.0


def link_timeouts(one_way_ms: float, jitter_ms: float = 0.0) -> dict:
    """A client's connect and keepalive timeouts across an emulated link: the defaults plus two
    (dilated) round trips."""
    margin = 4 * (one_way_ms + jitter_ms) / 1000
    return {"connect_timeout": 10 + margin, "ping_timeout_s": 20 + margin}


@contextmanager
def cloud_server(model: str, exits: Optional[str], cores=None, threads: int = 1,
                 robot_ids: Sequence[str] = ("bench",), profile: Optional[str] = None,
                 extra_args: Sequence[str] = (), handshake_timeout_s: float = BENCH_HANDSHAKE_TIMEOUT_S,
                 workdir: Optional[str] = None):
    """Start verifier_server pinned to ``cores`` (emulating ``profile``'s cloud device when given);
    yield its port and a valid token per robot. Its tokens, logs and stats (the final totals are
    written as it exits) go to ``workdir``, the caller's to keep; by default a temporary folder,
    removed when the server has stopped."""
    tokens = {robot: secrets.token_hex(16) for robot in robot_ids}
    owned = workdir is None
    workdir = tempfile.mkdtemp(prefix="bench_cloud_") if owned else workdir
    os.makedirs(workdir, exist_ok=True)
    tokens_path = os.path.join(workdir, "tokens.yaml")
    with open(tokens_path, "w") as handle:
        handle.write("robots:\n" + "".join(f"  {robot}: {{token_sha256: {hash_token(token)}}}\n"
                                            for robot, token in tokens.items()))
    port = free_port()
    log_path = os.path.join(workdir, "server.log")
    stats_path = os.path.join(workdir, "stats.json")
    cmd = [sys.executable, "-m", "cloud_verifier_bridge.server", "--model", model, "--tokens", tokens_path,
           "--port", str(port), "--threads", str(threads), "--device", "cpu", "--stats-file", stats_path,
           "--max-connections-per-address", str(max(32, 4 * len(tokens))),
           "--handshake-timeout-s", str(handshake_timeout_s), "--ping-timeout-s", str(BENCH_PING_TIMEOUT_S)]
    if exits:
        cmd += ["--exits", exits]
    if profile:
        cmd += ["--compute-profile", profile]
    cmd += list(extra_args)
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                preexec_fn=(lambda: os.sched_setaffinity(0, cores)) if cores else None)
    try:
        _wait_port(port, proc, 180, "verifier_server", log_path)
        yield Cloud(port, tokens, proc, log_path, stats_path, profile, list(tokens))
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if owned:
            shutil.rmtree(workdir, ignore_errors=True)


@contextmanager
def wan_link(cloud: Cloud, one_way_ms: float, jitter_ms: float = 0.0, bandwidth_mbps: float = 0.0,
             loss: float = 0.0, cores=None, robot_ids: Optional[Sequence[str]] = None):
    """A link emulator process in front of the cloud; yields a connected edge transport (a list
    of them, one per robot, when ``robot_ids`` is given)."""
    port = free_port()
    log_path = cloud.log_path.replace("server.log", f"link_{port}.log")
    cmd = [sys.executable, "-m", "specdec.transport.link_emulator", "--listen", str(port),
           "--upstream", f"127.0.0.1:{cloud.port}", "--delay-ms", str(one_way_ms), "--jitter-ms", str(jitter_ms),
           "--bandwidth-mbps", str(bandwidth_mbps), "--loss", str(loss), "--max-seconds", "3600"]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                preexec_fn=(lambda: os.sched_setaffinity(0, cores)) if cores else None)
    clients = []
    try:
        _wait_port(port, proc, 30, "link_emulator", log_path)
        for robot in robot_ids or [cloud.robot_id]:
            # a connection attempt and a keepalive ping each span a round trip of the (dilated) link
            clients.append(WebSocketClient(f"ws://127.0.0.1:{port}", robot, cloud.tokens[robot],
                                           **link_timeouts(one_way_ms, jitter_ms)))
        yield clients if robot_ids else clients[0]
    finally:
        for client in clients:
            client.close()
        proc.terminate()
        proc.wait(10)
