"""ROS 2 glue around the ROS-free specdec core, shared by every node (tools live in ros_tools/).

* ``conversions.py``   specdec.protocol dataclasses <-> edge_cloud_vlm_msgs messages
* ``ros_transport.py`` the speculative protocol over DDS topics (edge and cloud transports)
* ``images.py``        camera messages <-> RGB arrays (cv_bridge when installed)
* ``qos.py``           one QoS profile per kind of traffic
* ``diagnostics.py``   /diagnostics the diagnostic_msgs way
* ``node_runtime.py``  the parameter convention (one table per node) and the node entry point
"""
