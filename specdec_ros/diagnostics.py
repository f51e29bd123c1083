"""/diagnostics for every node, the diagnostic_msgs way, in one helper.

A node names a ``hardware_id`` (what the statuses are about: the robot and its driver, the
verifier link, ...) and registers one check per task; each check returns a :class:`Report`
(level, one-line message, key/values) computed from the node's *current* state, so a level
goes back to OK as soon as its fault clears. Statuses are named ``"<node name>: <task>"`` as
diagnostic_updater and rqt_robot_monitor expect::

    diag = Diagnostics(node, hardware_id="go2 via go2_ros2_sdk")
    diag.add("safety", lambda: Report(ERROR, "e_stop engaged") if estop else Report(OK, "ok"))
    diag.publish()        # now (also done every period_s by a timer)

A check that raises becomes an ERROR status naming the exception (and a throttled log line):
a broken check never stops the timer nor hides the other tasks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Tuple

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

from .qos import DIAGNOSTICS_QOS

OK = DiagnosticStatus.OK
WARN = DiagnosticStatus.WARN
ERROR = DiagnosticStatus.ERROR
STALE = DiagnosticStatus.STALE
LEVEL_NAMES = {OK: "OK", WARN: "WARN", ERROR: "ERROR", STALE: "STALE"}

TOPIC = "/diagnostics"


@dataclass
class Report:
    """One task's state: ``level`` (OK/WARN/ERROR/STALE), a one-line ``message``, ``values``."""

    level: bytes = OK
    message: str = "ok"
    values: Dict[str, object] = field(default_factory=dict)


def _text(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def to_status(name: str, hardware_id: str, report: Report) -> DiagnosticStatus:
    """A :class:`Report` as a ``diagnostic_msgs/DiagnosticStatus``."""
    return DiagnosticStatus(level=report.level, name=name, message=report.message,
                            hardware_id=hardware_id,
                            values=[KeyValue(key=str(k), value=_text(v))
                                    for k, v in report.values.items()])


class Diagnostics:
    """Publishes every registered check of ``node`` on /diagnostics every ``period_s``."""

    def __init__(self, node, hardware_id: str, period_s: float = 1.0):
        self.node = node
        self.hardware_id = hardware_id
        self._checks: List[Tuple[str, Callable[[], Report]]] = []
        self._pub = node.create_publisher(DiagnosticArray, TOPIC, DIAGNOSTICS_QOS)
        node.create_timer(period_s, self.publish)

    def add(self, task: str, check: Callable[[], Report]) -> None:
        """Register ``check`` under the status name ``"<node name>: <task>"``."""
        self._checks.append((f"{self.node.get_name()}: {task}", check))

    def statuses(self) -> List[DiagnosticStatus]:
        out = []
        for name, check in self._checks:
            try:
                report = check()
            except Exception as exc:  # a broken check is itself a fault to report
                report = Report(ERROR, f"check failed: {type(exc).__name__}: {exc}")
                self.node.get_logger().error(f"diagnostics '{name}': {report.message}",
                                             throttle_duration_sec=10.0)
            out.append(to_status(name, self.hardware_id, report))
        return out

    def publish(self) -> None:
        array = DiagnosticArray(status=self.statuses())
        array.header.stamp = self.node.get_clock().now().to_msg()
        self._pub.publish(array)
