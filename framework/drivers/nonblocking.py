"""The non-blocking driver: many protocols, one thread, one selector.

An :class:`EventLoop` owns a :mod:`selectors` selector and a timer heap; each
connection is a :class:`NonBlockingConnection`, the :class:`Transport` its
protocol writes to.  The contract is the blocking driver's
(:mod:`framework.drivers.blocking`), carried out without ever waiting:

* ``write`` sends at once when nothing is queued; what the kernel does not
  take is queued as a :class:`memoryview` (no copy of ``bytes``), in order
  with file segments queued by ``sendfile``, which go out with
  ``sendfile(2)`` from an advancing offset on a duplicate of the caller's
  descriptor (one per file, however many of its responses are queued).
  Several queued buffers go out in one ``sendmsg`` (gather write), so many
  small writes to a slow reader do not cost a system call each.
* Flow control: a connection whose queue grows above :data:`HIGH_WATER` is
  no longer read (so its protocol stops producing) until the queue drains
  below :data:`LOW_WATER`; so is one with more than :data:`FILES_HIGH_WATER`
  file segments queued (a client that pipelines requests for a small file
  and never reads), until they are down to :data:`FILES_LOW_WATER`.  Memory
  per connection stays bounded by the high marks plus what one callback
  writes.  A connection whose response finds no descriptor left (``EMFILE``)
  ends alone, with a warning that does not flood the log.
* ``close`` flushes the queue, then drains unread input so the close sends
  FIN rather than RST; with ``linger`` the sending side is shut down and
  input is discarded until the peer's end-of-file or the linger time.
* Idle timeouts, protocol deadlines and lingering closes are timers in one
  heap.  Cancelled timers stay in the heap until they come up (lazy
  deletion) unless they outnumber the live ones, when the heap is rebuilt.
  The idle timer is not re-armed on every read: a connection only records
  the time of its last progress, and when its timer comes up it either
  times out or sets the next one from that time.  Nor is it armed for a
  connection that ends in its first turn (served at once).
* A protocol's exception ends its own connection only: ``connection_lost``
  gets the exception, then the loop's error handler (the server's
  ``handle_error``).  A vanished peer ends its connection quietly.

A protocol that must run code that blocks (an application) hands it to
:meth:`NonBlockingConnection.offload`: it runs on the loop's bounded pool of
threads, and talks to its connection through a
:class:`~framework.drivers.offload.LoopPort` whose writes wait while the
queue is above the high mark (:mod:`framework.drivers.offload`).  Other
threads reach the loop with :meth:`EventLoop.call_soon_threadsafe`.

``connection_lost`` is never called from inside another callback of the
same protocol: connections that end are reported at the end of the loop
iteration, after their socket is closed.

With a TLS context (``EventLoop(tls=...)``) every connection carries a
:class:`framework.drivers.tls.TlsStream` between its socket and its protocol:
the handshake runs first, driven by the same events and bounded by the idle
timeout from the moment of accept (progress does not extend it), and
``connection_made`` comes only once it is complete; a peer that fails it
ends quietly and its protocol never hears of it.  Reads, writes and file
bodies then go through the stream, and a graceful close sends close_notify.
"""

from __future__ import annotations

import collections
import functools
import heapq
import logging
import os
import selectors
import socket
import time
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any

from framework.address import close_socket
from framework.drivers.common import (
    LINGER_MAX_BYTES,
    RECV_SIZE,
    STOP_IDLE_GRACE,
    ConnectionTimeout,
    OutOfDescriptors,
    ShortFileError,
    ends_quietly,
    has_unread_input,
    sendfile_some,
    socket_extra_info,
)
from framework.logthrottle import LogThrottle
from framework.protocol import FileLike, Port, Protocol, Transport
from framework.signals import PIPE_READ_SIZE

if TYPE_CHECKING:
    import ssl

    from framework.drivers.offload import LoopPort, WorkerPool
    from framework.drivers.tls import TlsStream

log = logging.getLogger("forkthread")

READ = selectors.EVENT_READ
WRITE = selectors.EVENT_WRITE

#: Stop reading a connection whose queued output exceeds this many bytes...
HIGH_WATER = 256 * 1024
#: ...and read it again once the queue is down to this many.
LOW_WATER = 64 * 1024
#: The same for queued file segments (responses), whatever their size.
FILES_HIGH_WATER = 64
FILES_LOW_WATER = 16

#: Queued buffers handed to one sendmsg() at most (IOV_MAX is 1024 on Linux).
IOV_BATCH = 64

#: Rebuild the timer heap when more than this many cancelled timers make up over half of it.
_COMPACT_MIN = 64

