"""The run state of one server process: running, stopping gracefully, stopped.

A :class:`Lifecycle` owns the process's :class:`~framework.signals.Wakeup`
pipe and :class:`~framework.signals.SignalDispatcher`.  Every strategy's loop
polls :meth:`Lifecycle.wakeup_fd` beside its sockets and calls
:meth:`Lifecycle.dispatch` when it is readable; :meth:`Lifecycle.request_stop`
may be called from any thread or signal action and only records and wakes.
"""

from __future__ import annotations

import _thread
import enum
import logging
import math
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable

from framework.address import format_peer
from framework.signals import Latch, LateWakeup, SignalAction, SignalDispatcher, Wakeup, start_thread_without_signals

log = logging.getLogger("forkthread")

#: How long past the graceful deadline a process that owns its server (the command line)
#: may take to end by itself before :class:`LastResort` ends it: longer than any strategy's
#: own forced ends take (the dispatching strategies give up after 5 s, the interpreters
#: master after 5.5 s), so they come first and say what they ended.
LAST_RESORT_MARGIN = 6.0
#: How long a recorded signal may wait for the serving thread before :class:`LastResort`
#: runs its action in another thread (the serving thread is stuck in a callback).
UNHEARD_GRACE = 1.0
#: The signals that stop a server (gracefully or quickly).
STOP_SIGNALS: frozenset[int] = frozenset(int(signum) for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT))


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
        #: True once a stop was requested (``state`` is no longer RUNNING).  A plain attribute,
        #: not a property over ``state``: every loop of every strategy reads it once a turn,
        #: and in Python 3.11 an enum member read goes through ``EnumType.__getattr__``.
        self.stopping = False
        #: time.monotonic() by which in-flight connections must be over; inf while running.
        self.deadline = math.inf
        self._lock = threading.Lock()
        self._on_stopping: list[Callable[[], None]] = []
        #: time.monotonic() when the stop began (None while running).
        self.stop_began: float | None = None
        #: Connections this process ended at the graceful deadline (see :meth:`forced_end`).
        self.forced = 0
        #: In a forked child: the parent's objects this one replaced (see after_fork_in_child).
        self._left_behind: tuple[object, ...] = ()
        #: A forked child's wakeup pipe, made in the parent by prepare_children().
        self._late_wakeup: LateWakeup | None = None

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
            starting = not self.stopping
            if starting:
                self.state = State.STOPPING
                self.stopping = True
                self.stop_began = time.monotonic()
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

    def stop_started(self, active: int) -> None:
        """Log, once per stop, what the stop waits for: the one wording every server and strategy uses."""
        remaining = self.remaining()
        log.info("stopping: waiting up to %.3g s for %d connection(s)", 0.0 if remaining is None else remaining,
                 active)

    def forced_end(self, running: list[str], count: int | None = None) -> None:
        """Log the connections this process ends at the graceful deadline (the one place that says so).

        *running* describes them (``PEER (N s)``; a pre-forked master: its
        workers); *count* is how many connections that is (default: one each).
        """
        count = len(running) if count is None else count
        with self._lock:
            self.forced += count
        log.warning("graceful timeout passed: ending %d connection(s) still in progress: %s", count,
                    ", ".join(running) or "?")

    def stopped(self) -> None:
        """Log the end of a stop, in one wording for every server and strategy."""
        if self.stop_began is None:
            return
        took = time.monotonic() - self.stop_began
        if self.forced:
            log.warning("stopped after %.1f s: %d connection(s) ended at the graceful deadline", took, self.forced)
        else:
            log.info("stopped after %.1f s: every connection finished", took)

    def remaining(self) -> float | None:
        """Seconds until the graceful deadline (>= 0), or None while running."""
        if not self.stopping:
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

    def after_fork_in_child(self, late_wakeup: bool = False) -> None:
        """Give a forked child its own wakeup pipe and an empty signal queue.

        The child must not share the parent's pipe: a wake meant for one
        process would be drained by the other.  Handlers installed by the
        parent stay in place (they only record) until the child installs its
        own; their wakeup descriptor is re-pointed at the new pipe.  With
        *late_wakeup* (a child serving one connection in its main thread)
        the pipe is made, and the signals re-pointed, when a loop first asks
        for it (:class:`~framework.signals.LateWakeup`): a short connection
        never does.
        """
        old_wakeup, old_latch, old_callbacks = self.wakeup, self.stop_latch, self._on_stopping
        if not old_latch.kept_by_child():
            old_latch.close()
            self.stop_latch = Latch()
        signals = self.signals
        signals.reset_in_child()
        if late_wakeup:
            late = self._late_wakeup  # made by prepare_children(), in the parent: nothing to build here
            if late is None or late.replaces is not old_wakeup:
                late = self._make_late_wakeup()
            self.wakeup = signals.wakeup = late
        else:
            self.wakeup = signals.wakeup = Wakeup()
            if signals.installed:
                signal.set_wakeup_fd(self.wakeup.write_fd, warn_on_full_buffer=False)
            old_wakeup.close()  # the parent's pipe (a late wakeup closes it when it makes its own)
        if self._lock.locked():  # a thread of the parent's held it at the fork: it would stay held here
            self._lock = threading.Lock()
        self._on_stopping = []  # the parent's resources are not the child's to stop
        self.forced = 0
        # What was replaced stays referenced, unused: freeing it would write to pages the
        # child shares with the parent (each one then copied), for a child that ends
        # with os._exit anyway (a child per connection under forking).
        self._left_behind = (old_wakeup, old_latch, old_callbacks)

    def prepare_children(self) -> None:
        """Make, in the parent, what :meth:`after_fork_in_child` gives a child per connection.

        A process forking a child per connection calls this once its signals
        are installed: each child then takes the late wakeup pipe ready-made
        (each object a child builds, and each first call, is pages copied).
        The entry itself is rehearsed on throwaway lifecycles (:meth:`throwaway`)
        by the server's rehearsal, so that every child runs it specialized by
        the interpreter, not cold (:meth:`framework.server.Server.rehearse`).
        """
        self._late_wakeup = self._make_late_wakeup()

    @classmethod
    def throwaway(cls) -> Lifecycle:
        """A lifecycle to rehearse a forked child's entry on (:meth:`after_fork_in_child`); :meth:`close` it after.

        It has its own pipe and its late wakeup made, and no signals are
        routed to it: nothing of any other lifecycle is touched.
        """
        scratch = cls()
        scratch._late_wakeup = scratch._make_late_wakeup()
        return scratch

    def _make_late_wakeup(self) -> LateWakeup:
        signals = self.signals
        return LateWakeup(self.wakeup, signals.pending if signals.installed else None)

    def close(self) -> None:
        """Restore signal handling and close the wakeup pipe."""
        self.state = State.STOPPED
        self.stopping = True
        if threading.current_thread() is threading.main_thread():
            self.signals.restore()
        self.wakeup.close()
        self.stop_latch.close()


