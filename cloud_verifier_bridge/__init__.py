"""cloud_verifier_bridge: the cloud side.

* ``node.py``    ROS node serving the protocol topics, either with the target in-process
                 (``mode: local``) or relaying to a verifier server over WebSockets (``remote``).
* ``server.py``  ``verifier_server``: the ROS-free entry point for the GPU box.
* ``target.py``  loads the target model and its early exits into a specdec Verifier.
"""
