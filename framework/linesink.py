"""Lines to a file, pipe, terminal or socket, written without ever blocking the server.

A log that serving waits for is a way to stop serving: an access log to a
pipe nobody reads filled the pipe, and then every ``write(2)`` blocked the
event loop, each connection's thread, and the graceful stop.  A
:class:`LineSink` never waits: its descriptor is non-blocking (a pipe or a
terminal is reopened through ``/proc/self/fd`` so that the flag is ours
alone, not that of whoever shares the descriptor; a socket is sent to with
``MSG_DONTWAIT``), lines the descriptor cannot take now wait in a bounded
buffer, and once that is full lines are dropped and counted.  A failing log
(a full disk, EPIPE) loses its lines, counted too.  A descriptor that
takes nothing for :data:`STALL_REPORT` seconds, the lines it refused
dropped, and the errors are reported at most once per interval (:class:`~framework.logthrottle.LogThrottle`)
and counted in :meth:`LineSink.status` for the status line.

Lines go out in writes of whole lines of at most ``PIPE_BUF`` bytes, which
a pipe takes atomically, so processes sharing the log never interleave
within a line.  Design after nginx's error-log rule: a log is written
with what the descriptor takes now, never waited for.
"""

from __future__ import annotations

import collections
import errno
import itertools
import os
import select
import socket
import stat
import threading
import time
from collections.abc import Callable

from framework.logthrottle import LogThrottle
from framework.processes import at_child_exit

#: Bytes of lines held while the descriptor takes nothing (a stalled pipe): beyond, lines are dropped.
DEFAULT_BUFFER = 256 * 1024
#: Seconds a descriptor may take nothing before that is reported (lines are held meanwhile).
STALL_REPORT = 5.0

# The most a pipe takes in one atomic write (POSIX: at least 512; Linux: 4096).
_ATOMIC = getattr(select, "PIPE_BUF", 512)

_APPEND_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK | os.O_CLOEXEC


