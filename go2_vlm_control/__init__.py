"""go2_vlm_control: VLM action text -> safe Unitree Go2 locomotion.

Modules:
  action_language  the action language and its strict parser (ROS-free)
  motion           velocity profiles with velocity/acceleration limits (ROS-free)
  controller       the controller state machine: ordering, deadman, e-stop, stops (ROS-free)
  sport_api        Unitree sport API requests (Move/StopMove), unitree_api optional
  controller_node  the ROS 2 node ``go2_vlm_control``
"""
