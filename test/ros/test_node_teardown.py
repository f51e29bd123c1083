"""A node whose DDS teardown never returns (Fast DDS can busy-spin deleting a participant,
eProsima/Fast-DDS#6513) still ends its process: run_node bounds the clean-up."""

import subprocess
import sys
import time

from ros_tools.probe import ros_env

STUCK_NODE = """
import time
from rclpy.node import Node
from specdec_ros.node_runtime import run_node

class Stuck(Node):
    def __init__(self):
        super().__init__("stuck_teardown")
        self.create_timer(0.1, self._done)

    def _done(self):
        raise SystemExit(0)  # the node's work is over (as the bag recorder's after max_messages)

    def destroy_node(self):
        time.sleep(3600)  # stands for rmw_destroy_node spinning in Fast DDS

raise SystemExit(run_node(Stuck, "stuck_teardown", teardown_timeout_s=1.0))
"""


def test_a_teardown_that_never_returns_ends_the_process_with_a_traceback():
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", STUCK_NODE], env=ros_env(), capture_output=True, text=True,
                          timeout=60)
    assert time.monotonic() - t0 < 30
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Timeout" in proc.stderr and "destroy_node" in proc.stderr, proc.stderr[-2000:]
