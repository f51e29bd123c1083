"""Bounded queues for network transports: nobody waits on a slow peer, nobody starves.

* :class:`FrameWriter` - one connection's outgoing frames, drained by the connection's own
  thread. ``put`` never blocks: the verifier calls its transport's ``send`` from inside the
  target's forward pass, so a robot that stops reading must cost that robot its connection,
  never the other robots their turn. A full queue says "this peer is not keeping up".
* :class:`FairInbox` - messages from many robots to one consumer (the verifier), one FIFO per
  robot, served round-robin. A robot's ``put`` blocks while that robot has ``per_key`` messages
  waiting: its connection stops being read, TCP pushes back on that robot alone, and a robot
  that floods delays itself, not the others.
* :class:`Counters` - named event counters a node can read (``snapshot()``) for diagnostics.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from typing import Callable, Deque, Dict, Hashable, Optional, Tuple

log = logging.getLogger(__name__)


class Counters:
    """Thread-safe named counters plus the last error text, for diagnostics."""

    def __init__(self, *names: str):
        self._lock = threading.Lock()
        self._values: Dict[str, int] = dict.fromkeys(names, 0)
        self.last_error = ""

    def bump(self, name: str, by: int = 1) -> None:
        with self._lock:
            self._values[name] = self._values.get(name, 0) + by

    def error(self, name: str, text: str) -> None:
        """Count an event that is a fault and remember its description."""
        with self._lock:
            self._values[name] = self._values.get(name, 0) + 1
            self.last_error = text

    def __getitem__(self, name: str) -> int:
        return self._values.get(name, 0)

    def snapshot(self) -> Dict[str, object]:
        with self._lock:
            return {**self._values, "last_error": self.last_error}


class FrameWriter:
    """Sends one connection's frames from its own thread; ``put`` returns at once.

    ``send`` is the connection's blocking send; ``on_error(exc)`` runs (in the writer thread)
    when it fails, after which the writer stops. The connection's socket should carry a send
    timeout, so a peer that stops reading fails the send instead of holding the thread forever.
    """

    def __init__(self, send: Callable[[str], None], on_error: Callable[[BaseException], None],
                 max_frames: int, name: str):
        self._send = send
        self._on_error = on_error
        self._queue: "queue.Queue[Optional[str]]" = queue.Queue(max_frames)
        self.closed = False
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def put(self, frame: str) -> bool:
        """Queue ``frame``; False when the writer is closed or the peer is not keeping up."""
        if self.closed:
            return False
        try:
            self._queue.put_nowait(frame)
            return True
        except queue.Full:
            return False

    def close(self) -> None:
        self.closed = True
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            pass  # the thread sees `closed` after its current frame

    def _run(self) -> None:
        while True:
            frame = self._queue.get()
            if frame is None or self.closed:
                return
            try:
                self._send(frame)
            except BaseException as exc:  # any failure ends this connection, never the process
                self.closed = True
                try:
                    self._on_error(exc)
                except Exception:
                    log.exception("writer error handler failed")
                return


class InboxClosed(Exception):
    """The inbox was closed while a producer waited for room."""


class FairInbox:
    """Round-robin over per-key FIFOs, bounded per key and in total; blocking ``put``."""

    def __init__(self, per_key: int, total: int):
        self.per_key = per_key
        self.total = total
        self._queues: Dict[Hashable, Deque] = {}
        self._ready: Deque[Hashable] = collections.deque()  # keys with waiting items, in turn order
        self._size = 0
        self._closed = False
        self._cond = threading.Condition()

    def __len__(self) -> int:
        return self._size

    def queued(self, key: Hashable) -> int:
        with self._cond:
            return len(self._queues.get(key, ()))

    def put(self, key: Hashable, item, timeout: Optional[float] = None, force: bool = False) -> bool:
        """Append ``item`` to ``key``'s queue, waiting (up to ``timeout``) while it or the inbox is
        full; False on timeout. ``force`` skips the bounds (control messages that free resources)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not force:
                if self._closed:
                    raise InboxClosed()
                if len(self._queues.get(key, ())) < self.per_key and self._size < self.total:
                    break
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)
            fifo = self._queues.get(key)
            if fifo is None:
                fifo = self._queues[key] = collections.deque()
            if not fifo:
                self._ready.append(key)
            fifo.append(item)
            self._size += 1
            self._cond.notify_all()
            return True

    def get(self, timeout: float) -> Optional[Tuple[Hashable, object]]:
        """``(key, item)`` of the next robot in turn, or None after ``timeout`` seconds."""
        deadline = time.monotonic() + max(timeout, 0.0)
        with self._cond:
            while not self._ready:
                left = deadline - time.monotonic()
                if left <= 0 or self._closed:
                    return None
                self._cond.wait(left)
            key = self._ready.popleft()
            fifo = self._queues[key]
            item = fifo.popleft()
            if fifo:
                self._ready.append(key)  # back of the line: the other robots go first
            else:
                del self._queues[key]
            self._size -= 1
            self._cond.notify_all()
            return key, item

    def close(self) -> None:
        """Wake every waiting producer (they raise :class:`InboxClosed`) and consumer."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
