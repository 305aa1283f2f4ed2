"""Blocking work beside an event loop: a bounded pool of threads, and each job's side of its connection.

An event loop must never wait, but some protocols must run code that does
(a WSGI application sleeps, queries a database, computes).  Such a protocol
calls :meth:`framework.protocol.Transport.offload` with a *job*; the job
gets a :class:`Port`, its side of the connection, and may block as long as
it likes.  Under the blocking driver the job runs at once in the
connection's own thread (:class:`DirectPort`); under the non-blocking one it
runs on a :class:`WorkerPool` thread while the loop alone does the socket
I/O (:class:`LoopPort`) -- waitress's split between the task that calls the
application and the channel that owns the socket (``task.py``,
``channel.py``), with flow control both ways:

* output: a job's :meth:`Port.write` hands its bytes to the loop and waits
  while the connection's queue is above the driver's high-water mark (the
  loop wakes it when the queue drains), so a slow reader of an endless
  response holds a bounded buffer, never the response;
* input: a job waits in :meth:`Port.wait_until` for what the protocol
  gathers in the loop's thread (the protocol decides how much it buffers).

A connection that ends (peer gone, time limit, graceful deadline) makes its
port's ``write`` raise :class:`ConnectionAbortedError`, so a job producing
for nobody stops at its next write.
"""

from __future__ import annotations

import collections
import functools
import logging
import threading
from collections.abc import Callable
from typing import IO
from typing import Protocol as _TypingProtocol

from framework.protocol import FileLike, Port
from framework.signals import start_thread_without_signals

log = logging.getLogger("forkthread")

#: Threads of a loop's pool when the strategy does not say (``--threads``).
DEFAULT_POOL_THREADS = 8

#: A job's bytes handed to the loop but not yet written to its connection, at most (then it waits).
HANDOFF_HIGH_WATER = 256 * 1024


class WorkerPool:
    """At most *threads* threads running jobs in the order they came; threads start on demand.

    Threads start with the server's signals blocked (signals belong to the
    main thread) and are daemons: a job that never returns cannot keep a
    stopped server's process alive.  :meth:`close` waits a bounded time for
    the running jobs.
    """

    def __init__(self, threads: int = DEFAULT_POOL_THREADS, *, name: str = "forkthread-job") -> None:
        if threads <= 0:
            raise ValueError(f"a worker pool needs at least one thread, not {threads}")
        self.threads = threads
        self.name = name
        self._jobs: collections.deque[Callable[[], None] | None] = collections.deque()
        self._ready = threading.Condition(threading.Lock())
        self._workers: list[threading.Thread] = []
        self._idle = 0
        self._closed = False

    def submit(self, job: Callable[[], None]) -> None:
        """Run *job* on a pool thread as soon as one is free (exceptions are logged, never raised)."""
        with self._ready:
            if self._closed:
                raise RuntimeError("worker pool closed")
            self._jobs.append(job)
            if len(self._jobs) <= self._idle:
                # An idle thread for every job not yet taken (one woken but not yet running
                # must not be counted for two jobs).
                self._ready.notify()
                return
            if len(self._workers) >= self.threads:
                return  # every thread is busy: the job waits its turn
            worker = threading.Thread(target=self._work, name=f"{self.name}-{len(self._workers)}", daemon=True)
            self._workers.append(worker)
        start_thread_without_signals(worker.start)

    def _work(self) -> None:
        while True:
            with self._ready:
                while not self._jobs:
                    self._idle += 1
                    self._ready.wait()
                    self._idle -= 1
                job = self._jobs.popleft()
            if job is None:
                return
            try:
                job()
            except BaseException as exc:  # a job must handle its own faults; this is the last resort
                log.error("job failed: %r", exc, exc_info=exc)

    @property
    def busy(self) -> int:
        """Threads running a job now."""
        with self._ready:
            return len(self._workers) - self._idle

    def close(self, timeout: float = 5.0) -> None:
        """Let the queued jobs run, stop every thread and wait up to *timeout* seconds for them."""
        with self._ready:
            if self._closed:
                return
            self._closed = True
            self._jobs.extend([None] * len(self._workers))
            self._ready.notify_all()
            workers = list(self._workers)
        for worker in workers:
            worker.join(timeout)
            if worker.is_alive():
                log.warning("a job still runs after %g s at stop; leaving its thread", timeout)
                timeout = 0.0


class Loop(_TypingProtocol):
    """What a :class:`LoopPort` needs of its event loop (:class:`framework.drivers.nonblocking.EventLoop`)."""

    def call_soon_threadsafe(self, callback: Callable[[], None]) -> None:
        """Run *callback* in the loop's thread."""


class LoopConnection(_TypingProtocol):
    """What a :class:`LoopPort` needs of its connection (a non-blocking driver's connection)."""

    @property
    def write_paused(self) -> bool:
        """True while the queue is above its high-water mark."""

    def write(self, data: bytes) -> None:
        """Queue *data*."""

    def sendfile(self, file: FileLike | IO[bytes], offset: int = 0, count: int | None = None) -> None:
        """Queue a file segment."""


