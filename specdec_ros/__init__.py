"""ROS 2 adapters of the ROS-free specdec core: message conversion and QoS profiles.

The nodes (edge_spec_drafter, cloud_verifier_bridge) import from here, so the mapping between
specdec.protocol dataclasses and the generated edge_cloud_vlm_msgs types lives in one place.
"""
