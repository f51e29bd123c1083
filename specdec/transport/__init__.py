"""Transports: how protocol messages move between edge and cloud (see base.py)."""

from .base import (
    CloudTimeout,
    CloudTransport,
    EdgeTransport,
    TransportClosed,
    TransportError,
    message_nbytes,
)
from .inprocess import InProcessTransport

__all__ = [
    "CloudTimeout",
    "CloudTransport",
    "EdgeTransport",
    "InProcessTransport",
    "TransportClosed",
    "TransportError",
    "message_nbytes",
]