# Connection states.
_OPEN = 0  # reading and writing
_CLOSING = 1  # close() called: flushing the queue, no more reading for the protocol
_LINGERING = 2  # queue flushed, sending side shut down: discarding input until EOF or the linger time
_CLOSED = 3  # socket closed; connection_lost pending or delivered

ErrorHandler = Callable[[BaseException, str], None]


def log_handler_error(exc: BaseException, peer: str) -> None:
    """The default error handler: log a protocol's fault with its traceback."""
    log.error("connection from %s: handler failed: %r", peer, exc, exc_info=exc)


class Timer:
    """A callback due at a monotonic time; the heap skips it once cancelled."""

    __slots__ = ("callback", "when")

    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback: Callable[[], None] | None = callback

    def __lt__(self, other: Timer) -> bool:
        return self.when < other.when


class _HeldFile:
    """Our own descriptor of a file (an inode) with queued segments, shared by all of them."""

    __slots__ = ("fd", "key", "segments")

    def __init__(self, fd: int, key: tuple[int, int]) -> None:
        self.fd = fd
        self.key = key
        self.segments = 0


class _FileSegment:
    """Part of a file still to be sent: our held descriptor of it, where to go on, how much is left."""

    __slots__ = ("fd", "held", "offset", "remaining")

    def __init__(self, held: _HeldFile, offset: int, remaining: int) -> None:
        self.held = held
        self.fd = held.fd
        self.offset = offset
        self.remaining = remaining


