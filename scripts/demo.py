#!/usr/bin/env python3
"""make demo: the simulated Go2 closed loop, decoded with edge/cloud speculative decoding.

Starts launch/sim.launch.yaml through the launch runner (the same file ``ros2 launch`` runs on a
robot): verifier_server behind the link emulator (emulated RTT), cloud_verifier_bridge in remote
mode, edge_spec_drafter, go2_vlm_control and the simulated Go2. This script is one more ROS node:
it resets the simulator for each seeded episode, watches the decisions and the robot, and ends
with a summary and a PNG plot in results/demo/.

    python scripts/demo.py --episodes 5 --rtt-ms 50 --mode speculative_early_exit
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=5)
    parser.add_argument("--first-seed", type=int, default=1000, help="episode seeds first..first+episodes-1")
    parser.add_argument("--rtt-ms", type=float, default=50.0)
    parser.add_argument("--mode", default="speculative_early_exit",
                        choices=["speculative_early_exit", "speculative", "cloud_only", "edge_only"])
    parser.add_argument("--max-decisions", type=int, default=30, help="per episode")
    parser.add_argument("--episode-timeout-s", type=float, default=90.0)
    parser.add_argument("--models", default=os.path.join(ROOT, "models", "go2_vlm"))
    parser.add_argument("--out", default=os.path.join(ROOT, "results", "demo"))
    return parser.parse_args(argv)


class DemoMonitor:
    """Resets episodes and records what happens, from inside the ROS graph."""

    def __init__(self, probe):
        from nav_msgs.msg import Odometry
        from rclpy.qos import DurabilityPolicy, QoSProfile
        from std_msgs.msg import String, UInt32

        from edge_cloud_vlm_msgs.msg import DecodedAction
        from specdec_ros.qos import COMMAND_QOS, SENSOR_QOS

        self.probe = probe
        self.lock = threading.Lock()
        self.episode = None
        self.state = {}
        self.decisions = []
        self.path = []
        latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        node = probe.node
        node.create_subscription(String, "sim/episode", self._on_episode, latched)
        node.create_subscription(String, "sim/state", self._on_state, 10)
        node.create_subscription(DecodedAction, "decoded_action", self._on_action, COMMAND_QOS)
        node.create_subscription(Odometry, "odom", self._on_odom, SENSOR_QOS)
        from diagnostic_msgs.msg import DiagnosticArray

        self.ready = set()
        node.create_subscription(DiagnosticArray, "/diagnostics",
                                 lambda m: self.ready.update(s.name for s in m.status), 10)
        self.reset_pub = node.create_publisher(UInt32, "sim/reset", 10)
        self.UInt32 = UInt32

    def _on_episode(self, msg):
        with self.lock:
            self.episode = json.loads(msg.data)

    def _on_state(self, msg):
        with self.lock:
            self.state = json.loads(msg.data)

    def _on_action(self, msg):
        with self.lock:
            self.decisions.append({"t": time.monotonic(), "text": msg.text, "valid": msg.valid,
                                   "instruction": msg.instruction,
                                   "frame_stamp": msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9,
                                   "action": msg.action, "reject_reason": msg.reject_reason,
                                   "latency_ms": msg.stats.latency_ms, "new_tokens": msg.stats.new_tokens,
                                   "rounds": msg.stats.rounds, "drafted": msg.stats.drafted_tokens,
                                   "accepted": msg.stats.accepted_tokens, "hints": msg.stats.hints,
                                   "hints_correct": msg.stats.hints_correct, "predrafts": msg.stats.predrafts,
                                   "predraft_hits": msg.stats.predraft_hits,
                                   "target_passes": msg.stats.target_forward_passes,
                                   "bytes": msg.stats.bytes_sent + msg.stats.bytes_received})

    def _on_odom(self, msg):
        with self.lock:
            self.path.append((msg.pose.pose.position.x, msg.pose.pose.position.y))

    def wait_ready(self, names=("edge_spec_drafter", "cloud_verifier_bridge"), timeout_s=120.0):
        """Nodes report on /diagnostics once constructed (models loaded, subscriptions made)."""
        deadline = time.monotonic() + timeout_s
        while not set(names) <= self.ready:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nodes not ready after {timeout_s:.0f} s: {sorted(set(names) - self.ready)}")
            time.sleep(0.2)

    def _belongs(self, decision) -> bool:
        """A decision counts for the current episode only if it was made on one of its frames with
        its instruction (the edge keeps deciding across a reset)."""
        ep = self.episode or {}
        return (decision["frame_stamp"] >= ep.get("start_stamp", 0.0)
                and decision["instruction"] == ep.get("instruction"))

    def run_episode(self, seed, max_decisions, timeout_s):
        with self.lock:
            self.episode, self.decisions, self.path, self.state = None, [], [], {}
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # the sim may still be starting: keep asking
            self.reset_pub.publish(self.UInt32(data=seed))
            time.sleep(0.5)
            with self.lock:
                if self.episode and self.episode.get("seed") == seed:
                    break
        else:
            raise TimeoutError(f"simulator did not start episode {seed}")
        with self.lock:
            self.path = []
        t0 = time.monotonic()
        outcome = "timeout"
        decisions = []
        while time.monotonic() - t0 < timeout_s:
            time.sleep(0.1)
            with self.lock:
                decisions = [d for d in self.decisions if self._belongs(d)]
            done = [i for i, d in enumerate(decisions) if d["valid"] and d["action"] == "done"]
            if done:
                outcome = "done"
                decisions = decisions[:done[0] + 1]
                break
            if len(decisions) >= max_decisions:
                outcome = "max_decisions"
                decisions = decisions[:max_decisions]
                break
        time.sleep(0.3)
        with self.lock:  # decisions made after the episode ended (the edge keeps deciding) are not counted
            return {"seed": seed, "instruction": self.episode.get("instruction"), "outcome": outcome,
                    "success": bool(self.state.get("success")), "final_state": dict(self.state),
                    "episode": self.episode, "decisions": decisions, "path": list(self.path),
                    "seconds": time.monotonic() - t0}


def summarise(episodes, args):
    decisions = [d for e in episodes for d in e["decisions"]]
    lat = sorted(d["latency_ms"] for d in decisions) or [0.0]
    drafted = sum(d["drafted"] for d in decisions)
    predrafts = sum(d["predrafts"] for d in decisions)
    hints = sum(d["hints"] for d in decisions)
    return {
        "mode": args.mode, "rtt_ms": args.rtt_ms, "episodes": len(episodes),
        "successes": sum(e["success"] for e in episodes),
        "success_rate": sum(e["success"] for e in episodes) / max(len(episodes), 1),
        "decisions": len(decisions),
        "invalid_decisions": sum(not d["valid"] for d in decisions),
        "latency_ms_median": statistics.median(lat),
        "latency_ms_p90": lat[min(len(lat) - 1, int(0.9 * len(lat)))],
        "acceptance_rate": sum(d["accepted"] for d in decisions) / drafted if drafted else 0.0,
        "hint_accuracy": sum(d["hints_correct"] for d in decisions) / hints if hints else 0.0,
        "predraft_hit_rate": sum(d["predraft_hits"] for d in decisions) / predrafts if predrafts else 0.0,
        "tokens_per_round": (sum(d["new_tokens"] for d in decisions) / sum(d["rounds"] for d in decisions)
                             if sum(d["rounds"] for d in decisions) else 0.0),
        "target_passes_per_decision": sum(d["target_passes"] for d in decisions) / max(len(decisions), 1),
    }


def plot(episodes, summary, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_map, ax_lat) = plt.subplots(1, 2, figsize=(12, 5))
    colours = {"red": "r", "green": "g", "blue": "b", "yellow": "y", "orange": "orange", "purple": "purple"}
    for i, e in enumerate(episodes):
        if e["path"]:
            xs, ys = zip(*e["path"])
            ax_map.plot(xs, ys, lw=1.5, label=f"seed {e['seed']} {'✓' if e['success'] else '✗'}")
            ax_map.plot(xs[-1], ys[-1], "k.")
        target = (e["episode"] or {}).get("target")
        for obj in (e["episode"] or {}).get("objects", []):
            if i == 0 or obj.get("name") == target:
                c = colours.get(str(obj.get("colour", obj.get("color", ""))), "grey")
                ax_map.scatter([obj["x"]], [obj["y"]], c=c, marker="*" if obj.get("name") == target else "o",
                               s=140 if obj.get("name") == target else 40, edgecolors="k", alpha=0.8)
    ax_map.set_aspect("equal")
    ax_map.set_title(f"robot paths ({summary['successes']}/{summary['episodes']} reached the target)")
    ax_map.legend(fontsize=7)
    lat = [d["latency_ms"] for e in episodes for d in e["decisions"]]
    ax_lat.hist(lat, bins=20, color="steelblue")
    ax_lat.set_title(f"{summary['mode']} @ RTT {summary['rtt_ms']:.0f} ms: per-decision latency "
                     f"(median {summary['latency_ms_median']:.0f} ms)")
    ax_lat.set_xlabel("ms")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    from specdec_ros.harness import Probe, launched, ros_env

    from specdec.transport.websocket import hash_token

    if not os.path.isfile(os.path.join(args.models, "target", "config.json")):
        print(f"demo: no trained Go2 VLM pair under {args.models}; run 'make models'", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    token = secrets.token_hex(16)
    token_file = os.path.join(args.out, "robot.token")
    with open(token_file, "w") as handle:
        handle.write(token + "\n")
    os.chmod(token_file, 0o600)
    tokens = os.path.join(args.out, "robot_tokens.yaml")
    with open(tokens, "w") as handle:
        handle.write(f"robots:\n  go2: {{token_sha256: {hash_token(token)}}}\n")
    env = ros_env()
    started = time.monotonic()
    print(f"demo: {args.episodes} episodes, mode {args.mode}, emulated RTT {args.rtt_ms:.0f} ms "
          f"(ROS_DOMAIN_ID {env['ROS_DOMAIN_ID']}); logs in {args.out}/launch.log", flush=True)
    launch_args = {"mode": args.mode, "models": args.models, "tokens": tokens, "token_file": token_file,
                   "rtt_ms": args.rtt_ms, "one_way_ms": args.rtt_ms / 2,
                   "server_port": 18900 + int(env["ROS_DOMAIN_ID"]), "link_port": 19100 + int(env["ROS_DOMAIN_ID"])}
    probe = Probe(env, "demo_monitor")
    monitor = DemoMonitor(probe)
    episodes = []
    try:
        with launched("sim.launch.yaml", launch_args, env, os.path.join(args.out, "launch.log")) as proc:
            monitor.wait_ready()
            print(f"demo: all nodes up after {time.monotonic() - started:.0f} s", flush=True)
            for i in range(args.episodes):
                if proc.poll() is not None:
                    print("demo: the launch stopped early; see launch.log", file=sys.stderr)
                    return 1
                seed = args.first_seed + i
                result = monitor.run_episode(seed, args.max_decisions, args.episode_timeout_s)
                episodes.append(result)
                lat = [d["latency_ms"] for d in result["decisions"]] or [0]
                print(f"[{i + 1}/{args.episodes}] seed {seed} '{result['instruction']}': "
                      f"{'SUCCESS' if result['success'] else 'fail'} ({result['outcome']}), "
                      f"{len(result['decisions'])} decisions, median {statistics.median(lat):.0f} ms/decision, "
                      f"{result['seconds']:.0f} s", flush=True)
    finally:
        probe.close()
    summary = summarise(episodes, args)
    summary["wall_s"] = time.monotonic() - started
    with open(os.path.join(args.out, "summary.json"), "w") as handle:
        json.dump({"summary": summary, "episodes": episodes}, handle, indent=1, default=str)
    plot(episodes, summary, os.path.join(args.out, "demo.png"))
    print("\n== demo summary ==")
    for key, value in summary.items():
        print(f"  {key:28s} {value:.3f}" if isinstance(value, float) else f"  {key:28s} {value}")
    print(f"  plot: {os.path.join(args.out, 'demo.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
