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


def node_of(status_name: str) -> str:
    """The node of a diagnostics status named "<node>: <task>"."""
    return status_name.split(":", 1)[0].strip()


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
                                 lambda m: self.ready.update(node_of(s.name) for s in m.status), 10)
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
    """One map per episode (its own room: walls, objects, target, the robot's path from start
    to end; failed episodes in red, dashed, drawn above everything) and the latency histogram.
    Units on every axis; the title is a figure title that the layout keeps inside the image."""
    import math

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"red": "tab:red", "green": "tab:green", "blue": "tab:blue", "yellow": "gold"}
    n = max(1, len(episodes))
    cols = min(n, 5)
    rows = math.ceil(n / cols)
    fig = plt.figure(figsize=(3.2 * cols + 4.5, 3.4 * rows + 0.9), constrained_layout=True)
    grid = fig.add_gridspec(rows, cols + 1, width_ratios=[1.0] * cols + [1.4])
    fig.suptitle(f"{summary['mode']} @ RTT {summary['rtt_ms']:.0f} ms: {summary['successes']}/"
                 f"{summary['episodes']} episodes reached the target", fontsize=12)
    for i, e in enumerate(episodes):
        ax = fig.add_subplot(grid[i // cols, i % cols])
        ep = e["episode"] or {}
        half = float(ep.get("room_size", 6.0)) / 2.0
        ax.add_patch(plt.Rectangle((-half, -half), 2 * half, 2 * half, fill=False, lw=1.5,
                                   edgecolor="dimgray"))
        target = (ep.get("target") or {}).get("name")
        for obj in ep.get("objects", []):
            is_target = obj.get("name") == target
            ax.scatter([obj["x"]], [obj["y"]], c=colours.get(obj.get("color"), "grey"),
                       marker="*" if is_target else ("o" if obj.get("shape") == "ball" else "s"),
                       s=220 if is_target else 60, edgecolors="k", zorder=3)
        ok = e["success"]
        if e["path"]:
            xs, ys = zip(*e["path"])
            style = dict(color="tab:green", ls="-") if ok else dict(color="tab:red", ls="--")
            ax.plot(xs, ys, lw=2.0, zorder=5, label="path", **style)
            ax.plot(xs[0], ys[0], "o", mfc="white", mec="k", ms=7, zorder=6, label="start")
            ax.plot(xs[-1], ys[-1], "X", color=style["color"], mec="k", ms=9, zorder=6,
                    label="end")
        ax.set_xlim(-half - 0.2, half + 0.2)
        ax.set_ylim(-half - 0.2, half + 0.2)
        ax.set_aspect("equal")
        ax.set_xlabel("x (m)")
        ax.set_ylabel("y (m)")
        verdict = "reached" if ok else f"failed ({e['outcome']})"
        ax.set_title(f"seed {e['seed']}: {verdict}", fontsize=9,
                     color="tab:green" if ok else "tab:red")
        if i == 0:
            ax.legend(fontsize=7, loc="lower left")
    ax_lat = fig.add_subplot(grid[:, cols])
    lat = [d["latency_ms"] for e in episodes for d in e["decisions"]]
    ax_lat.hist(lat, bins=20, color="steelblue")
    ax_lat.set_title(f"per-decision latency: median {summary['latency_ms_median']:.0f} ms, "
                     f"p90 {summary['latency_ms_p90']:.0f} ms", fontsize=9)
    ax_lat.set_xlabel("decision latency (ms)")
    ax_lat.set_ylabel("decisions")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return fig


def main(argv=None):
    args = parse_args(argv)
    from ros_tools.launch_runner import launched
    from ros_tools.probe import Probe, ros_env

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
