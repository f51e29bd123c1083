"""Command-line ROS tools the PyPI ROS wheels lack, installed as console scripts.

* ``launch_runner.py``  ``launch_runner``: runs ``launch/*.launch.yaml`` like ``ros2 launch``
  (launch_ros semantics; ``launched()`` runs one from a script or test).
* ``bags.py``           ``bag_recorder`` / ``bag_replay``: rosbag2 folders without ``ros2 bag``.
* ``probe.py``          an isolated ROS graph for a script (``ros_env``) and a node inside the
                        script's own process that watches and publishes on it (``Probe``): what
                        ``make demo`` and the ROS tests use to drive launched nodes.

Nodes never import from here: these are tools around the nodes, not part of them.
"""
