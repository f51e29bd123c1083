"""QoS profiles, one per kind of traffic, shared by every node (Humble- and Jazzy-compatible
constructors only). Pick by what the data is, not by who sends it:

* ``PROTOCOL_QOS``   speculative-decoding protocol messages (edge <-> bridge)
* ``COMMAND_QOS``    commands and decisions: cmd_vel, driver requests, decoded_action, e_stop,
                     the controller's action_status (reliable, shallow: only the latest matters)
* ``STATE_QOS``      periodic state: odometry, sim state, paths (reliable, as the Go2 driver
                     publishes odom; best-effort subscribers still receive it)
* ``LATCHED_QOS``    last value for late joiners: episode info, instruction, static TF
* ``SENSOR_QOS``     subscribing to cameras and other sensor streams (best effort)
* ``CAMERA_QOS``     publishing a camera exactly as go2_ros2_sdk does (best effort, depth 1)
* ``DIAGNOSTICS_QOS`` /diagnostics (the ROS default profile diagnostic tools use)
"""

from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy,
                       qos_profile_sensor_data)

# Every protocol message matters, so RELIABLE with a deep queue; the protocol's own seq/round
# numbers detect duplicates and reordering on top of that.
PROTOCOL_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=64,
                          reliability=ReliabilityPolicy.RELIABLE,
                          durability=DurabilityPolicy.VOLATILE)

COMMAND_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10,
                         reliability=ReliabilityPolicy.RELIABLE)

STATE_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10,
                       reliability=ReliabilityPolicy.RELIABLE)

# A transient-local publisher keeps its last message for subscribers that join later; a
# volatile subscriber still matches it (it just gets no history).
LATCHED_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                         reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)

# Cameras publish BEST_EFFORT; a RELIABLE subscriber would receive nothing.
SENSOR_QOS = qos_profile_sensor_data

CAMERA_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                        reliability=ReliabilityPolicy.BEST_EFFORT,
                        durability=DurabilityPolicy.VOLATILE)

DIAGNOSTICS_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10,
                             reliability=ReliabilityPolicy.RELIABLE)