class LineSink:
    """Writes lines to *fd* (or with *send*) without blocking; see the module docstring.

    *name* says which log this is in warnings (``access log to 'FILE'``);
    *owned* closes *fd* at :meth:`close`.  Safe to share between threads.
    """

    def __init__(self, fd: int, *, name: str, owned: bool, send: Callable[[bytes], int] | None = None,
                 buffer_limit: int = DEFAULT_BUFFER, report_interval: float = 10.0) -> None:
        self.fd = fd
        self.name = name
        self.owned = owned
        self._send = send if send is not None else self._write_fd
        self.buffer_limit = buffer_limit
        self._pending: collections.deque[bytes] = collections.deque()
        self._pending_bytes = 0
        self._lock = threading.Lock()
        self._throttle = LogThrottle(report_interval)
        self._socket: socket.socket | None = None
        #: Lines lost: the buffer was full, the descriptor failed, or they were still pending at close.
        self.dropped = 0
        #: Writes that failed with an error other than "would block" (ENOSPC, EPIPE, EIO...).
        self.errors = 0
        self._told_dropped = 0
        #: When the descriptor first refused the held lines (None: it takes what it is given).
        self._blocked_since: float | None = None
        at_child_exit(self)  # a forked child leaves by os._exit: its held lines get one last try

    @classmethod
    def open(cls, target: str, *, name: str) -> LineSink:
        """A sink to *target*: a file name (appended to, created if missing) or ``-`` for standard output.

        Raises :class:`OSError` when the file cannot be opened.
        """
        if target == "-":
            return cls._standard_output(name)
        try:
            fd = os.open(target, _APPEND_FLAGS | os.O_CREAT, 0o644)
        except OSError as exc:
            if exc.errno != errno.ENXIO:
                raise
            # A FIFO nobody reads yet: hold its read end too, so lines wait in it for a reader
            # (a blocking open would hang the start until one came).
            fd = os.open(target, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        return cls(fd, name=name, owned=True)

    @classmethod
    def _standard_output(cls, name: str) -> LineSink:
        mode = os.fstat(1).st_mode
        if stat.S_ISREG(mode):
            return cls(1, name=name, owned=False)  # a file takes what it is given: never a wait
        if stat.S_ISSOCK(mode):
            # O_NONBLOCK on a shared socket would make the process's own prints fail: ask per send.
            sock = socket.socket(fileno=os.dup(1))
            sink = cls(sock.fileno(), name=name, owned=False,
                       send=lambda data: sock.send(data, socket.MSG_DONTWAIT))
            sink._socket = sock
            return sink
        try:
            # A pipe or terminal opened anew: a description of our own, made non-blocking
            # without touching the one the process (and its neighbours) write with.
            return cls(os.open("/proc/self/fd/1", _APPEND_FLAGS), name=name, owned=True)
        except OSError:
            os.set_blocking(1, False)  # no /proc: the shared description, the only way left
            return cls(1, name=name, owned=False)

    def _write_fd(self, data: bytes) -> int:
        return os.write(self.fd, data)

    def write_line(self, line: bytes) -> None:
        """Write *line* (ending in a newline) now, or hold it, or drop and count it; never wait."""
        with self._lock:
            if self._pending:
                self._flush()  # make room first
            if self._pending_bytes + len(line) > self.buffer_limit:
                self.dropped += 1
                self._throttle.warning(f"{self.name}: not being read, buffer full: "
                                       f"{self.dropped} line(s) dropped so far")
                return
            self._pending.append(line)
            self._pending_bytes += len(line)
            self._flush()

    def flush(self) -> None:
        """Write what the descriptor takes now of the held lines (never waits)."""
        with self._lock:
            self._flush()

    def _flush(self) -> None:
        pending = self._pending
        while pending:
            batch = [pending[0]]
            size = len(batch[0])
            for line in itertools.islice(pending, 1, None):
                if size + len(line) > _ATOMIC:
                    break
                batch.append(line)
                size += len(line)
            try:
                written = self._send(b"".join(batch))
            except BlockingIOError:
                # Full for now: the lines wait for the next write or flush.  A reader gone
                # quiet for long is worth a word before any line is lost.
                now = time.monotonic()
                if self._blocked_since is None:
                    self._blocked_since = now
                elif now - self._blocked_since > STALL_REPORT:
                    self._throttle.warning(f"{self.name}: not being read for {now - self._blocked_since:.0f} s:"
                                           f" {len(pending)} line(s) held, {self.dropped} dropped so far")
                return
            except OSError as exc:
                # Full disk, EPIPE, EIO: these lines are lost; say so, not once per line.
                self.errors += 1
                self.dropped += len(batch)
                for line in batch:
                    pending.popleft()
                    self._pending_bytes -= len(line)
                self._throttle.warning(f"{self.name}: cannot write ({os.strerror(exc.errno or 0)}): "
                                       f"{self.dropped} line(s) dropped so far")
                return
            self._blocked_since = None
            while written > 0:
                head = pending[0]
                if written >= len(head):
                    pending.popleft()
                    self._pending_bytes -= len(head)
                    written -= len(head)
                else:
                    pending[0] = head[written:]  # a short write (a nearly full disk): the rest waits
                    self._pending_bytes -= written
                    written = 0

    def status(self) -> str:
        """The counts for the status line: ``dropped=N errors=M``."""
        return f"dropped={self.dropped} errors={self.errors}"

    def leave(self) -> None:
        """Write what can be written now; count what is left as dropped and report any loss (at exit)."""
        # Not waiting for the lock: a thread that held it at a fork would hold it forever in the child.
        if not self._lock.acquire(blocking=False):
            return
        try:
            self._leave()
        finally:
            self._lock.release()

    def _leave(self) -> None:
        self._flush()
        self.dropped += len(self._pending)
        self._pending.clear()
        self._pending_bytes = 0
        if self.dropped > self._told_dropped:
            self._throttle.reset()
            self._throttle.warning(f"{self.name}: {self.dropped} line(s) dropped in all")
            self._told_dropped = self.dropped  # a second leave() (close, then exit) says nothing twice

    def close(self) -> None:
        """Write what can be written now, count and report the rest (:meth:`leave`), and close."""
        with self._lock:
            self._leave()
            if self._socket is not None:
                self._socket.close()
                self._socket = None
            elif self.owned and self.fd >= 0:
                os.close(self.fd)
            self.fd = -1
