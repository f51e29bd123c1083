"""What the edge node shows a person in rviz: planned motion, annotated camera, rolling stats."""

from __future__ import annotations

import math
import statistics
from collections import deque
from typing import Optional

import numpy as np


def planned_motion_markers(action, status_text: str, frame_id: str, stamp):
    """MarkerArray: an arrow (or arc) of the parsed action from the robot, plus a status label."""
    from geometry_msgs.msg import Point
    from visualization_msgs.msg import Marker, MarkerArray

    markers = MarkerArray()
    path = Marker(ns="planned_motion", id=0, type=Marker.LINE_STRIP, action=Marker.ADD)
    path.header.frame_id, path.header.stamp = frame_id, stamp
    path.scale.x = 0.04
    path.pose.orientation.w = 1.0
    if action is not None and action.is_motion:
        dx, dy, dyaw = action.target
        steps = 12
        for i in range(steps + 1):
            f = i / steps
            if action.kind == "rotate":  # an arc at 0.5 m showing the turn
                path.points.append(Point(x=0.5 * math.cos(f * dyaw), y=0.5 * math.sin(f * dyaw), z=0.1))
            else:
                path.points.append(Point(x=f * dx, y=f * dy, z=0.1))
        path.color.g, path.color.a = 1.0, 1.0
    else:
        path.action = Marker.DELETE
    markers.markers.append(path)
    label = Marker(ns="planned_motion", id=1, type=Marker.TEXT_VIEW_FACING, action=Marker.ADD, text=status_text)
    label.header.frame_id, label.header.stamp = frame_id, stamp
    label.pose.position.z = 0.8
    label.pose.orientation.w = 1.0
    label.scale.z = 0.15
    label.color.r = label.color.g = label.color.b = label.color.a = 1.0
    markers.markers.append(label)
    return markers


def annotate(rgb: np.ndarray, lines) -> np.ndarray:
    """Camera frame with a text overlay (upscaled so small sim frames stay readable)."""
    import cv2

    image = rgb[:, :, ::-1].copy()
    scale = max(1, int(round(480 / max(image.shape[0], 1))))
    if scale > 1:
        image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    for i, line in enumerate(lines):
        y = 22 + 22 * i
        cv2.putText(image, line, (8, y), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(image, line, (8, y), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (255, 255, 255), 1, cv2.LINE_AA)
    return np.ascontiguousarray(image[:, :, ::-1])


class RollingStats:
    """Window of recent decisions -> SpecStats fields."""

    def __init__(self, window: int = 50):
        self.items = deque(maxlen=window)
        self.link_errors = deque(maxlen=window)

    def add(self, stats, error: bool = False):
        if stats is not None:
            self.items.append(stats)
        self.link_errors.append(1 if error else 0)

    def fields(self) -> dict:
        items = list(self.items)
        latencies = sorted(s.latency_ms for s in items) or [0.0]
        drafted = sum(s.drafted_tokens for s in items)
        hints = sum(s.hints for s in items)
        predrafts = sum(s.predrafts for s in items)
        rounds = sum(s.rounds for s in items)
        return dict(
            decisions=len(items),
            latency_ms_median=float(statistics.median(latencies)),
            latency_ms_p90=float(latencies[min(len(latencies) - 1, int(0.9 * len(latencies)))]),
            tokens_per_round=sum(s.new_tokens for s in items) / rounds if rounds else 0.0,
            acceptance_rate=sum(s.accepted_tokens for s in items) / drafted if drafted else 0.0,
            hint_accuracy=sum(s.hints_correct for s in items) / hints if hints else 0.0,
            predraft_hit_rate=sum(s.predraft_hits for s in items) / predrafts if predrafts else 0.0,
            link_errors=sum(self.link_errors),
        )

    @property
    def last(self) -> Optional[object]:
        return self.items[-1] if self.items else None
