"""No one starves (issue 17 item 5): 4 well-behaved robots plus 1 abusive robot, one verifier.

    python test/faults/abuse.py --seconds 60          # each phase; prints a table and JSON

A real ``verifier_server`` (committed Go2 target) serves 4 robots deciding in a loop (the Go2
draft, a camera frame, the WebSocket link). Phase 1 measures them alone (baseline); phase 2 adds
one authenticated robot that abuses the server at once in every way issue 17 lists, each from its
own connection:

* ``sessions``   opens sessions as fast as it can and never finishes them;
* ``prompt``     a 32k-token instruction, and images: a PNG header claiming 30000x30000 pixels,
                 4 MiB of noise labelled png, a real 1024x1024 noise PNG;
* ``duplicates`` resends one draft block over and over;
* ``cloud_only`` asks for 4096 cloud-only tokens with no stop token.

Reported: the well-behaved robots' decision latency p50/p90 and failures per phase, the p90
ratio (bar: <= 2x, 0 failures), and the verifier's RSS and thread count (bar: bounded).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from typing import Dict, List

from harness import ROOT, INSTRUCTION, Robot, ServerProcess, go2_draft, percentile, robot_tokens

ABUSER = "abuser"


def _png(width: int, height: int, seed: int = 0) -> bytes:
    import numpy as np
    from PIL import Image

    pixels = (np.random.RandomState(seed).rand(height, width, 3) * 255).astype("uint8")
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _claimed_png(width: int, height: int) -> bytes:
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr
            + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr)))


class Abuser:
    """One authenticated robot that misbehaves from several connections at once."""

    BEHAVIOURS = ("sessions", "prompt", "duplicates", "cloud_only")

    def __init__(self, uri: str, token: str, cloud_only_tokens: int = 4096, behaviours=BEHAVIOURS):
        from specdec.transport.websocket import WebSocketClient

        self.uri, self.token = uri, token
        self.cloud_only_tokens = cloud_only_tokens
        self.fingerprint = go2_draft().fingerprint
        self.frame_png = _png(160, 120)
        self.sent: Dict[str, int] = {}
        self.errors: Dict[str, int] = {}
        self._clients = {name: WebSocketClient(uri, ABUSER, token, connect_timeout=5)
                         for name in behaviours if name != "cloud_only" or cloud_only_tokens}

    def _start(self, **fields):
        from specdec.protocol import SessionStart

        base = dict(session_id=uuid.uuid4().hex, robot_id=ABUSER, prompt=INSTRUCTION,
                    tokenizer_fingerprint=self.fingerprint, image_format="png", image_data=self.frame_png)
        base.update(fields)
        return SessionStart(**base)

    def _send(self, name: str, message) -> None:
        try:
            self._clients[name].send(message)
            self.sent[name] = self.sent.get(name, 0) + 1
        except Exception:
            self.errors[name] = self.errors.get(name, 0) + 1
            time.sleep(0.05)
        self._drain(name)

    def _drain(self, name: str) -> None:
        from specdec.transport.base import CloudTimeout

        try:
            while True:
                self._clients[name].recv(0)
        except CloudTimeout:
            pass

    def sessions(self, stop):
        while not stop.is_set():
            self._send("sessions", self._start())

    def prompt(self, stop):
        huge = [dict(prompt="go " * 32768), dict(image_data=_claimed_png(30000, 30000)),
                dict(image_data=os.urandom(4 * 1024 * 1024 - 1024)), dict(image_data=_png(1024, 1024))]
        i = 0
        while not stop.is_set():
            self._send("prompt", self._start(**huge[i % len(huge)]))
            i += 1
            stop.wait(0.05)

    def duplicates(self, stop):
        from specdec.protocol import DraftBlock

        start = self._start()
        self._send("duplicates", start)
        block = DraftBlock(session_id=start.session_id, seq=1, round=0, position=0, tokens=[5, 6, 7, 8], topk=1,
                           topk_ids=[5, 6, 7, 8], topk_probs=[1.0] * 4)
        while not stop.is_set():
            self._send("duplicates", block)

    def cloud_only(self, stop):
        from specdec.protocol import DecodingMode

        while not stop.is_set():
            self._send("cloud_only", self._start(mode=int(DecodingMode.CLOUD_ONLY),
                                                 max_new_tokens=self.cloud_only_tokens, stop_token_ids=[]))
            stop.wait(0.5)

    def run(self, stop) -> List[threading.Thread]:
        threads = [threading.Thread(target=getattr(self, name), args=(stop,), name=f"abuse-{name}", daemon=True)
                   for name in self._clients]
        for thread in threads:
            thread.start()
        return threads

    def close(self):
        for client in self._clients.values():
            client.close()


def abuser_process(uri: str, token: str, seconds: float, cloud_only_tokens: int = 4096,
                   behaviours=Abuser.BEHAVIOURS) -> subprocess.Popen:
    """The abuser in its own process, so it does not share the well-behaved robots' interpreter.
    It prints "ready" once it runs, then after ``seconds`` one JSON line of what it sent."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen(["nice", "-n", "19", sys.executable, os.path.abspath(__file__), "--abuse", uri, token, "--seconds",
                             str(seconds), "--cloud-only-tokens", str(cloud_only_tokens), "--behaviours", ",".join(behaviours)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)


