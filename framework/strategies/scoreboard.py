"""Connection counters the pre-forked workers share with their master, in one anonymous mapping.

Each worker owns a slot of two 64-bit counters (connections served, connections
active) in a ``MAP_SHARED`` page created by the master before it forks, so
the master's status line can add up the whole pool without a message per
connection; beside them, the worker's last heartbeat (``--worker-timeout``), a
``time.monotonic()`` reading, which is one clock for every process.
A slot is written only by its worker and read by the master; a torn read of a
counter is impossible on the 64-bit platforms Linux runs this on, and a stale
one is harmless.
"""

from __future__ import annotations

import mmap
import os
import socket
import struct
from collections.abc import Callable

from framework.lifecycle import ActiveConnections

_SLOT = struct.Struct("=qq")  # served, active
_BEAT = struct.Struct("=d")  # time.monotonic() of the last heartbeat, after the counters
_STRIDE = _SLOT.size + _BEAT.size

#: Most worker slots the board has; SIGTTIN beyond this is refused.
MAX_SLOTS = 4096


class Scoreboard:
    """A shared table of per-worker ``(served, active)`` counters."""

    def __init__(self, slots: int = MAX_SLOTS, *, memory_file: int | None = None) -> None:
        """*memory_file*: map that file (see :meth:`shared_file`) instead of fresh anonymous memory."""
        self.slots = slots
        size = slots * _STRIDE
        if memory_file is None:
            self._map = mmap.mmap(-1, size, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
        else:
            self._map = mmap.mmap(memory_file, size, flags=mmap.MAP_SHARED)
        self._free = list(range(slots - 1, -1, -1))
        #: Views handed out by :meth:`counters` (with the views they were cut from), released by :meth:`close`.
        self._views: list[memoryview] = []

    @classmethod
    def in_memory_file(cls, slots: int = MAX_SLOTS) -> tuple[Scoreboard, int]:
        """A board whose table is a memory file, and that file's descriptor (the caller closes it).

        Another interpreter of this process, which cannot share Python objects
        with this one, maps the same table from a duplicate of the descriptor.
        """
        memory_file = os.memfd_create("forkthread-scoreboard", os.MFD_CLOEXEC)
        try:
            os.ftruncate(memory_file, slots * _STRIDE)
            return cls(slots, memory_file=memory_file), memory_file
        except BaseException:
            os.close(memory_file)
            raise

    def allocate(self) -> int | None:
        """Take a zeroed slot for a new worker (None when all are in use)."""
        if not self._free:
            return None
        slot = self._free.pop()
        self.write(slot, 0, 0)
        return slot

    def release(self, slot: int) -> None:
        """Give back the slot of a worker that has been reaped."""
        self._free.append(slot)

    def write(self, slot: int, served: int, active: int) -> None:
        """Record a worker's counters (called by the worker)."""
        _SLOT.pack_into(self._map, slot * _STRIDE, served, active)

    def counters(self, slot: int) -> memoryview:
        """The slot's ``(served, active)`` as a writable view of two signed 64-bit integers.

        For the worker, which publishes at every connection: ``view[0] = served``
        is one store in C, where :meth:`write` is a call that packs a tuple.
        Valid until :meth:`close`.
        """
        whole = memoryview(self._map)
        start = slot * _STRIDE
        part = whole[start:start + _SLOT.size]
        cells = part.cast("q")
        self._views += [cells, part, whole]
        return cells

    def read(self, slot: int) -> tuple[int, int]:
        """A worker's ``(served, active)``."""
        served, active = _SLOT.unpack_from(self._map, slot * _STRIDE)
        return int(served), int(active)

    def beat(self, slot: int, now: float) -> None:
        """Record a heartbeat of the slot's worker at *now* (``time.monotonic()``)."""
        _BEAT.pack_into(self._map, slot * _STRIDE + _SLOT.size, now)

    def last_beat(self, slot: int) -> float:
        """When the slot's worker last beat (``time.monotonic()``)."""
        (when,) = _BEAT.unpack_from(self._map, slot * _STRIDE + _SLOT.size)
        return float(when)

    def close(self) -> None:
        """Release the views of :meth:`counters` and unmap the table."""
        for view in self._views:
            view.release()
        self._views.clear()
        self._map.close()


class ScoredConnections(ActiveConnections):
    """A worker's :class:`ActiveConnections` that also publishes its counts on the scoreboard.

    *on_served* is called (in the serving thread) with the new total after
    each accepted connection: the worker uses it for ``--max-requests``.
    """

    publishes = True

    def __init__(self, board: Scoreboard, slot: int, on_served: Callable[[int], None] | None = None) -> None:
        super().__init__()
        # Stores into the slot, not calls of the board: this runs twice per connection.
        self._counters = board.counters(slot)
        self._on_served = on_served

    def add(self, sock: socket.socket) -> None:
        """Register a connection and publish the counts."""
        super().add(sock)
        counters = self._counters
        counters[0] = self.served
        counters[1] = len(self._sockets)
        if self._on_served is not None:
            self._on_served(self.served)

    def discard(self, sock: socket.socket) -> None:
        """Forget a connection and publish the count of those still served."""
        super().discard(sock)
        self._counters[1] = len(self._sockets)

    def publish_counts(self, served: int, active: int) -> None:
        """Publish the counts an event loop keeps itself (it adds no socket here): two stores.

        *served* counts for ``--max-requests`` as :meth:`add`'s total does.
        """
        counters = self._counters
        counters[1] = active
        if served != self.served:
            self.served = served
            counters[0] = served
            if self._on_served is not None:
                self._on_served(served)