class DirectPort(Port):
    """The port of a job that runs in its connection's own thread (the blocking driver's).

    *pump* reads once from the peer, waiting, and hands what came to the
    protocol (``data_received``, or ``eof_received``); it returns False when
    nothing more can come.
    """

    def __init__(self, pump: Callable[[], bool], write: Callable[[bytes], None],
                 sendfile: Callable[[FileLike | IO[bytes], int, int], None], gone: Callable[[], bool]) -> None:
        self._pump = pump
        self._write = write
        self._sendfile = sendfile
        self._gone = gone

    def write(self, data: bytes) -> None:
        """Send *data* before returning; :class:`ConnectionAbortedError` once the connection ended."""
        if self._gone():
            raise ConnectionAbortedError("the connection ended")
        self._write(data)
        if self._gone():
            raise ConnectionAbortedError("the connection ended")

    def sendfile(self, file: FileLike | IO[bytes], offset: int, count: int) -> None:
        """Send *count* bytes of *file* from *offset* with ``sendfile(2)`` (or through TLS)."""
        if self._gone():
            raise ConnectionAbortedError("the connection ended")
        self._sendfile(file, offset, count)
        if self._gone():
            raise ConnectionAbortedError("the connection ended")

    def call(self, callback: Callable[[], None]) -> None:
        """Run *callback* now: this is the connection's thread."""
        callback()

    def wait_until(self, predicate: Callable[[], bool]) -> bool:
        """Read from the peer into the protocol until *predicate* holds; False when no more can come."""
        while not predicate():
            if self._gone() or not self._pump():
                return predicate()
        return True

    def wake(self) -> None:
        """Nothing to wake: the waiting job is the one reading."""


class LoopPort(Port):
    """The port of a job on a pool thread, for a connection an event loop serves.

    Everything that touches the connection runs in the loop's thread
    (:meth:`EventLoop.call_soon_threadsafe`); the job only waits, on one
    condition the loop signals when output drained, input came or the
    connection ended.
    """

    def __init__(self, loop: Loop, connection: LoopConnection) -> None:
        self._loop = loop
        self._connection = connection
        self._changed = threading.Condition(threading.Lock())
        self._undelivered = 0
        self._congested = False
        self._gone = False

    # -- the job's side (a pool thread) ---------------------------------------------

    def write(self, data: bytes) -> None:
        """Hand *data* to the loop, after waiting while the connection's queue is full."""
        if not data:
            return
        if type(data) is not bytes:
            data = bytes(data)  # the caller may reuse its buffer once we return
        self._wait_for_room()
        with self._changed:
            self._undelivered += len(data)
        self._loop.call_soon_threadsafe(functools.partial(self._deliver, data))

    def sendfile(self, file: FileLike | IO[bytes], offset: int, count: int) -> None:
        """Queue *count* bytes of *file* from *offset* (the loop duplicates the descriptor at once)."""
        self._wait_for_room()
        done = threading.Event()
        failure: list[BaseException] = []

        def queue() -> None:
            try:
                self._connection.sendfile(file, offset, count)
                self._after_output()
            except BaseException as exc:
                failure.append(exc)
            finally:
                done.set()

        self._loop.call_soon_threadsafe(queue)
        # Wait until the loop holds its own descriptor: the caller may close the file on return.
        while not done.wait(1.0):
            if self._gone:
                raise ConnectionAbortedError("the connection ended")
        if failure:
            raise failure[0]

    def _wait_for_room(self) -> None:
        with self._changed:
            while not self._gone and (self._congested or self._undelivered > HANDOFF_HIGH_WATER):
                self._changed.wait()
            if self._gone:
                raise ConnectionAbortedError("the connection ended")

    def call(self, callback: Callable[[], None]) -> None:
        """Run *callback* in the loop's thread, soon; return at once."""
        self._loop.call_soon_threadsafe(callback)

    def wait_until(self, predicate: Callable[[], bool]) -> bool:
        """Wait until *predicate* holds (re-checked at each :meth:`wake`); False if the connection ended first."""
        with self._changed:
            while not predicate():
                if self._gone:
                    return False
                self._changed.wait()
        return True

    # -- the loop's side --------------------------------------------------------------

    def wake(self) -> None:
        """Something the job may wait for changed (called in the loop's thread, or anywhere)."""
        with self._changed:
            self._changed.notify_all()

    def _deliver(self, data: bytes) -> None:
        connection = self._connection
        connection.write(data)
        with self._changed:
            self._undelivered -= len(data)
        self._after_output()

    def _after_output(self) -> None:
        congested = self._connection.write_paused
        with self._changed:
            if congested != self._congested:
                self._congested = congested
                self._changed.notify_all()
            elif self._undelivered <= HANDOFF_HIGH_WATER:
                self._changed.notify_all()

    def drained(self) -> None:
        """The connection's queue went down below its low-water mark."""
        with self._changed:
            self._congested = False
            self._changed.notify_all()

    def ended(self) -> None:
        """The connection is over: every wait of the job ends, and its writes raise from now on."""
        with self._changed:
            self._gone = True
            self._changed.notify_all()


__all__ = ["DEFAULT_POOL_THREADS", "DirectPort", "LoopPort", "WorkerPool"]
