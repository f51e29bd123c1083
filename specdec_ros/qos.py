"""QoS profiles shared by the nodes (Humble- and Jazzy-compatible constructors only)."""

from rclpy.qos import (HistoryPolicy, QoSProfile, ReliabilityPolicy, DurabilityPolicy,
                       qos_profile_sensor_data)

# Protocol traffic: every message matters, so RELIABLE with a deep queue; the protocol's own
# seq/round numbers detect duplicates and reordering on top of that.
PROTOCOL_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=64,
                          reliability=ReliabilityPolicy.RELIABLE,
                          durability=DurabilityPolicy.VOLATILE)

# Cameras publish BEST_EFFORT; a RELIABLE subscriber would receive nothing.
SENSOR_QOS = qos_profile_sensor_data

# Commands and decoded actions: reliable, shallow (only the latest matters).
COMMAND_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10,
                         reliability=ReliabilityPolicy.RELIABLE)
