"""Outboxes: bounded queues of outgoing bytes that *other* connections may fill.

A protocol normally writes only to its own transport, from its own
callbacks.  A server whose connections talk to each other (a chat room)
writes to *other* connections' transports, and must never be held up by the
slowest of them.  :func:`open_outbox` gives each connection an
:class:`Outbox` whose :meth:`~Outbox.put` never waits for a peer: it returns
False when the connection has more than *limit* bytes waiting (under
threads, after a short bounded wait for our own sender thread: see
:class:`ThreadedOutbox`), and the caller drops that connection with
:meth:`~Outbox.drop`.

How the bytes leave depends on the driver, and the outbox hides it:

* **non-blocking driver** (the poll strategy, one thread):
  :class:`BufferedOutbox` writes straight into the transport, which queues
  what the socket does not take; the transport's ``write_buffer_size`` is
  the bound that is checked.
* **blocking driver** (the threading strategy): the transport's ``write``
  blocks, and it belongs to the connection's own thread, which sits in
  ``poll`` waiting for its peer's input.  :class:`ThreadedOutbox` keeps a
  bounded queue and runs one sender thread per connection that drains it
  through its own duplicate of the socket (its own descriptor and poll, so
  nothing is shared with the connection's thread but the kernel socket).
  A slow peer blocks only its own sender thread.  A process out of
  descriptors for that duplicate (``EMFILE``) ends that one connection with
  :class:`~framework.drivers.common.OutOfDescriptors` (a quiet end) and a
  warning at most every 10 s, as the poll path and the acceptor do.

**Who pays for a flood.**  A peer that reads, however slowly, is never
dropped for a talker's speed: the talker is slowed instead.  A full
:class:`ThreadedOutbox` makes the talker's thread wait in :meth:`~Outbox.put`
for as long as the peer keeps taking bytes (the talker's connection is not
read meanwhile); over the event loop, whose callbacks cannot wait, the
talker asks :meth:`~Outbox.congested` after each line and pauses its own
reading (``Transport.pause_reading``) until the peers have room.  Only a
peer that takes nothing at all for a while (:meth:`~Outbox.stalled_for`)
is dropped.
"""

from __future__ import annotations

import collections
import errno
import logging
import socket
import threading
import time
from typing import Any

from framework.drivers.common import OutOfDescriptors
from framework.logthrottle import LogThrottle
from framework.protocol import Transport
from framework.signals import is_peer_gone, start_thread_without_signals

log = logging.getLogger("forkthread")

#: How long a sender thread waits for a peer to take bytes before it counts as stuck.
DEFAULT_SEND_TIMEOUT = 30.0
#: How often a put into a full threaded outbox looks whether the receiver still takes bytes.
DEFAULT_PACE = 0.2
#: How long a receiver with a congested outbox may take nothing before it is dropped.
DEFAULT_STALL_TIMEOUT = 5.0

#: Running out of descriptors recurs for every new connection: one warning per process now and then.
_descriptor_warnings = LogThrottle()


class Outbox:
    """A non-blocking, bounded way to send bytes to one connection from anywhere."""

    #: True when :meth:`put` itself waits while the peer makes progress (the talker's thread
    #: is its back-pressure); False when the talker must pause its own reading instead.
    waits_for_room = False

    def __init__(self, limit: int) -> None:
        self.limit = limit

    def congested(self) -> bool:
        """True while more than half the limit waits for the peer: talkers should hold back."""
        return False

    def stalled_for(self) -> float:
        """Seconds the peer has taken nothing while congested (0 when it is not congested)."""
        return 0.0

    def put(self, data: bytes) -> bool:
        """Queue *data*; return False (queuing nothing) when the peer is over the limit.

        Bytes for a connection that is already ending are discarded and
        count as delivered: its end is reported by ``connection_lost``, not
        as an overflow.
        """
        raise NotImplementedError

    def drop(self, notice: bytes = b"") -> None:
        """End the connection now: discard what is queued, try *notice* once if it fits, shut down."""
        raise NotImplementedError

    def close(self, flush: bool = False) -> None:
        """Release the outbox when the connection is over (from ``connection_lost``).

        *flush* asks for what is still queued to be sent first (an orderly end).
        """


