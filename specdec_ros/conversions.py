"""Convert specdec.protocol dataclasses to and from edge_cloud_vlm_msgs messages.

Fields map one to one by name (a test keeps the .msg files and the dataclasses in step).
The one structural difference: SessionStart's image travels as a sensor_msgs/CompressedImage
``image`` field in ROS and as ``image_format`` / ``image_data`` in the dataclass.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Type

from sensor_msgs.msg import CompressedImage

from edge_cloud_vlm_msgs import msg as ros_msgs
from specdec import protocol

ROS_TYPES: Dict[Type[protocol.Message], type] = {
    protocol.SessionStart: ros_msgs.SessionStart,
    protocol.DraftBlock: ros_msgs.DraftBlock,
    protocol.EarlyExitHint: ros_msgs.EarlyExitHint,
    protocol.VerifyResult: ros_msgs.VerifyResult,
    protocol.SessionEnd: ros_msgs.SessionEnd,
}
DATACLASS_TYPES = {ros: dc for dc, ros in ROS_TYPES.items()}

_IMAGE_FIELDS = ("image_format", "image_data")


def to_ros(message: protocol.Message):
    """Dataclass -> generated ROS message."""
    ros = ROS_TYPES[type(message)]()
    for field in dataclasses.fields(message):
        if field.name in _IMAGE_FIELDS:
            continue
        value = getattr(message, field.name)
        setattr(ros, field.name, list(value) if isinstance(value, (list, tuple)) else value)
    if isinstance(message, protocol.SessionStart):
        ros.image = CompressedImage(format=message.image_format, data=bytes(message.image_data))
    return ros


def from_ros(ros) -> protocol.Message:
    """Generated ROS message -> dataclass; raises ProtocolError on an unknown type."""
    try:
        cls = DATACLASS_TYPES[type(ros)]
    except KeyError:
        raise protocol.ProtocolError(f"not a protocol message: {type(ros).__name__}") from None
    values = {}
    for field in dataclasses.fields(cls):
        if field.name in _IMAGE_FIELDS:
            continue
        value = getattr(ros, field.name)
        if isinstance(field.default, bytes):
            value = bytes(value)  # uint8[] arrives as array.array
        elif not isinstance(value, (str, bytes, bool, int, float)):
            value = [v.item() if hasattr(v, "item") else v for v in value]  # array.array / numpy
        values[field.name] = value
    if cls is protocol.SessionStart:
        values["image_format"] = ros.image.format
        values["image_data"] = bytes(ros.image.data)
    return cls(**values)
