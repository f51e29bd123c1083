"""What every node's entry point does: parameters from a defaults table, and a main() that
reports a failed start (bad parameter, missing model) and exits non-zero instead of a traceback.
Only rclpy APIs present in Humble and Jazzy."""

from __future__ import annotations

from typing import Callable, Dict

import rclpy
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor, SingleThreadedExecutor
from rclpy.node import Node


def declare_parameters(node: Node, defaults: Dict[str, object]) -> Dict[str, object]:
    """Declare every ``name: default`` and return the values in effect."""
    for name, default in defaults.items():
        # numbers may come as int or float from YAML / the command line
        node.declare_parameter(name, default, ParameterDescriptor(dynamic_typing=isinstance(default, float)))
    return {name: node.get_parameter(name).value for name in defaults}


def run_node(factory: Callable[[], Node], name: str, args=None, threads: int = 1) -> int:
    """Construct the node, spin until Ctrl-C / shutdown, clean up. Returns the exit code."""
    rclpy.init(args=args)
    try:
        node = factory()
    except Exception as exc:  # bad parameters or model files: say so and exit non-zero
        rclpy.logging.get_logger(name).fatal(f"{type(exc).__name__}: {exc}")
        rclpy.try_shutdown()
        return 1
    executor = MultiThreadedExecutor(num_threads=threads) if threads > 1 else SingleThreadedExecutor()
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0
