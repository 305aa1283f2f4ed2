"""The run state of one server process: running, stopping gracefully, stopped.

A :class:`Lifecycle` owns the process's :class:`~framework.signals.Wakeup`
pipe and :class:`~framework.signals.SignalDispatcher`.  Every strategy's loop
polls :meth:`Lifecycle.wakeup_fd` beside its sockets and calls
:meth:`Lifecycle.dispatch` when it is readable; :meth:`Lifecycle.request_stop`
may be called from any thread or signal action and only records and wakes.
"""

from __future__ import annotations

import enum
import logging
import math
import signal
import socket
import threading
import time
from collections.abc import Callable

from framework.signals import Latch, SignalAction, SignalDispatcher, Wakeup

log = logging.getLogger("forkthread")


class State(enum.Enum):
    """Where a server process is in its life."""

    RUNNING = "running"
    STOPPING = "stopping"  # no new connections; in-flight ones finish until the deadline
    STOPPED = "stopped"


class Lifecycle:
    """Run state, wakeup pipe and signal routing of one server process."""

    def __init__(self, graceful_timeout: float = 30.0) -> None:
        self.graceful_timeout = graceful_timeout
        self.wakeup = Wakeup()
        #: Set when a stop begins and never drained: connections and pool
        #: threads other than the main one poll it to learn of the stop.
        self.stop_latch = Latch()
        self.signals = SignalDispatcher(self.wakeup)
        self.state = State.RUNNING
        #: time.monotonic() by which in-flight connections must be over; inf while running.
        self.deadline = math.inf
        self._lock = threading.Lock()
        self._on_stopping: list[Callable[[], None]] = []

    @property
    def stopping(self) -> bool:
        """True once a stop was requested."""
        return self.state is not State.RUNNING

    def wakeup_fd(self) -> int:
        """The descriptor a loop polls to learn about signals and stop requests."""
        return self.wakeup.fileno()

    def request_stop(self, graceful: bool = True) -> None:
        """Begin stopping: gracefully (finish in-flight work until the deadline) or at once.

        Safe from any thread and from a signal action; returns immediately.
        A second, quick request shortens the deadline of a graceful one.
        """
        with self._lock:
            deadline = time.monotonic() + (self.graceful_timeout if graceful else 0.0)
            self.deadline = min(self.deadline, deadline)
            starting = self.state is State.RUNNING
            if starting:
                self.state = State.STOPPING
        if starting:
            for callback in self._on_stopping:
                callback()
        # The latch first: a main-thread loop woken by the pipe reads the latch's flag.
        self.stop_latch.set()
        self.wakeup.wake()

    def call_when_stopping(self, callback: Callable[[], None]) -> None:
        """Run *callback* once, in :meth:`request_stop`, when stopping starts.

        It runs in whatever thread asked for the stop (or in the loop, for a
        signal), so it must be quick and thread-safe: stopping the listener is
        the use it was made for.  A forked child forgets these callbacks.
        """
        self._on_stopping.append(callback)

    def remaining(self) -> float | None:
        """Seconds until the graceful deadline (>= 0), or None while running."""
        if self.state is State.RUNNING:
            return None
        return max(0.0, self.deadline - time.monotonic())

    def past_deadline(self) -> bool:
        """True once stopping and the graceful deadline has passed."""
        return self.stopping and time.monotonic() >= self.deadline

    def install_signals(self, actions: dict[int, SignalAction]) -> None:
        """Route *actions*' signals through the dispatcher (main thread only)."""
        if threading.current_thread() is threading.main_thread():
            self.signals.install(actions)

    def install_default_signals(self, status: Callable[[], str]) -> None:
        """SIGTERM and SIGINT stop gracefully; SIGUSR1 logs *status()* from the loop."""
        self.install_signals({
            signal.SIGTERM: lambda signum: self.request_stop(graceful=True),
            signal.SIGINT: lambda signum: self.request_stop(graceful=True),
            signal.SIGUSR1: lambda signum: log.info("status: %s", status()),
        })

    def dispatch(self) -> None:
        """Run pending signal actions; call whenever :meth:`wakeup_fd` is readable."""
        self.signals.dispatch()

    def after_fork_in_child(self) -> None:
        """Give a forked child its own wakeup pipe and an empty signal queue.

        The child must not share the parent's pipe: a wake meant for one
        process would be drained by the other.  Handlers installed by the
        parent stay in place (they only record) until the child installs its
        own; their wakeup descriptor is re-pointed at the new pipe.
        """
        old = self.wakeup
        old_latch, self.stop_latch = self.stop_latch, Latch()
        old_latch.close()
        self.wakeup = Wakeup()
        self.signals.wakeup = self.wakeup
        self.signals.reset_in_child()
        self._lock = threading.Lock()
        self._on_stopping = []  # the parent's resources are not the child's to stop
        if self.signals.installed:
            signal.set_wakeup_fd(self.wakeup.write_fd, warn_on_full_buffer=False)
        old.close()

    def close(self) -> None:
        """Restore signal handling and close the wakeup pipe."""
        self.state = State.STOPPED
        if threading.current_thread() is threading.main_thread():
            self.signals.restore()
        self.wakeup.close()
        self.stop_latch.close()


class ActiveConnections:
    """The connected sockets a process is serving right now, for counting and for forced ends.

    Thread-safe.  :meth:`abort_all` shuts every socket down, which wakes a
    thread blocked on it: that is how a graceful deadline is enforced on
    threads without a poll interval.
    """

    def __init__(self) -> None:
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self.served = 0

    def add(self, sock: socket.socket) -> None:
        """Register a connection being served."""
        with self._lock:
            self._sockets.add(sock)
            self.served += 1

    def note_served(self) -> None:
        """Count one unit of work that had no connection (a datagram answered)."""
        with self._lock:
            self.served += 1

    def discard(self, sock: socket.socket) -> None:
        """Forget a connection whose serving is over."""
        with self._lock:
            self._sockets.discard(sock)

    def __len__(self) -> int:
        return len(self._sockets)

    def abort_all(self) -> int:
        """Shut down every registered connection in both directions; return how many."""
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed or never connected
        return len(sockets)