class ActiveConnections:
    """The connected sockets a process is serving right now, for counting and for forced ends.

    Thread-safe.  :meth:`abort_all` shuts every socket down, which wakes a
    thread blocked on it: that is how a graceful deadline is enforced on
    threads without a poll interval.  Each socket is kept with the time it
    was added, so that what a stop cuts short can be told (:meth:`running`).
    """

    #: Whether an event loop, which keeps its own set of connections, must still tell this
    #: registry its counts (:meth:`publish_counts`): only one that publishes them (a worker's) needs it.
    publishes = False

    def __init__(self) -> None:
        self._sockets: dict[socket.socket, float] = {}
        self._lock = threading.Lock()
        self.served = 0

    def add(self, sock: socket.socket) -> None:
        """Register a connection being served."""
        with self._lock:
            self._sockets[sock] = time.monotonic()
            self.served += 1

    def note_served(self) -> None:
        """Count one unit of work that had no connection (a datagram answered)."""
        with self._lock:
            self.served += 1

    def discard(self, sock: socket.socket) -> None:
        """Forget a connection whose serving is over."""
        with self._lock:
            self._sockets.pop(sock, None)

    def __len__(self) -> int:
        return len(self._sockets)

    def publish_counts(self, served: int, active: int) -> None:
        """Counts kept elsewhere (an event loop's own): a registry that :attr:`publishes` makes them public."""

    def running(self) -> list[str]:
        """The connections served now, each as ``PEER (N s)``: how long it has been served."""
        with self._lock:
            sockets = list(self._sockets.items())
        now = time.monotonic()
        return [f"{describe_peer(sock)} ({now - since:.1f} s)" for sock, since in sockets]

    def each_waiting_in_recv(self, visit: Callable[[socket.socket], object]) -> None:
        """Call *visit* with every registered socket in blocking mode (a connection waiting in recv).

        The lock is held meanwhile: a connection is discarded before its
        socket is closed, so none is closed under *visit*.
        """
        with self._lock:
            for sock in self._sockets:
                if sock.gettimeout() is None:
                    visit(sock)

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


