"""The helper thread that keeps a process's promises while its connections block in the kernel.

A connection served by a blocking ``socketserver`` handler
(:mod:`framework.drivers.handler`), or by a protocol waiting in a blocking
``recv`` in the main thread (:mod:`framework.drivers.blocking`), leaves its
thread in a system call for as long as the peer likes.  Two things must
still happen meanwhile, and :class:`ConnectionWatch` does them:

* **Signals.**  A thread blocked in ``recv`` never polls the wakeup pipe.
  When it is the main thread, the watch runs the signal actions (SIGTERM
  starts the stop, SIGUSR1 logs the status line); the first signal starts
  it, from :attr:`framework.signals.SignalDispatcher.on_record`.
* **The graceful stop.**  Once a stop began, a handler's connection idle
  for :data:`STOP_IDLE_GRACE` seconds (nothing received or sent, nothing
  queued: see :class:`_StopRules`) sees end-of-input: its reading side is
  shut down, so a handler waiting in ``readline`` for the next request gets
  ``b""`` and returns, as if the client had closed.  A protocol's
  connection is attached without that rule (``ends_idle=False``: its
  protocol wants no stop notice).  At the graceful deadline every
  connection still watched is shut down in both directions: a read returns
  ``b""``, a write fails with ``EPIPE`` (a quiet end).
"""

from __future__ import annotations

import _thread
import contextlib
import logging
import os
import select
import socket
import threading
import time

from framework.drivers.common import STOP_IDLE_GRACE, bytes_queued, earliest, poll_timeout_ms, tcp_idle_for
from framework.lifecycle import Lifecycle
from framework.signals import Wakeup, start_thread_without_signals

log = logging.getLogger("forkthread")

#: After the watch saw input arrive on a connection, how long it looks away while the
#: handler reads it (unread input keeps a socket readable: looking again at once would spin).
ACTIVITY_REST = 0.05

_READABLE = select.POLLIN | select.POLLPRI | select.POLLERR | select.POLLHUP