def _abuser_report(abuser: subprocess.Popen, timeout: float = 60.0) -> Dict:
    """The abuser's last line (what it sent). On a loaded machine the niced process can print it and
    then be slow to exit (its threads blocked on a server that refuses them): it is killed then, and
    the output already read is kept (``communicate`` loses none on a retry)."""
    try:
        out = abuser.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        abuser.kill()
        out = abuser.communicate()[0]
    return json.loads(out.strip().splitlines()[-1])


def _phase(server: ServerProcess, robots: List[Robot], seconds: float, abuse=None) -> Dict:
    """Robots decide for ``seconds``; ``abuse`` is (uri, token, cloud_only_tokens, behaviours) when abused."""
    stop = threading.Event()
    for robot in robots:
        robot.outcomes.clear()
    samples = []
    abuser = abuser_process(*abuse[:2], seconds, *abuse[2:]) if abuse else None
    if abuser is not None:
        ready = abuser.stdout.readline()  # "ready" once its links are up
        assert ready.strip() == "ready", ready
    started = time.monotonic()
    threads = [robot.run(stop, pause_s=0.02) for robot in robots]
    while time.monotonic() - started < seconds:
        samples.append(server.status())
        time.sleep(0.5)
    stop.set()
    for thread in threads:
        thread.join(60)
    sent = _abuser_report(abuser) if abuser is not None else {}
    outcomes = [o for robot in robots for o in robot.outcomes]
    latencies = [o.seconds * 1000 for o in outcomes if o.ok]
    failures = [o.error for o in outcomes if not o.ok]
    return {
        "decisions": len(outcomes),
        "failures": len(failures),
        "failure_examples": sorted(set(failures))[:3],
        "p50_ms": round(percentile(latencies, 50), 1),
        "p90_ms": round(percentile(latencies, 90), 1),
        "max_ms": round(max(latencies), 1) if latencies else None,
        "server_rss_mb_peak": round(max(s["VmRSS"] for s in samples) / 1024, 1),
        "server_threads_peak": max(s["Threads"] for s in samples),
        "abuser_sent": sent,
    }


def run_abuse(workdir: str, seconds: float = 20.0, robots: int = 4, cloud_only_tokens: int = 4096,
              timeout_s: float = 5.0, behaviours=Abuser.BEHAVIOURS) -> Dict:
    """Baseline phase, then the abuse phase, ``seconds`` each; returns both and the p90 ratio."""
    tokens = robot_tokens(robots)
    abuser_token = robot_tokens(1, ABUSER)[f"{ABUSER}-0"]
    with ServerProcess(workdir, {**tokens, ABUSER: abuser_token}) as server:
        uri = f"ws://127.0.0.1:{server.port}"
        fleet = [Robot(rid, tok, uri, timeout_s=timeout_s, seed=i) for i, (rid, tok) in enumerate(tokens.items())]
        for robot in fleet:  # warm: connect, first prefill
            robot.decide()
        baseline = _phase(server, fleet, seconds)
        abused = _phase(server, fleet, seconds, (uri, abuser_token, cloud_only_tokens, behaviours))
        for robot in fleet:
            robot.close()
        after = server.status()
    return {
        "robots": robots,
        "seconds_per_phase": seconds,
        "edge_timeout_s": timeout_s,
        "abuse": list(behaviours),
        "baseline": baseline,
        "abused": abused,
        "p90_ratio": round(abused["p90_ms"] / baseline["p90_ms"], 2),
        "server_rss_mb_after": round(after["VmRSS"] / 1024, 1),
        "server_threads_after": after["Threads"],
    }


def report(result: Dict) -> str:
    rows = ["| phase | decisions | failures | p50 ms | p90 ms | max ms | server RSS peak MB | threads peak |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for phase in ("baseline", "abused"):
        r = result[phase]
        rows.append(f"| {phase} | {r['decisions']} | {r['failures']} | {r['p50_ms']} | {r['p90_ms']} | "
                    f"{r['max_ms']} | {r['server_rss_mb_peak']} | {r['server_threads_peak']} |")
    rows.append(f"\np90 ratio (abused / baseline): {result['p90_ratio']}  (bar <= 2)")
    return "\n".join(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each phase")
    parser.add_argument("--robots", type=int, default=4)
    parser.add_argument("--cloud-only-tokens", type=int, default=4096, help="0: leave the cloud-only abuse out")
    parser.add_argument("--timeout-s", type=float, default=5.0, help="the well-behaved robots' cloud timeout")
    parser.add_argument("--behaviours", default=",".join(Abuser.BEHAVIOURS),
                        help="comma-separated subset of " + ", ".join(Abuser.BEHAVIOURS))
    parser.add_argument("--abuse", nargs=2, metavar=("URI", "TOKEN"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    behaviours = args.behaviours
    unknown = set(behaviours.split(",")) - set(Abuser.BEHAVIOURS)
    if unknown:
        parser.error(f"unknown behaviours {sorted(unknown)}")
    if args.abuse:  # the abuser's own process (see abuser_process)
        abuser = Abuser(*args.abuse, args.cloud_only_tokens, behaviours.split(","))
        print("ready", flush=True)
        stop = threading.Event()
        threads = abuser.run(stop)
        time.sleep(args.seconds)
        stop.set()
        for thread in threads:
            thread.join(30)
        abuser.close()
        print(json.dumps({"sent": abuser.sent, "refused_or_failed": abuser.errors}), flush=True)
        return 0
    with tempfile.TemporaryDirectory(prefix="abuse_") as workdir:
        result = run_abuse(workdir, args.seconds, args.robots, args.cloud_only_tokens, args.timeout_s,
                           behaviours.split(","))
    print(report(result))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