def describe_peer(sock: socket.socket) -> str:
    """The peer of a connected socket as text, or ``?`` once it is gone."""
    try:
        return format_peer(sock.family, sock.getpeername())
    except OSError:
        return "?"


class LastResort:
    """Ends a process whose stop outlives the graceful deadline: says what still runs, then exits.

    A blocking handler that never returns keeps the serving thread (iterative)
    or a worker thread, and a handler's non-daemon thread keeps the interpreter
    from exiting, whatever the strategy enforces.  Armed (:meth:`arm`) by a
    program whose process is the server's (the command line), a daemon thread
    started when a stop begins waits until :data:`LAST_RESORT_MARGIN` seconds
    past the graceful deadline; if the process is still there, it logs
    *running()* and the threads left, runs *before_exit* (remove a socket
    file) and ends the process with exit status 1 (``os._exit``).  A serving
    thread stuck in a protocol callback never runs the signal actions, so
    the stop would not even begin: a signal still waiting for them after
    :data:`UNHEARD_GRACE` seconds has them run by a helper thread.  Costs
    nothing while serving.
    """

    def __init__(self, lifecycle: Lifecycle, running: Callable[[], list[str]],
                 before_exit: Callable[[], None] = lambda: None) -> None:
        self._lifecycle = lifecycle
        self._running = running
        self._before_exit = before_exit
        self._pid = -1
        self._helping = False

    def arm(self) -> None:
        """Start watching when this process's next stop begins; see that its signals are heard."""
        self._pid = os.getpid()
        self._lifecycle.call_when_stopping(self._stop_began)
        self._lifecycle.signals.unheard = self._signal_recorded
        self._lifecycle.signals.unheard_signals = STOP_SIGNALS

    def _signal_recorded(self, signum: int) -> None:
        """In the main thread's signal handler: make sure a stop signal's action runs (no lock taken here)."""
        if signum in STOP_SIGNALS and not self._helping and os.getpid() == self._pid:
            self._helping = True
            try:
                start_thread_without_signals(lambda: _thread.start_new_thread(self._run_unheard, ()))
            except RuntimeError:
                # No thread to be had (RLIMIT_NPROC, address space): the serving thread still
                # runs the actions when it can; a signal handler must never raise.
                self._helping = False

    def _run_unheard(self) -> None:
        time.sleep(UNHEARD_GRACE)  # the serving thread runs them within microseconds when it can
        self._helping = False
        lifecycle = self._lifecycle
        if lifecycle.signals.pending():
            log.warning("the serving thread has not run its signal actions for %g s (stuck in a callback?):"
                        " running them in another thread", UNHEARD_GRACE)
            lifecycle.dispatch()

    def _stop_began(self) -> None:
        if os.getpid() == self._pid:  # never in a forked child: it has its own ends
            thread = threading.Thread(target=self._wait, name="forkthread-last-resort", daemon=True)
            try:
                start_thread_without_signals(thread.start)
            except RuntimeError:
                log.warning("cannot start the last-resort watch (no thread to be had): the stop relies on"
                            " the graceful deadline alone")

    def _wait(self) -> None:
        lifecycle = self._lifecycle
        while True:
            left = lifecycle.deadline + LAST_RESORT_MARGIN - time.monotonic()  # a quick stop moves it closer
            if left <= 0:
                break
            time.sleep(min(left, 0.5))
        self.end()

    def end(self) -> None:
        """Log what still runs and end the process now."""
        threads = [thread for thread in threading.enumerate()
                   if thread not in (threading.current_thread(), threading.main_thread()) and thread.is_alive()
                   and not thread.daemon]
        running = self._running()
        log.error("graceful timeout passed %g s ago and the server has not ended: still running: %s;"
                  " non-daemon threads: %s; exiting now", LAST_RESORT_MARGIN, ", ".join(running) or "nothing",
                  ", ".join(thread.name for thread in threads) or "none")
        # Where each of them is: the line that keeps the process alive, for its author to fix.
        frames = sys._current_frames()
        for thread in threads:
            frame = frames.get(thread.ident or -1)
            if frame is not None:
                log.error("non-daemon thread %s is here:\n%s", thread.name,
                          "".join(traceback.format_stack(frame)).rstrip())
        try:
            self._before_exit()
        finally:
            for handler in logging.getLogger().handlers + log.handlers:
                handler.flush()
            sys.stderr.flush()
            os._exit(1)