class ConnectionWatch:
    """The helper thread of one process that runs signals and the graceful stop for connections blocked in the kernel.

    It exists only when there is work for it, so serving costs no thread
    and no descriptor: it starts when a stop begins while connections are
    watched (or one is attached during a stop), or when a signal arrives
    while a watched connection blocks the main thread, and it ends, closing
    its wake-up pipe, as soon as no connection is watched, or at
    :meth:`close`.  It is started with :func:`_thread.start_new_thread`,
    which takes no lock that the interrupted main thread could hold, so a
    signal handler may start it, born with the server's signals blocked.  It
    waits on its own wake-up pipe and the lifecycle's stop latch; once
    stopping, on the connections too, applying the rules of the module
    docstring.
    """

    def __init__(self, lifecycle: Lifecycle) -> None:
        self._lifecycle = lifecycle
        self._pid = -1
        self._lock = threading.Lock()
        #: The connections watched, each with whether it ends once idle at a stop.
        self._watched: dict[socket.socket, bool] = {}
        self._main: socket.socket | None = None
        self._control: Wakeup | None = None
        #: True while a watch thread runs; read without the lock (by a signal handler).
        self._running = False
        #: Held by the running watch thread: :meth:`close` waits on it.
        self._done = threading.Lock()
        #: Bumped by :meth:`close`: a thread of an older generation leaves.
        self._generation = 0

    def attach(self, request: socket.socket, main_thread: bool, *, ends_idle: bool = True) -> None:
        """Watch *request* while it blocks its thread (*main_thread*: run signal actions meanwhile).

        With *ends_idle* (a handler's connection) its input ends once it is
        idle during a stop; without, only the graceful deadline ends it.
        """
        if self._pid != os.getpid():
            self._enter_process()
        lifecycle = self._lifecycle
        with self._lock:
            self._watched[request] = ends_idle
            if main_thread:
                self._main = request
                lifecycle.signals.on_record = self._signal_arrived
        if main_thread and lifecycle.signals.pending():
            lifecycle.dispatch()  # recorded before the hook was in place: the thread is about to block
        if lifecycle.stopping:
            self._start()

    def detach(self, request: socket.socket, main_thread: bool) -> None:
        """Stop watching *request* (before it is closed)."""
        with self._lock:
            self._watched.pop(request, None)
            if main_thread:
                self._main = None
                self._lifecycle.signals.on_record = None
            control = self._control if self._running else None
        if control is not None:
            control.wake()
        if main_thread and self._lifecycle.signals.pending():
            self._lifecycle.dispatch()  # recorded while the watch was being told

    def close(self) -> None:
        """End the helper thread (if this process has one) and wait for it."""
        if self._pid != os.getpid():
            return
        with self._lock:
            self._generation += 1
            control = self._control
        if control is not None:
            control.wake()
        if self._done.acquire(timeout=5.0):
            self._done.release()

    def _enter_process(self) -> None:
        # First use in this process: a forked child inherits the parent's object, not its thread.
        if self._control is not None:
            self._control.close()  # this process's copies of another process's pipe
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._done = threading.Lock()
        self._watched = {}
        self._main = None
        self._control = None
        self._running = False
        # A child's lifecycle forgot the parent's callbacks: register in every process.
        self._lifecycle.call_when_stopping(self._stop_began)

    def _stop_began(self) -> None:
        """A stop began (any thread, never a signal handler): connections watched now need the thread."""
        with self._lock:
            wanted = bool(self._watched)
        if wanted:
            self._start()

    def _signal_arrived(self) -> None:
        """In the main thread's signal handler, while its connection blocks: have the actions run."""
        if self._running:
            control = self._control
            if control is not None:
                control.wake()
        else:
            self._start()  # it dispatches what is pending as it starts

    def _start(self) -> None:
        """Start a watch thread unless one runs (a second one started in a race leaves at once)."""
        if not self._running:
            start_thread_without_signals(lambda: _thread.start_new_thread(self._run, ()))
        elif self._control is not None:
            self._control.wake()

    def _dispatch_for_main(self) -> None:
        """Run the signal actions the main thread cannot run while its connection blocks."""
        if self._main is not None and self._lifecycle.signals.pending():
            self._lifecycle.dispatch()

    def _run(self) -> None:
        with self._lock:
            if self._running or not self._watched:
                return  # another watch thread runs, or there is nothing left to watch
            self._running = True
            self._done.acquire()
            control = self._control = Wakeup()
            generation = self._generation
        left = False
        try:
            left = self._watch(control, generation)
        except Exception:
            log.exception("the connection watch failed")
        finally:
            if not left:
                with self._lock:
                    self._leave()

    def _leave(self) -> None:
        """The watch thread leaves (holding the lock: an attach either sees it running, or starts another)."""
        self._running = False
        if self._control is not None:
            self._control.close()
            self._control = None
        self._done.release()

    def _watch(self, control: Wakeup, generation: int) -> bool:
        """The watch thread's loop; returns True once it has left (see :meth:`_leave`)."""
        lifecycle = self._lifecycle
        poller = select.poll()
        poller.register(control.fileno(), select.POLLIN)
        latch_fd = lifecycle.stop_latch.fileno()
        poller.register(latch_fd, select.POLLIN)
        stop = _StopRules(poller)
        self._dispatch_for_main()  # started by a signal: its action first
        while True:
            timeout = stop.next_deadline(lifecycle.deadline) if stop.started else None
            for fd, _ in poller.poll(None if timeout is None else poll_timeout_ms(timeout)):
                if fd == control.fileno():
                    control.drain()
                    self._dispatch_for_main()
                elif fd == latch_fd:
                    poller.unregister(latch_fd)  # a latch stays readable
                    stop.started = True
                else:
                    stop.saw_input(fd)
            with self._lock:
                if stop.started:
                    # Shut-downs happen under the lock: a socket is only closed after detach().
                    stop.apply(self._watched, lifecycle.deadline)
                if self._generation != generation or not self._watched:
                    self._leave()  # closed, or no work left: a new attach starts another
                    return True