class EventLoop:
    """A selector, a timer heap and the connections they drive, in the calling thread.

    *idle_timeout* closes a connection without progress for that many
    seconds (None: never).  *handle_error* is told about protocol faults and
    unexpected socket errors (``handle_error(exc, peer)``).  *publish_counts*,
    when given, is called with ``(served, active)`` whenever a connection
    starts or ends, so that another process can read them (a pool worker's
    scoreboard).  With *tls*, every connection
    speaks TLS with that server-side context.  Call :meth:`run_once` in a
    loop; :meth:`close` at the end.
    """

    def __init__(
        self,
        selector: selectors.BaseSelector | None = None,
        *,
        idle_timeout: float | None = None,
        handle_error: ErrorHandler = log_handler_error,
        publish_counts: Callable[[int, int], None] | None = None,
        tls: ssl.SSLContext | None = None,
        pool_threads: int | None = None,
    ) -> None:
        self.selector = selector if selector is not None else selectors.DefaultSelector()
        self.idle_timeout = idle_timeout
        self.handle_error = handle_error
        self._publish_counts = publish_counts
        #: The connections being served now.
        self.connections: set[NonBlockingConnection] = set()
        #: How many connections were ever added.
        self.served = 0
        #: time.monotonic() when the selector last returned: the clock of this iteration.
        self.now = time.monotonic()
        self._timers: list[Timer] = []
        self._cancelled = 0
        self._ended: collections.deque[NonBlockingConnection] = collections.deque()
        #: Warns when connections end for want of a descriptor, without flooding the log.
        self.descriptor_warnings = LogThrottle()
        #: Threads of the pool that runs blocking jobs (None: the pool's default); made at the first job.
        self.pool_threads = pool_threads
        self._pool: WorkerPool | None = None
        # Callbacks other threads queued (call_soon_threadsafe) and the pipe that wakes the loop for them.
        self._soon: collections.deque[Callable[[], None]] = collections.deque()
        self._soon_pipe: tuple[int, int] | None = None
        # A wake-up byte is in the pipe, not yet read: later callbacks need not write another.
        self._soon_signalled = False
        self._tls_layer: Callable[[socket.socket], TlsStream] | None = None
        if tls is not None:
            # Imported only here: a loop without TLS never loads OpenSSL.
            from framework.drivers.tls import TlsStream

            self._tls_layer = functools.partial(TlsStream, context=tls)

    # -- timers ----------------------------------------------------------------

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        """Run *callback* at monotonic time *when* (or soon after); return the timer."""
        timer = Timer(when, callback)
        heapq.heappush(self._timers, timer)
        return timer

    def cancel(self, timer: Timer) -> None:
        """Make sure *timer* does not run (idempotent)."""
        if timer.callback is None:
            return
        timer.callback = None
        self._cancelled += 1
        if self._cancelled > _COMPACT_MIN and self._cancelled * 2 > len(self._timers):
            # Lazy deletion would otherwise keep every short connection's idle
            # timer (and through it the connection) until its time came up.
            self._timers = [timer for timer in self._timers if timer.callback is not None]
            heapq.heapify(self._timers)
            self._cancelled = 0

    def next_timer(self) -> float | None:
        """The monotonic time the next live timer is due, or None."""
        timers = self._timers
        while timers and timers[0].callback is None:
            heapq.heappop(timers)
            self._cancelled -= 1
        return timers[0].when if timers else None

    def _run_timers(self) -> None:
        now = self.now
        while self._timers and self._timers[0].when <= now:
            timer = heapq.heappop(self._timers)
            callback = timer.callback
            if callback is None:
                self._cancelled -= 1
                continue
            timer.callback = None
            callback()

    # -- other threads -------------------------------------------------------------

    def call_soon_threadsafe(self, callback: Callable[[], None]) -> None:
        """Run *callback* in the loop's thread at its next iteration; safe from any thread."""
        pipe = self._soon_pipe
        if pipe is None:
            raise RuntimeError("call_soon_threadsafe before the loop opened its pipe (see worker_pool)")
        self._soon.append(callback)
        if self._soon_signalled:
            return  # the loop has yet to read the last byte, and will run this callback with the others
        self._soon_signalled = True
        try:
            os.write(pipe[1], b"\0")
        except BlockingIOError:
            pass  # the pipe is full of wake-ups already: the loop will run the deque anyway
        except OSError:
            pass  # the loop is closed: nobody will run it

    def _run_soon(self) -> None:
        assert self._soon_pipe is not None
        try:
            # A short read emptied the pipe; one more would raise BlockingIOError, for nothing.
            while len(os.read(self._soon_pipe[0], PIPE_READ_SIZE)) == PIPE_READ_SIZE:
                pass
        except BlockingIOError:
            pass
        # Cleared after the pipe is read (a byte written meanwhile stays for the next round) and
        # before the deque is: a callback queued from now on writes a byte again.  Cleared first,
        # a signal set just after could lose its byte to this read and stall every later one.
        self._soon_signalled = False
        soon = self._soon
        for _ in range(len(soon)):
            soon.popleft()()

    def worker_pool(self) -> WorkerPool:
        """The pool of threads for blocking jobs (made, with the pipe back to the loop, at the first call)."""
        if self._pool is None:
            from framework.drivers.offload import DEFAULT_POOL_THREADS, WorkerPool

            if self._soon_pipe is None:
                self._soon_pipe = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
                self.add_reader(self._soon_pipe[0], self._run_soon)
            self._pool = WorkerPool(self.pool_threads or DEFAULT_POOL_THREADS)
        return self._pool

    # -- descriptors -------------------------------------------------------------

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None:
        """Call *callback* whenever *fd* is readable (a listener, a wakeup pipe)."""
        self.selector.register(fd, READ, lambda events: callback())

    def remove_reader(self, fd: int) -> None:
        """Stop watching *fd*."""
        self.selector.unregister(fd)

    def add_connection(self, sock: socket.socket, peer: str, protocol: Protocol) -> NonBlockingConnection:
        """Serve *protocol* over the connected *sock* (made non-blocking) from now on.

        ``protocol.connection_made`` is called before this returns.  The loop
        owns *sock* from here: it is closed when the connection ends.
        """
        sock.setblocking(False)
        self.now = time.monotonic()
        tls = self._tls_layer(sock) if self._tls_layer is not None else None
        connection = NonBlockingConnection(self, sock, peer, protocol, tls)
        self.connections.add(connection)
        self.served += 1
        if self._publish_counts is not None:
            self._publish_counts(self.served, len(self.connections))
        connection._start()
        return connection

    def _forget(self, connection: NonBlockingConnection) -> None:
        self.connections.discard(connection)
        if self._publish_counts is not None:
            self._publish_counts(self.served, len(self.connections))
        self._ended.append(connection)

    # -- running -----------------------------------------------------------------

    def run_once(self, timeout: float | None = None) -> None:
        """Wait up to *timeout* seconds (None: until something happens) and handle what is ready.

        The wait is shortened to the next timer.  Ready descriptors are
        handled, then due timers run, then ended connections are reported.
        """
        due = self.next_timer() if self._timers else None  # no call per turn for an empty heap
        if due is not None:
            delay = max(0.0, due - time.monotonic())
            timeout = delay if timeout is None else min(timeout, delay)
        ready = self.selector.select(timeout)
        self.now = time.monotonic()
        for key, events in ready:
            key.data(events)
        if self._timers:
            self._run_timers()
        if self._ended:
            self.report_ended()

    def report_ended(self) -> None:
        """Deliver ``connection_lost`` (and error reports) for connections that ended."""
        while self._ended:
            self._ended.popleft()._report()

    def running(self) -> list[str]:
        """The connections served now, each as ``PEER (N s)``: how long it has been served."""
        now = time.monotonic()
        return [f"{connection.peer} ({now - connection.since:.1f} s)" for connection in list(self.connections)]

    def notify_stopping(self) -> None:
        """Tell every connection's protocol that a graceful stop began."""
        for connection in list(self.connections):
            connection.notify_stopping()
        self.report_ended()

    def abort_all(self, exc: BaseException) -> int:
        """End every connection at once with *exc*; return how many there were."""
        connections = list(self.connections)
        for connection in connections:
            connection._teardown(exc)
        self.report_ended()
        return len(connections)

    def close(self) -> None:
        """Abort what is left, stop the job pool, cancel the timers and close the selector (not the
        readers' descriptors)."""
        self.abort_all(ConnectionAbortedError("event loop closed"))
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        if self._soon_pipe is not None:
            self.remove_reader(self._soon_pipe[0])
            for fd in self._soon_pipe:
                os.close(fd)
            self._soon_pipe = None
            self._soon.clear()
        self._timers.clear()
        self._cancelled = 0
        self.selector.close()