class BufferedOutbox(Outbox):
    """For a transport that queues writes itself (non-blocking driver); single-threaded use."""

    def __init__(self, transport: Transport, limit: int) -> None:
        super().__init__(limit)
        self.transport = transport
        self._written = 0  # bytes handed to the transport, ever: minus what it holds, what left
        self._last_left = 0
        self._progress_at = time.monotonic()

    def buffered(self) -> int:
        """Bytes the transport holds for the peer (0 when the transport does not say)."""
        size = self.transport.get_extra_info("write_buffer_size")
        return int(size) if size is not None else 0

    def put(self, data: bytes) -> bool:
        """Write *data* unless the transport already holds more than the limit."""
        if self.transport.is_closing():
            return True
        if self.buffered() + len(data) > self.limit:
            return False
        self.transport.write(data)
        self._written += len(data)
        return True

    def congested(self) -> bool:
        """More than half the limit is waiting in the transport."""
        return not self.transport.is_closing() and self.buffered() > self.limit // 2

    def stalled_for(self) -> float:
        """Seconds since bytes last left while congested (asked often by paused talkers)."""
        now = time.monotonic()
        left = self._written - self.buffered()
        if left != self._last_left or not self.congested():
            self._last_left = left
            self._progress_at = now
        return now - self._progress_at

    def drop(self, notice: bytes = b"") -> None:
        """Abort the connection; the peer's queue is full, so *notice* could not reach it anyway."""
        self.transport.abort()


