"""Soak (issue 17 item 16): 2 robots decide for 30 minutes while a fault is injected every minute.

    python test/faults/soak.py                              # 30 min, a fault every 60 s
    python test/faults/soak.py --minutes 5 --fault-every 20 # the short version

A real ``verifier_server`` (committed Go2 target) sits behind the link emulator; the robots (Go2
draft, WebSocket link) decide in a loop through it. Faults, in turn: the link drops every
connection; the server stalls (SIGSTOP 2 s); garbage frames (NaN, 5000-digit numbers, deep
nesting, another protocol version) from an authenticated connection; a flood of 500 idle
sockets; a burst of an abusive robot (many sessions, oversized prompt and images, duplicate
blocks); wrong tokens; and with ``--restarts`` a kill -9 and restart of the server (its RSS then
starts over, so growth is measured only without it).

Every ``--sample-every`` seconds the verifier's and this process's RSS and thread count are
recorded with the robots' decisions so far; the report is a table over time and the growth of
each from the end of the first round of faults (every kind has happened once, so allocator
high-water marks are reached) to the end. Bar: growth < 5 %.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import threading
import time
from typing import Callable, Dict, List, Optional

from harness import (Robot, ServerProcess, close_all, idle_sockets, proc_status,
                     robot_tokens)

GARBAGE = [
    '{"kind":"draft_block","data":{"session_id":"g","topk_probs":[NaN]}}',
    '{"kind":"draft_block","data":{"session_id":"g","seq":' + "9" * 5000 + "}}",
    "[" * 50000 + "]" * 50000,
    '{"kind":"session_start","data":{"protocol_version":999,"session_id":"g"}}',
    "not json at all",
]


class Soak:
    FAULTS = ("link_drop", "stall", "garbage", "flood", "abuse", "wrong_tokens")

    def __init__(self, workdir: str, robots: int = 2, restarts: bool = False, faults=FAULTS,
                 server_env: Optional[Dict[str, str]] = None):
        from specdec.transport.link_emulator import LinkEmulator, LinkProfile

        self.tokens = robot_tokens(robots)
        self.abuser_token = robot_tokens(1, "abuser")["abuser-0"]
        self.server = ServerProcess(workdir, {**self.tokens, "abuser": self.abuser_token}, env=server_env).start()
        self.link = LinkEmulator("127.0.0.1", self.server.port, LinkProfile(one_way_delay_ms=5))
        self.link.start()
        uri = f"ws://127.0.0.1:{self.link.port}"
        self.robots = [Robot(rid, tok, uri, timeout_s=2.0, connect_timeout=2.0, seed=i)
                       for i, (rid, tok) in enumerate(self.tokens.items())]
        self.faults: List[Callable[[], None]] = [getattr(self, name) for name in faults]
        if restarts:
            self.faults.append(self.restart)
        self.log: List[str] = []

    # -- faults ------------------------------------------------------------------------------
    def link_drop(self):
        self.link.drop_connections()

    def stall(self):
        self.server.signal(signal.SIGSTOP)
        time.sleep(2.0)
        self.server.signal(signal.SIGCONT)

    def garbage(self):
        from websockets.sync.client import connect

        with connect(f"ws://127.0.0.1:{self.server.port}", proxy=None, additional_headers={
                "Authorization": f"Bearer {self.abuser_token}", "X-Robot-Id": "abuser"}) as conn:
            for frame in GARBAGE:
                conn.send(frame)
                conn.recv(timeout=10)

    def flood(self):
        socks = idle_sockets(self.server.port, 500)
        time.sleep(3.0)
        close_all(socks)

    def abuse(self):
        from abuse import abuser_process  # its own process: its memory is not the robots'

        abuser = abuser_process(f"ws://127.0.0.1:{self.server.port}", self.abuser_token, 5.0, cloud_only_tokens=256)
        abuser.communicate(timeout=120)

    def wrong_tokens(self):
        from specdec.protocol import SessionStart
        from specdec.transport.base import TransportError
        from specdec.transport.websocket import WebSocketClient

        for _ in range(20):
            client = WebSocketClient(f"ws://127.0.0.1:{self.server.port}", "abuser", "wrong", connect_timeout=1)
            try:
                client.send(SessionStart(session_id="x", robot_id="abuser"))
            except TransportError:
                pass
            client.close()

    def restart(self):
        self.server.kill()
        time.sleep(1.0)
        self.server.start()

    # -- run -----------------------------------------------------------------------------------
    def sample(self, elapsed: float) -> Dict:
        server, local = self.server.status(), proc_status(os.getpid())
        return {
            "t_s": round(elapsed),
            "server_rss_mb": round(server["VmRSS"] / 1024, 1), "server_threads": server["Threads"],
            "robots_rss_mb": round(local["VmRSS"] / 1024, 1), "robots_threads": local["Threads"],
            "decisions_ok": sum(o.ok for r in self.robots for o in r.outcomes),
            "decisions_failed": sum(not o.ok for r in self.robots for o in r.outcomes),
        }

    def run(self, minutes: float, fault_every: float, sample_every: float) -> Dict:
        stop = threading.Event()
        loops = [robot.run(stop, pause_s=0.1) for robot in self.robots]
        started = time.monotonic()
        samples, injected = [], []
        next_fault, next_sample = fault_every, 0.0
        try:
            while (elapsed := time.monotonic() - started) < minutes * 60:
                if elapsed >= next_sample:
                    samples.append(self.sample(elapsed))
                    next_sample += sample_every
                if elapsed >= next_fault:
                    fault = self.faults[len(injected) % len(self.faults)]
                    injected.append((round(elapsed), fault.__name__))
                    try:
                        fault()
                    except Exception as exc:  # a fault that fails to inject is reported, the soak goes on
                        self.log.append(f"{fault.__name__}: {type(exc).__name__}: {exc}")
                    next_fault += fault_every
                time.sleep(0.2)
            samples.append(self.sample(time.monotonic() - started))
        finally:
            stop.set()
            for loop in loops:
                loop.join(30)
        return self.summary(samples, injected, fault_every)

    def summary(self, samples: List[Dict], injected, fault_every: float) -> Dict:
        # From the end of the first round of faults (every kind once) to the end.
        settle = fault_every * (len(self.faults) + 1)
        reference = [s for s in samples if s["t_s"] >= settle][:1] or samples[:1]
        first, last = reference[0], samples[-1]
        growth = {key: round(100.0 * (last[key] - first[key]) / first[key], 1)
                  for key in ("server_rss_mb", "server_threads", "robots_rss_mb", "robots_threads")}
        per_robot = {r.robot_id: {"ok": sum(o.ok for o in r.outcomes), "failed": sum(not o.ok for o in r.outcomes)}
                     for r in self.robots}
        return {"samples": samples, "faults": injected, "growth_percent": growth, "growth_from_s": first["t_s"],
                "per_robot": per_robot, "fault_errors": self.log, "server_alive": self.server.proc.poll() is None}

    def close(self):
        for robot in self.robots:
            robot.close()
        self.link.stop()
        self.server.stop()


def report(result: Dict) -> str:
    keys = ["t_s", "server_rss_mb", "server_threads", "robots_rss_mb", "robots_threads", "decisions_ok",
            "decisions_failed"]
    rows = ["| " + " | ".join(keys) + " |", "|" + "---:|" * len(keys)]
    rows += ["| " + " | ".join(str(s[k]) for k in keys) + " |" for s in result["samples"]]
    rows.append(f"\ngrowth from t={result['growth_from_s']} s to the end (bar < 5 %): {result['growth_percent']}")
    rows.append(f"decisions per robot: {result['per_robot']}; faults injected: {len(result['faults'])}; "
                f"server alive: {result['server_alive']}")
    return "\n".join(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--fault-every", type=float, default=60.0, help="seconds between faults")
    parser.add_argument("--sample-every", type=float, default=30.0, help="seconds between samples")
    parser.add_argument("--robots", type=int, default=2)
    parser.add_argument("--restarts", action="store_true", help="add kill -9 + restart of the server to the faults")
    parser.add_argument("--faults", default=",".join(Soak.FAULTS), help="comma-separated subset, injected in turn")
    parser.add_argument("--malloc-arena-max", type=int, default=0,
                        help="MALLOC_ARENA_MAX for the server (0: what verifier_server sets itself, 2)")
    parser.add_argument("--out", default="", help="write the JSON result here too")
    args = parser.parse_args(argv)
    faults = args.faults.split(",")
    if set(faults) - set(Soak.FAULTS):
        parser.error(f"unknown faults {sorted(set(faults) - set(Soak.FAULTS))}")
    env = {"MALLOC_ARENA_MAX": str(args.malloc_arena_max)} if args.malloc_arena_max else None
    with tempfile.TemporaryDirectory(prefix="soak_") as workdir:
        soak = Soak(workdir, args.robots, args.restarts, faults, env)
        try:
            result = soak.run(args.minutes, args.fault_every, args.sample_every)
        finally:
            soak.close()
    print(report(result))
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(result, handle, indent=1)
    worst = max(result["growth_percent"].values())
    return 0 if worst < 5 and result["server_alive"] else 1


if __name__ == "__main__":
    sys.exit(main())
