#!/usr/bin/env python3
"""Record a small rosbag2 from the simulator: the expert drives the simulated Go2 to the
instructed object and the bag gets what the robot's sensors would publish on the way.

Topics: /camera/image_raw (sensor_msgs/Image, bgr8, one frame per ``--period-s``),
/camera/camera_info, /odom (nav_msgs/Odometry), /instruction (std_msgs/String, once).
Deterministic for a seed. The committed bags under test/data/ were made with:

    python scripts/record_sim_bag.py --seed 7 --storage mcap    --out test/data/sim_seed7_mcap
    python scripts/record_sim_bag.py --seed 11 --storage sqlite3 --out test/data/sim_seed11_sqlite3
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

BASE_STAMP_NS = 1_700_000_000 * 10**9  # fixed epoch so recordings are reproducible


def stamp(ns: int):
    from builtin_interfaces.msg import Time

    return Time(sec=ns // 10**9, nanosec=ns % 10**9)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--period-s", type=float, default=1.0, help="bag time between camera frames")
    parser.add_argument("--storage", choices=["sqlite3", "mcap"], default="mcap")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    from nav_msgs.msg import Odometry
    from std_msgs.msg import String

    from go2_sim.closed_loop import execute_action
    from go2_sim.episode import Go2Episode
    from go2_sim.expert import expert_policy
    from go2_sim.sim_node import camera_info_msg, image_msg
    from go2_vlm_control.action_language import try_parse_action
    from go2_vlm_control.motion import ActionExecutor, MotionLimits
    from ros_tools.bags import BagWriter

    env = Go2Episode()
    env.reset(args.seed)
    if os.path.exists(args.out):
        shutil.rmtree(args.out)
    writer = BagWriter(args.out, args.storage)
    executor = ActionExecutor(MotionLimits())
    t_ns = BASE_STAMP_NS
    writer.write("/instruction", "std_msgs/msg/String", String(data=env.instruction), t_ns)
    for i in range(args.frames):
        t_ns = BASE_STAMP_NS + int((i + 0.5) * args.period_s * 1e9)
        image = env.render()
        writer.write("/camera/image_raw", "sensor_msgs/msg/Image", image_msg(image, stamp(t_ns), "camera_link"), t_ns)
        writer.write("/camera/camera_info", "sensor_msgs/msg/CameraInfo",
                     camera_info_msg(env.camera.cfg, stamp(t_ns), "camera_link"), t_ns)
        x, y, yaw = env.world.pose
        odom = Odometry()
        odom.header.stamp, odom.header.frame_id, odom.child_frame_id = stamp(t_ns), "odom", "base_link"
        odom.pose.pose.position.x, odom.pose.pose.position.y = float(x), float(y)
        odom.pose.pose.orientation.z, odom.pose.pose.orientation.w = math.sin(yaw / 2), math.cos(yaw / 2)
        writer.write("/odom", "nav_msgs/msg/Odometry", odom, t_ns)
        action, _ = try_parse_action(expert_policy(env))
        if action is not None and action.is_motion:
            execute_action(env, action, executor)
    writer.close()
    print(f"{args.out}: {writer.count} messages, instruction {env.instruction!r}, "
          f"final distance {env.surface_distance():.2f} m")


if __name__ == "__main__":
    sys.exit(main())
