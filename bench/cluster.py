"""Edge and cloud as two devices on one machine: pinned processes and an emulated WAN link.

The cloud is the real ``verifier_server`` process (WebSocket transport, token auth) pinned to
its own core(s); the link emulator process sits in front of it; the edge is the benchmark
process itself, pinned to another core. On this 2-core machine: edge = core 0, cloud = core 1.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Optional

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
    token: str
    robot_id: str
    proc: subprocess.Popen
    log_path: str


@contextmanager
def cloud_server(model: str, exits: Optional[str], cores=None, threads: int = 1, robot_id: str = "bench"):
    """Start verifier_server pinned to ``cores``; yield its port and a valid robot token."""
    token = secrets.token_hex(16)
    workdir = tempfile.mkdtemp(prefix="bench_cloud_")
    tokens = os.path.join(workdir, "tokens.yaml")
    with open(tokens, "w") as handle:
        handle.write(f"robots:\n  {robot_id}: {{token_sha256: {hash_token(token)}}}\n")
    port = free_port()
    log_path = os.path.join(workdir, "server.log")
    cmd = [sys.executable, "-m", "cloud_verifier_bridge.server", "--model", model, "--tokens", tokens,
           "--port", str(port), "--threads", str(threads), "--device", "cpu"]
    if exits:
        cmd += ["--exits", exits]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                preexec_fn=(lambda: os.sched_setaffinity(0, cores)) if cores else None)
    try:
        _wait_port(port, proc, 180, "verifier_server", log_path)
        yield Cloud(port, token, robot_id, proc, log_path)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextmanager
def wan_link(cloud: Cloud, one_way_ms: float, jitter_ms: float = 0.0, bandwidth_mbps: float = 0.0,
             loss: float = 0.0, cores=None):
    """A link emulator process in front of the cloud; yields a connected edge transport."""
    port = free_port()
    log_path = cloud.log_path.replace("server.log", f"link_{port}.log")
    cmd = [sys.executable, "-m", "specdec.transport.link_emulator", "--listen", str(port),
           "--upstream", f"127.0.0.1:{cloud.port}", "--delay-ms", str(one_way_ms), "--jitter-ms", str(jitter_ms),
           "--bandwidth-mbps", str(bandwidth_mbps), "--loss", str(loss), "--max-seconds", "3600"]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                preexec_fn=(lambda: os.sched_setaffinity(0, cores)) if cores else None)
    client = None
    try:
        _wait_port(port, proc, 30, "link_emulator", log_path)
        client = WebSocketClient(f"ws://127.0.0.1:{port}", cloud.robot_id, cloud.token, connect_timeout=10)
        yield client
    finally:
        if client is not None:
            client.close()
        proc.terminate()
        proc.wait(10)