class _StopRules:
    """The graceful-stop rules for watched connections, as the watch thread applies them.

    Idle means: nothing queued either way (``SIOCINQ``, ``SIOCOUTQ``) and, on
    TCP, no data received or sent for :data:`STOP_IDLE_GRACE` seconds by the
    kernel's own clock (``TCP_INFO``), so a starved watch thread cannot
    mistake a busy connection for an idle one, and a connection idle before
    the stop ends at once.  A Unix socket has no such clock: the watch polls
    it for input and counts only time it watched without a gap.
    """

    def __init__(self, poller: select.poll) -> None:
        self._poller = poller
        self.started = False
        self._polled: dict[int, socket.socket] = {}  # Unix sockets watched for input
        self._seen: dict[socket.socket, float] = {}  # Unix: since when watched without seeing input
        self._resting: dict[socket.socket, float] = {}
        self._check_at: dict[socket.socket, float] = {}  # when to ask again whether it is idle
        self._killed: set[socket.socket] = set()  # shut down both ways at the graceful deadline
        self._forced = False

    def next_deadline(self, graceful: float) -> float:
        """When the rules must next be applied (monotonic)."""
        return earliest(None if self._forced else graceful, *self._check_at.values(), *self._resting.values())

    def saw_input(self, fd: int) -> None:
        """Input arrived on a watched Unix socket: look away while the handler reads it."""
        sock = self._polled.pop(fd, None)
        self._poller.unregister(fd)
        if sock is not None:
            self._resting[sock] = time.monotonic() + ACTIVITY_REST

    def apply(self, watched: dict[socket.socket, bool], graceful: float) -> None:
        """Follow the connections in *watched*; end input of idle ones that end idle; at *graceful*, shut all down."""
        now = time.monotonic()
        for sock in [sock for sock in self._seen if sock not in watched]:
            self._forget(sock)
        for sock, ends_idle in watched.items():
            if sock not in self._seen:
                self._seen[sock] = now
                if ends_idle:
                    self._check_at[sock] = now
                    self._watch(sock, now)
        if now >= graceful:
            self._forced = True  # from now on only connections attached later need it
            for sock in watched.keys() - self._killed:
                self._killed.add(sock)
                self._end_input(sock, socket.SHUT_RDWR)
        for sock, until in list(self._resting.items()):
            if now >= until:
                del self._resting[sock]
                self._watch(sock, now)
        for sock, at in list(self._check_at.items()):
            if now >= at:
                idle = self._idle_for(sock, now)
                if idle >= STOP_IDLE_GRACE:
                    self._end_input(sock, socket.SHUT_RD)
                else:
                    self._check_at[sock] = now + STOP_IDLE_GRACE - idle

    def _idle_for(self, sock: socket.socket, now: float) -> float:
        try:
            if bytes_queued(sock):
                self._seen[sock] = now
                return 0.0
            if sock.family != socket.AF_UNIX:
                return tcp_idle_for(sock)
        except (OSError, ValueError):  # ValueError: closed meanwhile (a fileno of -1)
            return STOP_IDLE_GRACE  # no longer connected: ending its input harms nothing
        return 0.0 if sock in self._resting else now - self._seen[sock]

    def _watch(self, sock: socket.socket, now: float) -> None:
        """Poll a Unix socket for input; its quiet time counts from now (it was not watched before)."""
        if sock.family != socket.AF_UNIX or sock not in self._check_at or sock in self._resting:
            return
        with contextlib.suppress(OSError, ValueError):
            fd = sock.fileno()
            if fd >= 0 and fd not in self._polled:
                self._poller.register(fd, _READABLE)
                self._polled[fd] = sock
                self._seen[sock] = now

    def _unwatch(self, sock: socket.socket) -> None:
        for fd, polled in list(self._polled.items()):
            if polled is sock:
                del self._polled[fd]
                self._poller.unregister(fd)

    def _end_input(self, sock: socket.socket, how: int) -> None:
        self._check_at.pop(sock, None)  # decided: nothing more to watch
        self._resting.pop(sock, None)
        self._unwatch(sock)  # a shut-down socket stays readable
        with contextlib.suppress(OSError):
            sock.shutdown(how)

    def _forget(self, sock: socket.socket) -> None:
        self._unwatch(sock)
        for table in (self._seen, self._resting, self._check_at):
            table.pop(sock, None)
        self._killed.discard(sock)
