"""edge_spec_drafter: the robot's decision node.

* ``node.py``        camera + instruction -> draft VLM (specdec EdgeDecoder) over the protocol
                     topics -> DecodedAction with per-decision stats.
* ``monitoring.py``  rviz-facing outputs: planned-motion markers, annotated camera image,
                     rolling SpecStats.
"""