class NonBlockingConnection(Transport):
    """One connection in an :class:`EventLoop`: the :class:`Transport` its protocol talks to.

    Made by :meth:`EventLoop.add_connection`.  :attr:`buffered` is the number
    of bytes queued for sending (file segments included); :attr:`reading`
    says whether the loop reads the socket now (False while flow control
    holds it, after end-of-file, and once closing).  With *tls*, bytes go
    through that :class:`~framework.drivers.tls.TlsStream` and the protocol
    starts once its handshake is complete.
    """

    # The state every connection starts in, as class attributes: an instance
    # gets its own value at the first change only, so a connection that ends in
    # its first turn sets a third of them (each store, per connection, counts).
    #: Bytes queued for sending.
    buffered = 0
    #: Our descriptors of the files with queued segments, by (device, inode) (made at the first).
    _held: dict[tuple[int, int], _HeldFile] | None = None
    _segments = 0
    _state = _OPEN
    _mask = 0
    _eof = False
    _paused = False
    #: Reading held by the protocol (pause_reading): back-pressure from other connections.
    _reading_held = False
    _port: LoopPort | None = None  # the port of the job offloaded now, if any
    _linger = 0.0
    _linger_budget = LINGER_MAX_BYTES
    #: Closed with the C close: a plain ``socket.socket`` nobody else holds (see the blocking driver's).
    _own_close = False
    _error: BaseException | None = None
    _faulted = False
    _idle_timer: Timer | None = None
    _deadline_timer: Timer | None = None
    _deadline_at: float | None = None  # when the protocol's deadline is due (None: no deadline)
    _tls: TlsStream | None = None
    #: True until the TLS handshake is complete (the protocol has not started yet).
    _handshaking = False
    #: The selector's data for this socket, bound when it is first registered (one bound
    #: method, not one per modify(); none for a connection that ends in its first turn).
    _handler: Callable[[int], None] | None = None
    _deadline_due = False  # the deadline passed while output was queued
    _linger_timer: Timer | None = None

    def __init__(
        self, loop: EventLoop, sock: socket.socket, peer: str, protocol: Protocol, tls: TlsStream | None = None,
    ) -> None:
        self._loop = loop
        self.sock = sock
        self._fd = sock.fileno()
        self._own_close = type(sock) is socket.socket
        # What moves bytes: the socket's own calls, or the TLS stream's with the same meaning
        # (sendmsg and sendfile, needed less often, are asked for when needed: _sendmsg, _sendfile).
        io: Any = sock
        if tls is not None:
            io = self._tls = tls
            self._handshaking = True
        self._recv = io.recv
        self._send = io.send
        self._peer = peer
        self.protocol = protocol
        self._queue: collections.deque[memoryview | _FileSegment] = collections.deque()
        #: When the connection was accepted (``time.monotonic()``).
        self.since = self._last_active = loop.now

    # -- Transport -----------------------------------------------------------------

    @property
    def peer(self) -> str:
        """The peer's address as text."""
        return self._peer

    @property
    def reading(self) -> bool:
        """True while the loop watches the socket for input."""
        return bool(self._mask & READ)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """``peername``, ``sockname``, ``socket`` or ``write_buffer_size``, asyncio style."""
        if name == "write_buffer_size":
            return self.buffered
        if name == "ssl_object":
            return self._tls.ssl_object if self._tls is not None else default
        if name == "socket":
            self._own_close = False  # files made of it: closed by socket.close(), which waits for them
        return socket_extra_info(self.sock, name, default)

    def pause_reading(self) -> None:
        """Stop reading the socket (and so calling ``data_received``) until :meth:`resume_reading`."""
        self._reading_held = True
        if self._state == _OPEN:
            self._update_mask()

    def resume_reading(self) -> None:
        """Read the socket again after :meth:`pause_reading`."""
        self._reading_held = False
        if self._state == _OPEN:
            self._update_mask()

    def is_closing(self) -> bool:
        """True once close() or abort() was called, or the connection ended otherwise."""
        return self._state != _OPEN

    @property
    def write_paused(self) -> bool:
        """True while the queue is above its high-water mark (until it drains below the low one)."""
        return self._paused

    def offload(self, job: Callable[[Port], None]) -> None:
        """Run *job* on the loop's pool of threads with a :class:`~framework.drivers.offload.LoopPort`."""
        from framework.drivers.offload import LoopPort

        pool = self._loop.worker_pool()
        port = self._port = LoopPort(self._loop, self)
        if self._state == _CLOSED:
            port.ended()
        pool.submit(functools.partial(job, port))

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Send *data* now as far as the kernel takes it; queue the rest, in order."""
        if self._state != _OPEN or not data:
            return
        if type(data) is not bytes:
            data = memoryview(data).cast("B")
        if self._queue:
            self._enqueue(data, 0)
            return
        try:
            sent = self._send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self._send_failed(exc)
            return
        if sent:
            self._last_active = self._loop.now
        if sent < len(data):
            self._enqueue(data, sent)

    def sendfile(self, file: FileLike | IO[bytes], offset: int = 0, count: int | None = None) -> None:
        """Send *count* bytes of *file* from *offset* with ``sendfile(2)``; queue what does not fit now."""
        if self._state != _OPEN:
            return
        file_fd = file.fileno()
        info = None
        if count is None:
            info = os.fstat(file_fd)
            count = info.st_size - offset
        if count <= 0:
            return
        if not self._queue:
            try:
                while count > 0:
                    sent = self._sendfile(file_fd, offset, count)
                    offset += sent
                    count -= sent
                    self._last_active = self._loop.now
            except BlockingIOError:
                pass
            except OSError as exc:
                self._send_failed(exc)
                return
            if count == 0:
                return
        held = self._hold(file_fd, info or os.fstat(file_fd))
        if held is None:
            return
        held.segments += 1
        self._segments += 1
        self._queue.append(_FileSegment(held, offset, count))
        self.buffered += count
        self._queued()

    def _sendmsg(self, buffers: list[memoryview]) -> int:
        """``sendmsg`` of *buffers* on the socket, or through TLS."""
        return (self.sock if self._tls is None else self._tls).sendmsg(buffers)

    def _sendfile(self, file_fd: int, offset: int, count: int) -> int:
        """One ``sendfile(2)`` step (:func:`~framework.drivers.common.sendfile_some`), or its TLS stand-in."""
        if self._tls is None:
            return sendfile_some(self._fd, file_fd, offset, count)
        return self._tls.sendfile(file_fd, offset, count)

    def _hold(self, file_fd: int, info: os.stat_result) -> _HeldFile | None:
        """Our own descriptor of *file_fd*'s file, since the caller may close its own as soon as we return.

        One per file (inode), shared by its queued segments: a client that
        pipelines a thousand requests for one file costs one descriptor.  When
        the process has none left, this connection ends (None), alone.
        """
        key = (info.st_dev, info.st_ino)
        if self._held is None:
            self._held = {}
        held = self._held.get(key)
        if held is None:
            try:
                held = self._held[key] = _HeldFile(os.dup(file_fd), key)
            except OSError as exc:
                self._loop.descriptor_warnings.warning(
                    f"connection from {self._peer} ended: no descriptor for its queued response:"
                    f" {exc.strerror or exc}")
                self._teardown(OutOfDescriptors(exc.errno, "no descriptor for a queued response"))
                return None
        return held

    def _release(self, held: _HeldFile) -> None:
        """One segment of *held* is sent (or dropped): close our descriptor after its last."""
        held.segments -= 1
        self._segments -= 1
        if not held.segments:
            assert self._held is not None
            del self._held[held.key]
            os.close(held.fd)

    def close(self, *, linger: float = 0.0) -> None:
        """Send what is queued, then end the connection gracefully (see :meth:`Transport.close`)."""
        if linger > self._linger:
            self._linger = linger
        if self._state != _OPEN:
            return
        self._state = _CLOSING
        if self._queue or (self._tls is not None and self._tls.pending > 0):
            self._update_mask()
        else:
            self._finish()

    def abort(self) -> None:
        """End the connection at once, dropping anything queued."""
        self._teardown(ConnectionAbortedError("aborted by the protocol"))

    def set_deadline(self, seconds: float | None) -> None:
        """Arrange for ``protocol.deadline_expired()`` in *seconds* (None cancels)."""
        self._deadline_due = False
        # A protocol that sets and clears a deadline around every request (HTTP's
        # header timeout) would push and cancel a timer each time.  Instead the due
        # time is recorded, and a timer already in the heap that comes up no later
        # is kept: when it comes up it sees the current due time and re-arms for it
        # or does nothing (as the idle timer does).
        if seconds is None or self._state == _CLOSED:
            self._deadline_at = None
            return
        due = time.monotonic() + seconds
        self._deadline_at = due
        timer = self._deadline_timer
        if timer is not None:
            if timer.when <= due:
                return
            self._loop.cancel(timer)
        self._deadline_timer = self._loop.call_at(due, self._deadline_expired)

    # -- queueing ------------------------------------------------------------------------

    def _enqueue(self, data: bytes | memoryview, start: int) -> None:
        if type(data) is bytes:
            view = memoryview(data)
            if start:
                view = view[start:]
        else:
            # The caller may reuse a mutable buffer once write() returns: keep a copy.
            view = memoryview(bytes(data[start:]))
        self._queue.append(view)
        self.buffered += len(view)
        self._queued()

    def _queued(self) -> None:
        if self.buffered > HIGH_WATER or self._segments > FILES_HIGH_WATER:
            self._paused = True
        self._update_mask()

    def _update_mask(self) -> None:
        """Watch the socket for exactly what the state asks for now."""
        state = self._state
        if state == _OPEN:
            want = 0 if self._eof or self._paused or self._reading_held else READ
        elif state == _LINGERING:
            want = READ
        else:
            want = 0
        if self._queue or self._tls_pending():
            want |= WRITE
        mask = self._mask
        if want != mask:
            selector = self._loop.selector
            if not mask:
                if self._handler is None:
                    self._handler = self._on_handshake_events if self._handshaking else self._on_events
                selector.register(self._fd, want, self._handler)
            elif not want:
                selector.unregister(self._fd)
            else:
                selector.modify(self._fd, want, self._handler)
            self._mask = want

    # -- events ----------------------------------------------------------------------------

    def _tls_pending(self) -> bool:
        """True while the TLS stream holds ciphertext the kernel has not taken yet."""
        return self._tls is not None and self._tls.pending > 0

    def _start(self) -> None:
        if self._handshaking:
            self._on_handshake_events(READ)
        else:
            self._begin()
        loop = self._loop
        # Armed once the first turn is over, due from the accept all the same (loop.now
        # has not moved): a connection served and closed in its first turn -- a short
        # one -- never puts a timer in the heap.
        if loop.idle_timeout is not None and self._state != _CLOSED:
            self._idle_timer = loop.call_at(loop.now + loop.idle_timeout, self._idle_check)

    def _on_handshake_events(self, events: int) -> None:
        """Advance the TLS handshake; start the protocol once it is complete."""
        assert self._tls is not None
        try:
            self._tls.do_handshake()
        except BlockingIOError:
            self._update_mask()  # read, and write while our flight is pending
            return
        except OSError as exc:  # ssl.SSLError included: ends quietly
            self._error = exc
            self._finish()  # discard what OpenSSL left unread: close with FIN, not a reset
            return
        self._handshaking = False
        self._last_active = self._loop.now  # the protocol's idle time starts now, not at accept
        if self._mask:
            self._handler = self._on_events
            self._loop.selector.modify(self._fd, self._mask, self._handler)
        else:
            self._handler = None  # bound to _on_events at the registration
        self._begin()

    def _begin(self) -> None:
        """Start the protocol: ``connection_made``, then the first read."""
        try:
            self.protocol.connection_made(self)
        except Exception as exc:
            self._fault(exc)
            return
        if self._state == _OPEN and not self._paused and not self._reading_held:
            # The first request is often in already (the client sent it right
            # after connecting): read it now and save one trip through poll().
            self._on_readable()
        if self._state != _CLOSED:
            # Registered only now: a connection that ended in connection_made
            # (daytime) never costs the selector anything.
            self._update_mask()

    def _on_events(self, events: int) -> None:
        # Write first: draining the queue may let a paused connection read again.
        if events & WRITE and self._mask & WRITE:
            self._flush()
        if events & READ and self._mask & READ:
            self._on_readable()

    def _on_readable(self) -> None:
        try:
            data = self._recv(RECV_SIZE)
        except BlockingIOError:
            return
        except OSError as exc:
            # While lingering the response is out; a reset now changes nothing for the protocol.
            self._teardown(None if self._state == _LINGERING else exc)
            return
        if self._state == _LINGERING:
            self._linger_budget -= len(data)
            if not data or self._linger_budget <= 0:
                self._teardown(None)
            return
        self._last_active = self._loop.now
        if data:
            try:
                self.protocol.data_received(data)
            except Exception as exc:
                self._fault(exc)
            return
        self._eof = True
        try:
            keep_open = self.protocol.eof_received()
        except Exception as exc:
            self._fault(exc)
            return
        if self._state == _OPEN:
            if keep_open:
                self._update_mask()
            else:
                self.close()

    def _flush(self) -> None:
        """Send from the queue until it is empty or the kernel's buffer is full."""
        queue = self._queue
        before = self.buffered
        try:
            if self._tls is not None and not self._tls.flush():
                raise BlockingIOError  # earlier ciphertext first
            while queue:
                item = queue[0]
                if type(item) is memoryview:
                    if len(queue) > 1 and type(queue[1]) is memoryview:
                        if not self._send_batch():
                            break
                        continue
                    sent = self._send(item)
                    self.buffered -= sent
                    if sent < len(item):
                        queue[0] = item[sent:]
                        break  # the socket buffer is full: the next send would only say EAGAIN
                    queue.popleft()
                else:
                    assert isinstance(item, _FileSegment)
                    sent = self._sendfile(item.fd, item.offset, item.remaining)
                    self.buffered -= sent
                    item.offset += sent
                    item.remaining -= sent
                    if item.remaining:
                        break
                    self._release(item.held)
                    queue.popleft()
        except BlockingIOError:
            pass
        except OSError as exc:
            self._send_failed(exc)
            return
        if self.buffered != before:
            self._last_active = self._loop.now
        if self._paused and self.buffered <= LOW_WATER and self._segments <= FILES_LOW_WATER:
            self._paused = False
            if self._port is not None:
                self._port.drained()
        if not queue and self._state == _CLOSING and not self._tls_pending():
            self._finish()
            return
        self._update_mask()
        if not queue and self._deadline_due:
            self._fire_deadline()

    def _send_batch(self) -> bool:
        """Send the queued buffers at the head in one ``sendmsg``; True when all of them went."""
        queue = self._queue
        buffers: list[memoryview] = []
        for item in queue:
            if type(item) is not memoryview or len(buffers) == IOV_BATCH:
                break
            buffers.append(item)
        sent = self._sendmsg(buffers)
        self.buffered -= sent
        for view in buffers:
            if sent < len(view):
                if sent:
                    queue[0] = view[sent:]
                return False
            sent -= len(view)
            queue.popleft()
        return True

    def _send_failed(self, exc: OSError) -> None:
        """End the connection after a failed send (a vanished peer, mostly)."""
        if isinstance(exc, ShortFileError):
            # The promised length can no longer be kept: the framing is broken.
            log.warning("%s: %s; aborting the connection", self._peer, exc)
        self._teardown(exc)

    # -- timers ------------------------------------------------------------------------------

    def _idle_check(self) -> None:
        self._idle_timer = None
        if self._state in (_CLOSED, _LINGERING):
            return  # a lingering close has its own, shorter, limit
        loop = self._loop
        timeout = loop.idle_timeout
        assert timeout is not None
        due = self._last_active + timeout
        if loop.now >= due:
            self._teardown(ConnectionTimeout(f"idle for {timeout:g} s"))
        else:
            self._idle_timer = loop.call_at(due, self._idle_check)

    def _deadline_expired(self) -> None:
        self._deadline_timer = None
        due = self._deadline_at
        if due is None:
            return  # cleared since this timer was set
        if due > self._loop.now:
            # Moved later since this timer was set (see set_deadline).
            self._deadline_timer = self._loop.call_at(due, self._deadline_expired)
            return
        self._deadline_at = None
        if self._state != _OPEN:
            return
        if self._queue or self._tls_pending():
            # As in the blocking driver, a deadline does not count while the
            # peer is slow to read our output: it fires once the queue is sent.
            self._deadline_due = True
            return
        self._fire_deadline()

    def notify_stopping(self) -> None:
        """Tell the protocol that a graceful stop began (once), unless it is already closing.

        Told once the connection has been quiet (nothing received or sent) for
        :data:`~framework.drivers.common.STOP_IDLE_GRACE`, so a request on its
        way to a connection just accepted (or just answered) is read first;
        until then a timer asks again.  Input the kernel holds unread makes it
        busy too: the loop's clock only knows what the loop read, and a stop
        can be seen before the loop took what arrived (in the same turn, or
        begun by another thread), which would be discarded with a connection
        closed as idle.  A connection still in its TLS handshake by then has
        said nothing, like an idle keep-alive one: it ends.
        """
        if self.is_closing():
            return
        quiet_at = self._last_active + STOP_IDLE_GRACE
        if has_unread_input(self._fd):  # the loop reads it first, and the connection is active from then
            quiet_at = max(quiet_at, self._loop.now + STOP_IDLE_GRACE)
        if quiet_at > self._loop.now:
            self._loop.call_at(quiet_at, self.notify_stopping)
            return
        if self._handshaking:
            self._teardown(ConnectionAbortedError("server stopping during the TLS handshake"))
            return
        try:
            self.protocol.server_stopping()
        except Exception as exc:
            self._fault(exc)

    def _fire_deadline(self) -> None:
        self._deadline_due = False
        try:
            self.protocol.deadline_expired()
        except Exception as exc:
            self._fault(exc)

    # -- the end ---------------------------------------------------------------------------------

    def _finish(self) -> None:
        """The queue is sent: close gracefully, draining input so the peer gets FIN, not RST."""
        if self._tls is not None:
            self._tls.close_notify()
            # From here on input is only discarded: read the socket itself.
            self._recv = self.sock.recv
        if self._eof or (self._linger <= 0 and not has_unread_input(self._fd)):
            self._teardown(None)  # nothing to discard: a close sends FIN
            return
        sock = self.sock
        try:
            if self._linger > 0:
                sock.shutdown(socket.SHUT_WR)
            while self._linger_budget > 0:
                data = sock.recv(RECV_SIZE)
                if not data:
                    break
                self._linger_budget -= len(data)
            self._teardown(None)
            return
        except BlockingIOError:
            pass  # all input read for now
        except OSError:
            self._teardown(None)  # the peer is gone: nothing left to protect
            return
        if self._linger <= 0:
            self._teardown(None)
            return
        self._state = _LINGERING
        self._linger_timer = self._loop.call_at(time.monotonic() + self._linger, self._linger_expired)
        self._update_mask()

    def _linger_expired(self) -> None:
        self._linger_timer = None
        self._teardown(None)

    def _fault(self, exc: Exception) -> None:
        """The protocol raised: end this connection (only) and report the fault."""
        self._error = exc
        self._faulted = True
        self._teardown(exc)

    def _teardown(self, exc: BaseException | None) -> None:
        """Close the socket at once and schedule the report; idempotent."""
        if self._state == _CLOSED:
            return
        self._state = _CLOSED
        if exc is not None and self._error is None:
            self._error = exc
        loop = self._loop
        if self._mask:
            loop.selector.unregister(self._fd)
            self._mask = 0
        # Each test below is false for a short connection: it ends storing nothing.
        if self._idle_timer is not None:
            loop.cancel(self._idle_timer)
            self._idle_timer = None
        if self._deadline_timer is not None:
            loop.cancel(self._deadline_timer)
            self._deadline_timer = None
        if self._linger_timer is not None:
            loop.cancel(self._linger_timer)
            self._linger_timer = None
        if self._held:
            for held in self._held.values():
                os.close(held.fd)
            self._held.clear()
            self._segments = 0
        if self._queue:
            self._queue.clear()
            self.buffered = 0
        if self._port is not None:
            self._port.ended()
        loop._forget(self)
        if self._own_close:
            close_socket(self.sock)  # nobody else holds it: the C close, without socket.close()'s two frames
        else:
            self.sock.close()  # its class's own (a connection a pre-forked master passed), or one with files

    def _report(self) -> None:
        """Tell the protocol the connection is over, and the server what went wrong, if anything."""
        loop = self._loop
        exc = self._error
        protocol = self.protocol
        # The protocol holds this transport, and this its protocol (and its bound handler):
        # let go of both, so that reference counting frees the connection (a cycle would wait
        # for the collector, paid per connection).
        self.protocol = _ENDED_PROTOCOL
        if self._handler is not None:  # bound only if the socket was ever registered
            self._handler = None
        if not self._handshaking:  # a protocol never started is never told it ended
            try:
                protocol.connection_lost(exc)
            except Exception as lost_exc:
                loop.handle_error(lost_exc, self._peer)
        if exc is None:
            return
        if self._faulted:
            loop.handle_error(exc, self._peer)
        elif ends_quietly(exc):
            log.debug("connection from %s ended: %s", self._peer, exc)
        else:
            loop.handle_error(exc, self._peer)


#: What an ended connection holds in place of its protocol: one that does nothing.
_ENDED_PROTOCOL = Protocol()


__all__ = ["FILES_HIGH_WATER", "FILES_LOW_WATER", "HIGH_WATER", "LOW_WATER", "EventLoop", "NonBlockingConnection",
           "Timer", "log_handler_error"]
