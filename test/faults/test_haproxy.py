"""Issue 18 item 5: two verifier_server replicas behind HAProxy (deploy/haproxy.cfg), robot-id affinity.

The deployment file itself runs here on loopback, TLS included (HAProxy ends the robots' TLS and
speaks TLS to the replicas). Four robots decide in a loop through HAProxy; each sticks to one
replica. One replica stalls and is then killed mid-run (so every robot on it is waiting for a
reply at that moment): each of those robots gets exactly one explicit failed decision, then
decides on the other replica; the robots on the surviving replica never fail.
"""

import os
import shutil
import signal
import ssl
import subprocess
import threading
import time

import pytest

from harness import ROOT, Robot, ServerProcess, free_port, make_certificate, robot_tokens

HAPROXY = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")

pytestmark = [
    pytest.mark.faults,
    pytest.mark.timeout(300),
    pytest.mark.skipif(HAPROXY is None, reason="haproxy is not installed (CI installs it: apt-get install haproxy)"),
]


def start_haproxy(workdir, port, replicas, pem, ca):
    env = dict(os.environ, LB_BIND=f"127.0.0.1:{port}", LB_CERT=pem, VERIFIER_CA=ca,
               VERIFIER_1=f"127.0.0.1:{replicas[0].port}", VERIFIER_2=f"127.0.0.1:{replicas[1].port}")
    log = open(os.path.join(workdir, "haproxy.log"), "w")
    proc = subprocess.Popen([HAPROXY, "-db", "-f", os.path.join(ROOT, "deploy", "haproxy.cfg")], env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    return proc, log.name


def test_robots_stick_to_a_replica_and_move_once_when_it_dies(tmp_path):
    workdir = str(tmp_path)
    cert, key, pem = make_certificate(workdir)
    tokens = robot_tokens(4)
    tls = ["--tls-cert", cert, "--tls-key", key, "--max-connections-per-address", "10000"]
    replicas = [ServerProcess(workdir, tokens, extra_args=tls, name=f"replica{i}") for i in (1, 2)]
    for replica in replicas:
        replica.launch()
    port = free_port()
    haproxy = None
    robots, loops = [], []
    stop = threading.Event()
    try:
        for replica in replicas:
            replica.wait_listening()
        haproxy, haproxy_log = start_haproxy(workdir, port, replicas, pem, cert)
        context = ssl.create_default_context(cafile=cert)
        robots = [Robot(rid, tok, f"wss://localhost:{port}", timeout_s=10.0, connect_timeout=10.0, seed=i,
                        ssl_context=context) for i, (rid, tok) in enumerate(tokens.items())]
        for robot in robots:
            assert robot.decide().ok, (robot.outcomes[-1].error, open(haproxy_log).read()[-2000:])
        placement = {r.robot_id: [i for i, rep in enumerate(replicas) if r.robot_id in rep.robots_connected()]
                     for r in robots}
        assert all(len(where) == 1 for where in placement.values()), placement  # each robot on one replica
        counts = [sum(where == [i] for where in placement.values()) for i in (0, 1)]
        victim = 0 if counts[0] >= counts[1] else 1
        moved = [r for r in robots if placement[r.robot_id] == [victim]]
        stayed = [r for r in robots if r not in moved]

        loops = [robot.run(stop) for robot in robots]
        time.sleep(1.5)
        replicas[victim].signal(signal.SIGSTOP)  # the robots on it are now waiting for replies ...
        time.sleep(0.5)
        replicas[victim].kill()  # ... when it dies
        killed = time.monotonic()
        deadline = killed + 30
        while not all(any(o.ok and o.started > killed for o in r.outcomes) for r in robots):
            assert time.monotonic() < deadline, [r.outcomes[-2:] for r in robots]
            time.sleep(0.1)
        time.sleep(1.5)  # and they keep going on the survivor
    finally:
        stop.set()
        for loop in loops:
            loop.join(30)
        for robot in robots:
            robot.close()
        if haproxy is not None:
            haproxy.terminate()
            haproxy.wait(10)
        for replica in replicas:
            replica.stop()

    survivor = replicas[1 - victim]
    lines = []
    for robot in robots:
        failures = [o for o in robot.outcomes if not o.ok]
        after = [o for o in robot.outcomes if o.started > killed]
        lines.append(f"{robot.robot_id}: {len(robot.outcomes)} decisions, {len(failures)} failed"
                     + (f" ({failures[0].error[:80]})" if failures else ""))
        if robot in moved:
            assert len(failures) == 1, (robot.robot_id, [o.error for o in failures])
            assert "connection to the verifier lost" in failures[0].error
            assert robot.outcomes[-1].ok and all(o.ok for o in robot.outcomes[robot.outcomes.index(failures[0]) + 1:])
            assert robot.robot_id in survivor.robots_connected()  # taken over by the other replica
        else:
            assert not failures, (robot.robot_id, failures[0].error)
            assert after and all(o.ok for o in after)
    print(f"replica{victim + 1} killed with {len(moved)} robot(s) on it, {len(stayed)} on the other:\n  "
          + "\n  ".join(lines))