class ThreadedOutbox(Outbox):
    """A bounded queue drained by a sender thread of its own, through a duplicate of the socket.

    The duplicate shares the connection (and its non-blocking flag) but has
    its own descriptor, so the sender never touches the connection thread's
    poll object and its descriptor cannot be closed or reused under it.

    **Pacing.**  A :meth:`put` that finds the queue full waits for the
    sender thread to bring it down to half the bound (the sender takes
    everything queued at once), for as long as the peer keeps taking bytes:
    a receiver that reads, however slowly, gets the talker paced to its
    speed (the talker's thread, which would read its next lines, waits).  A
    receiver that takes nothing for *stall_timeout* seconds costs the talker
    that wait once, then ``put`` returns False and it is dropped.  At most
    the bound is queued plus the bound's worth in the send in progress.
    """

    waits_for_room = True

    def __init__(self, sock: socket.socket, peer: str, limit: int,
                 send_timeout: float = DEFAULT_SEND_TIMEOUT, pace: float = DEFAULT_PACE,
                 stall_timeout: float = DEFAULT_STALL_TIMEOUT) -> None:
        super().__init__(limit)
        self.peer = peer
        self.pace = pace
        self.stall_timeout = stall_timeout
        self._progress_at = time.monotonic()
        try:
            self._sock = sock.dup()
        except OSError as exc:
            if exc.errno not in (errno.EMFILE, errno.ENFILE):
                raise
            _descriptor_warnings.warning(f"{peer}: no descriptor left for its outbox ({exc.strerror});"
                                         " closing the connection")
            raise OutOfDescriptors(exc.errno, "no descriptor for the connection's outbox") from None
        # A timeout keeps the (shared) descriptor non-blocking: settimeout(None) would make
        # the connection's own thread block in recv.
        self._sock.settimeout(send_timeout)
        self._queue: collections.deque[bytes] = collections.deque()
        self._queued = 0
        self._sending = False
        self._state = "open"  # "open", "flushing" (closing after the queue), "dropped" or "closed"
        self._ready = threading.Condition()
        self._thread = threading.Thread(target=self._run, name=f"outbox {peer}")
        start_thread_without_signals(self._thread.start)

    def put(self, data: bytes) -> bool:
        """Queue *data* for the sender thread; False when the queue stays full for *pace* seconds."""
        with self._ready:
            while self._state == "open" and self._queued + len(data) > self.limit:
                if self._ready.wait_for(lambda: self._state != "open" or self._queued <= self.limit // 2,
                                        self.pace):
                    break
                if self.stalled_for() > self.stall_timeout:
                    break  # it takes nothing: dropped, not waited for
            if self._state != "open":
                return True
            if self._queued + len(data) > self.limit:
                return False
            self._queue.append(data)
            self._queued += len(data)
            self._ready.notify_all()
        return True

    def congested(self) -> bool:
        """More than half the bound is queued for the sender thread."""
        return self._state == "open" and self._queued > self.limit // 2

    def stalled_for(self) -> float:
        """Seconds since the sender thread last got bytes out, while congested."""
        if not self.congested():
            return 0.0
        return time.monotonic() - self._progress_at

    def drop(self, notice: bytes = b"") -> None:
        """Discard the queue and shut the connection down; *notice* goes out if the socket takes it now.

        Shutting down wakes both the sender thread (its send fails) and the
        connection's own thread (it reads end-of-file), which then ends the
        connection as usual.
        """
        with self._ready:
            if self._state != "open":
                return
            self._state = "dropped"
            self._queue.clear()
            self._queued = 0
            if notice and not self._sending:  # never interleave with a line half sent
                try:
                    self._sock.send(notice, socket.MSG_DONTWAIT)
                except OSError:
                    pass
            self._ready.notify_all()
        self._shutdown()

    def close(self, flush: bool = False) -> None:
        """Stop the sender thread, join it, close the duplicate.

        With *flush* (an orderly end: the peer half-closed and still reads)
        what is queued is sent first, within the send timeout; otherwise it
        is abandoned.
        """
        with self._ready:
            if flush and self._state == "open":
                self._state = "flushing"
            else:
                self._state = "closed"
                self._queue.clear()
            self._ready.notify_all()
        if not flush:
            self._shutdown()
        self._thread.join()
        self._shutdown()
        self._sock.close()

    def _shutdown(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already gone

    def _run(self) -> None:
        while True:
            with self._ready:
                while self._state == "open" and not self._queue:
                    self._ready.wait()
                if self._state not in ("open", "flushing") or not self._queue:
                    return
                # Take everything queued: one sendall per wake-up, not one per line, so the
                # sender keeps pace with producers that queue many small pieces at once.
                data = b"".join(self._queue)
                self._queue.clear()
                self._queued = 0
                self._sending = True
                self._progress_at = time.monotonic()
                self._ready.notify_all()  # talkers waiting for room (see put)
            try:
                # send(), not sendall(): each step is progress a waiting talker sees, and the
                # timeout is for a peer that takes nothing, not for a slow one.
                view = memoryview(data)
                while view:
                    view = view[self._sock.send(view):]
                    self._progress_at = time.monotonic()
            except TimeoutError:
                log.info("%s: did not read for %g s; dropping it", self.peer, self._sock.gettimeout() or 0)
                self.drop()
            except OSError as exc:
                if not is_peer_gone(exc):
                    log.debug("%s: sender: %s", self.peer, exc)
                return
            finally:
                with self._ready:
                    self._sending = False


def open_outbox(transport: Transport, limit: int, send_timeout: float = DEFAULT_SEND_TIMEOUT,
                stall_timeout: float = DEFAULT_STALL_TIMEOUT) -> Outbox:
    """The right :class:`Outbox` for *transport*: buffered for the non-blocking driver, threaded otherwise."""
    extra: Any = transport.get_extra_info("write_buffer_size")
    sock = transport.get_extra_info("socket")
    if extra is not None or not isinstance(sock, socket.socket):
        return BufferedOutbox(transport, limit)
    return ThreadedOutbox(sock, transport.peer, limit, send_timeout, stall_timeout=stall_timeout)
