"""How protocol messages move between the edge and the cloud.

A transport moves :mod:`specdec.protocol` dataclasses, nothing else. The edge side
needs two calls (:class:`EdgeTransport`): ``send(msg)`` and ``recv(timeout)``;
the cloud side (:class:`CloudTransport`) the same two, where ``send`` must be
thread-safe and return immediately because the verifier calls it from inside the
target's forward pass to ship an early-exit hint.

The in-process transport (``inprocess.py``) runs a verifier in a thread; ROS and
network transports implement the same two classes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Optional

from ..protocol import Message


class TransportError(RuntimeError):
    """The link to the other side failed."""


class CloudTimeout(TransportError, TimeoutError):
    """The cloud did not answer within the timeout (the edge never hangs)."""


class TransportClosed(TransportError):
    """The transport was closed."""


def message_nbytes(msg: Message) -> int:
    """Approximate wire size of a message (8 bytes per number, raw length of strings/bytes)."""
    total = 0
    for value in vars(msg).values():
        if isinstance(value, (bytes, bytearray, str)):
            total += len(value) + 4
        elif isinstance(value, (list, tuple)):
            total += 8 * len(value) + 4
        else:
            total += 8
    return total


class EdgeTransport(ABC):
    """The edge's end of the link."""

    bytes_sent: int = 0
    bytes_received: int = 0

    @abstractmethod
    def send(self, msg: Message) -> None:
        """Send a message to the cloud (non-blocking or quickly returning)."""

    @abstractmethod
    def recv(self, timeout: float) -> Message:
        """Next message from the cloud; raise :class:`CloudTimeout` after ``timeout`` seconds."""

    def close(self) -> None:
        """Release the link (idempotent)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class CloudTransport(ABC):
    """The cloud's end of the link."""

    @abstractmethod
    def recv(self, timeout: float) -> Optional[Message]:
        """Next message from an edge, or None after ``timeout`` seconds."""

    @abstractmethod
    def send(self, msg: Message) -> None:
        """Send a message to the edge of ``msg.session_id``. Thread-safe, non-blocking."""

    def waiting(self) -> bool:
        """Whether a message from an edge is waiting to be received (a batching verifier ends a
        lone session's multi-token turn early for it, so the newcomer joins the next pass). A
        transport that cannot tell says False: the turn then runs whole."""
        return False

    def close(self) -> None:
        """Release the link (idempotent)."""
