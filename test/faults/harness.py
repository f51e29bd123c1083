"""Real parts for fault tests and the soak/abuse benchmarks: verifier_server processes, robots.

* :class:`ServerProcess` - the real ``verifier_server`` (committed Go2 target + early exits) in
  its own process, with tokens for the robots it serves; faults are signals (SIGSTOP/SIGCONT,
  SIGKILL) and restarts on the same port; ``rss_kb()``/``threads()`` read ``/proc``.
* :class:`Robot` - one robot's edge: the committed Go2 draft in an ``EdgeDecoder`` over its own
  ``WebSocketClient``; ``decide()`` returns an :class:`Outcome` (latency, or the error text)
  instead of raising, so a loop can run through faults.
* :func:`idle_sockets` - a flood of TCP connections that never speak (from another loopback
  address than the robots, as an attacker elsewhere would be).

Nothing is mocked: only the robot's camera is a fixed random frame.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

GO2 = os.path.join(ROOT, "models", "go2_vlm")
INSTRUCTION = "go to the red ball"


def only_in_full_fault_runs(reason: str):
    """Skip unless ``make faults`` (FAULTS_FULL=1) runs the suite: for tests over make test's budget
    (every fault test carries the ``faults`` marker, registered in pytest.ini)."""
    import pytest

    return pytest.mark.skipif(os.environ.get("FAULTS_FULL") != "1", reason=f"{reason}; run by make faults")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_status(pid: int) -> Dict[str, int]:
    """VmRSS (kB) and Threads of a process, from /proc."""
    values = {}
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "Threads"):
                values[key] = int(rest.split()[0])
    return values


class ServerProcess:
    """A ``verifier_server`` process serving ``robots`` (robot id -> token) on ``port``."""

    def __init__(self, workdir: str, robots: Dict[str, str], port: Optional[int] = None,
                 extra_args: Sequence[str] = (), nofile: Optional[int] = None, name: str = "server",
                 env: Optional[Dict[str, str]] = None):
        from specdec.transport.websocket import hash_token

        self.workdir = workdir
        self.robots = dict(robots)
        self.port = port or free_port()
        self.extra_args = list(extra_args)
        self.nofile = nofile
        self.name = name
        self.env = dict(env or {})
        self.tokens_path = os.path.join(workdir, f"{name}_tokens.yaml")
        with open(self.tokens_path, "w") as handle:
            handle.write("robots:\n" + "".join(f"  {rid}: {{token_sha256: {hash_token(tok)}}}\n"
                                               for rid, tok in self.robots.items()))
        self.log_path = os.path.join(workdir, f"{name}.log")
        self.proc: Optional[subprocess.Popen] = None
        self.listening_at = 0.0  # time.monotonic() when the current process started listening

    def command(self) -> List[str]:
        return [sys.executable, "-m", "cloud_verifier_bridge.server", "--model", os.path.join(GO2, "target"),
                "--exits", os.path.join(GO2, "target", "early_exit.safetensors"), "--tokens", self.tokens_path,
                "--port", str(self.port), "--threads", "1", "--device", "cpu", *self.extra_args]

    def start(self, timeout: float = 120.0) -> "ServerProcess":
        return self.launch().wait_listening(timeout)

    def launch(self) -> "ServerProcess":
        """Start the process without waiting (start several, then wait_listening on each)."""
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
                   PYTHONUNBUFFERED="1", **self.env)
        limit = self.nofile

        def before_exec():
            if limit:
                import resource
                resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

        self._offset = os.path.getsize(self.log_path) if os.path.exists(self.log_path) else 0
        with open(self.log_path, "a") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=env,
                                         preexec_fn=before_exec)
        return self

    def wait_listening(self, timeout: float = 120.0) -> "ServerProcess":
        offset = self._offset
        deadline = time.monotonic() + timeout
        while "listening on" not in self.log_text(offset):
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_text(offset)[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} did not listen within {timeout} s:\n{self.log_text(offset)[-3000:]}")
            time.sleep(0.02)
        self.listening_at = time.monotonic()
        return self

    def log_text(self, offset: int = 0) -> str:
        try:
            with open(self.log_path, errors="replace") as handle:
                handle.seek(offset)
                return handle.read()
        except FileNotFoundError:
            return ""

    def robots_connected(self) -> List[str]:
        """Robot ids this server logged as connected (since its log began)."""
        return re.findall(r"robot (\S+) connected from", self.log_text())

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def status(self) -> Dict[str, int]:
        return proc_status(self.proc.pid)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def make_certificate(workdir: str, name: str = "localhost"):
    """A self-signed certificate for ``localhost`` and 127.0.0.1: (cert path, key path, cert+key PEM path)."""
    cert, key, pem = (os.path.join(workdir, f"{name}.{ext}") for ext in ("crt", "key", "pem"))
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", key, "-out", cert],
                   check=True, capture_output=True)
    with open(pem, "w") as out:
        out.write(open(cert).read() + open(key).read())
    return cert, key, pem


def robot_tokens(count: int, prefix: str = "go2") -> Dict[str, str]:
    return {f"{prefix}-{i}": secrets.token_hex(16) for i in range(count)}


_DRAFT = {}
_DRAFT_LOCK = threading.Lock()


def go2_draft():
    """The committed Go2 draft (loaded once per process; decoding with it is read-only)."""
    with _DRAFT_LOCK:
        if "draft" not in _DRAFT:
            import torch

            from specdec.models.loading import load_model

            torch.set_num_threads(1)
            _DRAFT["draft"] = load_model(os.path.join(GO2, "draft"), name="draft")
        return _DRAFT["draft"]


def camera_frame(seed: int = 0):
    import numpy as np

    return (np.random.RandomState(seed).rand(120, 160, 3) * 255).astype("uint8")


@dataclass
class Outcome:
    started: float  # time.monotonic()
    seconds: float
    ok: bool
    error: str = ""
    text: str = ""


@dataclass
class Robot:
    """One robot's edge over its own WebSocket link (through ``uri``)."""

    robot_id: str
    token: str
    uri: str
    timeout_s: float = 5.0  # the edge's cloud_timeout_s
    connect_timeout: float = 5.0
    seed: int = 0
    ssl_context: object = None
    outcomes: List[Outcome] = field(default_factory=list)

    def __post_init__(self):
        from specdec.engine.drafter import EdgeDecoder
        from specdec.transport.websocket import WebSocketClient

        self.client = WebSocketClient(self.uri, self.robot_id, self.token, ssl_context=self.ssl_context,
                                      connect_timeout=self.connect_timeout)
        self.decoder = EdgeDecoder(go2_draft(), self.client, robot_id=self.robot_id, timeout_s=self.timeout_s,
                                   max_new_tokens=8)
        self.frame = camera_frame(self.seed)

    def decide(self) -> Outcome:
        t0 = time.monotonic()
        try:
            result = self.decoder.decode(INSTRUCTION, self.frame)
            outcome = Outcome(t0, time.monotonic() - t0, True, text=result.text)
        except Exception as exc:  # every failure is explicit: counted with its reason
            outcome = Outcome(t0, time.monotonic() - t0, False, error=f"{type(exc).__name__}: {exc}")
        self.outcomes.append(outcome)
        return outcome

    def run(self, stop: threading.Event, pause_s: float = 0.0) -> threading.Thread:
        """Decide in a loop in a thread until ``stop`` is set."""
        def loop():
            while not stop.is_set():
                self.decide()
                if pause_s:
                    stop.wait(pause_s)

        thread = threading.Thread(target=loop, name=f"robot-{self.robot_id}", daemon=True)
        thread.start()
        return thread

    def close(self):
        self.client.close()


def idle_sockets(port: int, count: int, source: str = "127.0.0.2", host: str = "127.0.0.1") -> List[socket.socket]:
    """``count`` TCP connections to ``host:port`` from ``source`` that never send a byte."""
    socks = []
    for _ in range(count):
        s = socket.socket()
        s.bind((source, 0))
        s.settimeout(5)
        try:
            s.connect((host, port))
        except OSError:
            s.close()
            continue
        socks.append(s)
    return socks


def close_all(socks) -> None:
    for s in socks:
        try:
            s.close()
        except OSError:
            pass


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, int(round(q / 100 * (len(ordered) - 1)))))
    return ordered[index]
