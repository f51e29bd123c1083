"""go2_sim: a simulated Unitree Go2 in a room with coloured objects.

Modules:
  world        room, objects, kinematic robot with the real driver's semantics (ROS-free)
  camera       forward camera: per-pixel ray casting, OpenCV post-processing (ROS-free)
  episode      reset(seed) / step(twist, dt) / render() / success() (ROS-free)
  expert       privileged expert policy emitting the action language (ROS-free)
  closed_loop  policy -> parser -> motion -> simulator episodes and evaluation (ROS-free)
  dataset      (image, instruction, action) samples, save/load (ROS-free)
  sim_node     the ROS 2 node ``go2_sim``
"""
