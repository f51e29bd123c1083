"""What every node's entry point does: parameters from one table, and a main() that reports a
failed start (bad parameter, missing model) in one line and exits non-zero instead of a traceback.

The parameter convention, the same for every node:

* a node module defines ``PARAMETERS``, a list of :class:`Param` (name, default, description);
  the default's type is the parameter's type (bool, int, float, str or a list of str);
* ``declare_parameters(node, PARAMETERS)`` declares them all (the description shows in
  ``ros2 param describe``) and returns ``{name: value}``;
* a float parameter also accepts an integer (``-p cloud_timeout_s:=10``, ``timeout: 5`` in YAML)
  and the node always sees a float; any other type mismatch is refused in one line;
* ``config/<node>.yaml`` lists exactly these names (a test checks every node's table against it).

Only rclpy APIs present in Humble and Jazzy.
"""

from __future__ import annotations

import dataclasses
import faulthandler
from dataclasses import dataclass
from typing import Callable, Dict, Mapping, Sequence

import rclpy
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter


@dataclass(frozen=True)
class Param:
    """One node parameter: its default fixes its type."""

    name: str
    default: object
    description: str = ""

    @property
    def type(self) -> type:
        return list if isinstance(self.default, (list, tuple)) else type(self.default)


def defaults(table: Sequence[Param]) -> Dict[str, object]:
    """``{name: default}`` of a parameter table."""
    return {p.name: p.default for p in table}


class ParameterError(ValueError):
    """A parameter value of the wrong type or out of range."""


def declare_parameters(node: Node, table: Sequence[Param]) -> Dict[str, object]:
    """Declare every parameter of ``table`` on ``node`` and return the values in effect."""
    values = {}
    for param in table:
        is_float = param.type is float
        # floats are declared dynamically typed so an integer override does not kill the node;
        # the value is checked and converted below
        descriptor = ParameterDescriptor(description=param.description, dynamic_typing=is_float)
        if param.type is list and not param.default:
            value = node.declare_parameter(param.name, Parameter.Type.STRING_ARRAY, descriptor).value or []
        else:
            value = node.declare_parameter(param.name, param.default, descriptor).value
        if is_float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ParameterError(f"parameter {param.name} must be a number, got {value!r}")
            if not isinstance(value, float):
                value = float(value)
                node.set_parameters([Parameter(param.name, value=value)])
        values[param.name] = list(value) if param.type is list else value
    return values


TEARDOWN_TIMEOUT_S = 10.0


def run_node(factory: Callable[[], Node], name: str, args=None, threads: int = 1,
             teardown_timeout_s: float = TEARDOWN_TIMEOUT_S) -> int:
    """Construct the node, spin until Ctrl-C / shutdown, clean up. Returns the exit code.

    The clean-up is bounded: Fast DDS can busy-spin for good while deleting a participant whose
    discovery callback is in flight (eProsima/Fast-DDS#6513; seen here as a bag recorder spinning
    at 97 % CPU long after its bag was closed, deaf to SIGTERM). After ``teardown_timeout_s`` a
    C-level watchdog (``faulthandler``, which needs no GIL) prints where it hung and exits with 1."""
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
        faulthandler.dump_traceback_later(teardown_timeout_s, exit=True)
        node.destroy_node()
        rclpy.try_shutdown()
        faulthandler.cancel_dump_traceback_later()
    return 0


def dataclass_params(cls, descriptions: Mapping[str, str]) -> list:
    """Params for the fields of a config dataclass, defaults taken from the dataclass (one source
    for a setting used by several nodes). ``descriptions`` names the fields to expose."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(descriptions) - set(fields)
    if unknown:
        raise KeyError(f"{cls.__name__} has no fields {sorted(unknown)}")
    return [Param(name, fields[name].default, text) for name, text in descriptions.items()]


def build_dataclass(cls, values: Mapping[str, object]):
    """``cls`` from the parameter values named like its fields (the others keep their defaults)."""
    return cls(**{f.name: values[f.name] for f in dataclasses.fields(cls) if f.name in values})
