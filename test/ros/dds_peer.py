"""Peer process for the cross-process DDS round-trip test (run as a script, not by pytest).

  python dds_peer.py echo  TYPES...   subscribe to /rt/<Type> and republish on /rt/<Type>/echo
  python dds_peer.py probe TYPES...   publish a randomly filled message of every type, wait for
                                      the echoes, compare every field; exit 0 if all match.

Messages are filled by introspection (get_fields_and_field_types), so a field added to a .msg
file is covered without touching this test.
"""

from __future__ import annotations

import importlib
import json
import random
import sys
import time

import rclpy
from rclpy.qos import QoSProfile, ReliabilityPolicy, DurabilityPolicy, HistoryPolicy

QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE,
                 durability=DurabilityPolicy.TRANSIENT_LOCAL)

INT_RANGES = {"uint8": (0, 255), "uint16": (0, 65535), "uint32": (0, 2**32 - 1), "uint64": (0, 2**64 - 1),
              "int8": (-128, 127), "int16": (-32768, 32767), "int32": (-2**31, 2**31 - 1),
              "int64": (-2**63, 2**63 - 1), "octet": (0, 255), "byte": (0, 255)}


def load_type(name: str):
    pkg, _, cls = name.replace("/msg/", "/").partition("/")
    return getattr(importlib.import_module(f"{pkg}.msg"), cls)


def random_value(ftype: str, rng: random.Random):
    if ftype.startswith("sequence<"):
        inner = ftype[len("sequence<"):-1].split(",")[0]
        return [random_value(inner, rng) for _ in range(rng.randint(1, 5))]
    if ftype in INT_RANGES:
        lo, hi = INT_RANGES[ftype]
        return rng.choice([lo, hi, rng.randint(lo, hi)])
    if ftype in ("float", "double"):
        return float(rng.choice([0.0, 1.5, -2.25, 1024.125]))  # exactly representable in float32
    if ftype == "boolean":
        return rng.random() < 0.5
    if ftype == "string":
        return rng.choice(["", "go to the red ball", "üñí©ødé ✓", "x" * 300]) + str(rng.randint(0, 9))
    return fill(load_type(ftype)(), rng)


def fill(msg, rng: random.Random):
    for name, ftype in msg.get_fields_and_field_types().items():
        value = random_value(ftype, rng)
        if ftype == "sequence<uint8>" or ftype == "sequence<octet>":
            value = bytes(value)
        setattr(msg, name, value)
    return msg


def to_plain(msg):
    if hasattr(msg, "get_fields_and_field_types"):
        return {name: to_plain(getattr(msg, name)) for name in msg.get_fields_and_field_types()}
    if isinstance(msg, (bytes, bytearray)):
        return list(msg)
    if isinstance(msg, (str, bool, int, float)):
        return msg
    return [to_plain(v) for v in msg]


def main(role: str, type_names):
    rclpy.init()
    node = rclpy.create_node(f"dds_{role}")
    types = {name: load_type(name) for name in type_names}
    topic = {name: "/rt/" + name.split("/")[-1] for name in type_names}
    if role == "echo":
        pubs = {n: node.create_publisher(t, topic[n] + "/echo", QOS) for n, t in types.items()}
        for n, t in types.items():
            node.create_subscription(t, topic[n], lambda m, n=n: pubs[n].publish(m), QOS)
        deadline = time.monotonic() + 60
        while rclpy.ok() and time.monotonic() < deadline:
            rclpy.spin_once(node, timeout_sec=0.1)
        return 0
    rng = random.Random(1234)
    sent = {n: fill(t(), rng) for n, t in types.items()}
    received = {}
    for n, t in types.items():
        node.create_subscription(t, topic[n] + "/echo", lambda m, n=n: received.__setitem__(n, m), QOS)
    pubs = {n: node.create_publisher(t, topic[n], QOS) for n, t in types.items()}
    deadline = time.monotonic() + 45
    while len(received) < len(types) and time.monotonic() < deadline:
        for n, pub in pubs.items():
            if n not in received:
                pub.publish(sent[n])
        end = time.monotonic() + 0.5
        while time.monotonic() < end:
            rclpy.spin_once(node, timeout_sec=0.05)
    report = {}
    for n in types:
        if n not in received:
            report[n] = "no echo received"
        elif to_plain(received[n]) != to_plain(sent[n]):
            report[n] = {"sent": to_plain(sent[n]), "got": to_plain(received[n])}
        else:
            report[n] = "ok"
    print(json.dumps(report, ensure_ascii=False))
    return 0 if all(v == "ok" for v in report.values()) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
