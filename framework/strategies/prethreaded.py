"""The prethreaded strategy: a fixed pool of threads made at start-up (UNP §30.11, §30.12).

Thread creation leaves the per-connection path: ``--threads N`` threads are
started once and serve connection after connection.  At most N connections
are served at once; the others wait in the listen backlog.  Three ways to
share the listener, chosen with ``--prethreaded-accept``:

``shared`` (the default)
    Every idle thread waits for the listener, and the kernel wakes one
    waiting thread per connection (Stevens §30.6, with the herd he measured
    left to the kernel).  No lock passes between threads: under the GIL each
    hand-over of a lock is one more thread switch per connection.  Where this
    process's stop shuts the listener down (the server's own process), each
    thread waits in ``accept`` itself, and the shutdown ends the wait.  In a
    pre-forked or sub-interpreter worker the listener is shared and outlives
    the worker's stop: each thread waits in an ``epoll`` of its own holding
    the listener with ``EPOLLEXCLUSIVE`` and the stop latch, as a pre-forked
    ``shared`` worker waits; a thread woken by both takes the connection first.
``lock`` (Stevens §30.11)
    Threads take turns: the one holding a mutex polls the listener and
    accepts one connection, releases the mutex, and serves.  Only one thread
    waits in the kernel at a time, on any kernel, but every connection hands
    the mutex to the next thread.
``handoff`` (Stevens §30.12)
    The main thread accepts and hands each socket to the pool through a
    queue; one sentinel per thread ends the pool.  Every connection costs a
    queue hand-off (a lock and a condition-variable wake-up between two
    threads); in exchange only one thread ever touches the listener, and it
    is the main thread, which sees signals promptly.  The main thread stops
    polling the listener while every pool thread is busy, so connections
    wait in the kernel, not in a user-space queue.

In ``shared`` and ``lock`` the main thread does nothing per connection, and
the waiting threads leave promptly when the server stops: the listener's
shutdown ends every ``accept``, and a stop latch, set once and never drained,
wakes every ``poll``.  Stevens measured the mutex slightly ahead of the
hand-off; in CPython the GIL adds a thread switch to every hand-off, so
``lock`` is cheaper than ``handoff``, and ``shared``, which hands nothing
over, cheaper than both.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import socket
import threading

from framework.accepting import Acceptor
from framework.drivers.datagram import serve_datagrams_in_threads
from framework.limits import MAX_THREADS, check_count
from framework.signals import Latch
from framework.strategies.base import Host, Run, Strategy, StrategyOptions
from framework.strategies.dispatching import FORCE_GRACE, AcceptLoop, DispatchingRun, LiveThreads, wind_down

log = logging.getLogger("forkthread")

#: The values of ``--prethreaded-accept``.
ACCEPT_MODES = ("shared", "lock", "handoff")


@dataclasses.dataclass(frozen=True)
class PrethreadedStrategy(Strategy):
    """A fixed pool of *threads* threads sharing the listener by *accept* mode (``shared``, ``lock`` or ``handoff``)."""

    name = "prethreaded"
    description = "a fixed pool of threads, each waiting in accept, taking turns, or fed by the main thread"
    option_names = frozenset({"threads", "prethreaded_accept"})

    threads: int = 8
    accept: str = "shared"

    def __post_init__(self) -> None:
        if self.accept not in ACCEPT_MODES:
            raise ValueError(f"prethreaded accept mode must be one of {', '.join(ACCEPT_MODES)}, not {self.accept!r}")
        check_count(self.threads, "--threads", MAX_THREADS)

    @classmethod
    def from_options(cls, options: StrategyOptions) -> PrethreadedStrategy:
        """Use ``--threads`` and ``--prethreaded-accept``."""
        return cls(threads=options.threads, accept=options.prethreaded_accept)

    def describe(self) -> str:
        """``prethreaded(8,shared)``."""
        return f"{self.name}({self.threads},{self.accept})"

    def capacity(self) -> int:
        """One connection per pool thread."""
        return self.threads

    def waits_in_accept(self) -> bool:
        """In ``shared`` mode: every idle pool thread waits in ``accept`` where its acceptor allows it."""
        return self.accept == "shared"

    def start(self, host: Host) -> Run:
        """A run of the pool in the configured accept mode."""
        if self.accept in ("shared", "lock"):
            return TakingTurnsRun(self, host)
        return HandoffRun(self, host, self.threads)

    def can_serve_datagrams(self) -> bool:
        """Yes: the pool's threads all wait on the one datagram socket."""
        return True


def _serve_datagrams(run: Run, threads: int) -> None:
    """The pool's threads all wait on the one datagram socket (no accept, so no accept mode)."""
    serve_datagrams_in_threads(run.host.listener, run.host.datagram_service(), threads)


class TakingTurnsRun(Run):
    """``shared`` and ``lock``: each idle pool thread waits for the listener and accepts.

    ``shared``: every idle thread waits, exclusively (the kernel wakes one per
    connection).  ``lock``: only the thread holding a mutex waits (Stevens §30.11).
    """

    strategy: PrethreadedStrategy

    def __init__(self, strategy: PrethreadedStrategy, host: Host) -> None:
        super().__init__(strategy, host)
        self._accept_lock = threading.Lock() if strategy.accept == "lock" else None
        acceptor = host.acceptor
        # ``shared`` where this process's stop shuts the listener down, or on a pre-forked
        # worker's listener made for it (its waits end at a timeout): the threads wait in
        # ``accept`` itself, which the kernel also wakes one waiter at a time for.
        self._blocking = strategy.accept == "shared" and (acceptor.stopped_by_process_stop or acceptor.waits_in_accept)
        # Made blocking for this run, and shut down by this process's stop (not a worker's listener).
        self._owns_wait = self._blocking and not acceptor.waits_in_accept
        self._stop = Latch()

    def serve_datagrams(self) -> None:
        """See :func:`_serve_datagrams`."""
        _serve_datagrams(self, self.strategy.threads)

    def serve(self) -> None:
        """Start the pool; the main thread only runs signal actions until a stop, then winds down."""
        host = self.host
        lifecycle = host.lifecycle
        loop = AcceptLoop.for_host(host)  # the main thread only runs signal actions
        stop = self._stop
        pool = LiveThreads("prethreaded", lambda alive: lifecycle.wakeup.wake())
        unstarted: list[AcceptLoop] = []  # each thread closes its own wait; these have no thread
        try:
            # Every thread's wait is made before any thread starts: a worker's ``shared`` wait holds
            # an epoll descriptor, and all of them are open before the first connection is served.
            unstarted.extend(AcceptLoop(host.acceptor, stop.fileno(), on_wake=lambda: None,
                                        exclusive=self._accept_lock is None and not self._blocking)
                             for _ in range(self.strategy.threads))
            if self._owns_wait:
                host.listener.setblocking(True)
            started = 0
            while unstarted:
                if pool.start(self._take_turns, host.acceptor, unstarted[-1]):
                    unstarted.pop()
                    started += 1
                else:
                    unstarted.pop().close()
            if not started:
                raise RuntimeError("prethreaded: no pool thread could be started")
            if started < self.strategy.threads:
                log.warning("prethreaded: serving with %d of %d pool threads", started, self.strategy.threads)
            while not lifecycle.stopping:
                loop.wait(accepting=False)
                if len(pool) < started and not lifecycle.stopping:
                    if host.acceptor.stopped:
                        # A pre-forked master stopped listening, and its stop signal is on its
                        # way: the threads it ended are this worker's stop, begun early.
                        lifecycle.request_stop(graceful=True)
                        continue
                    # Else a pool thread only ends early on a fatal accept error (logged by
                    # the thread): the listener is broken, so stop rather than idle.
                    log.error("a pool thread ended unexpectedly; stopping the server")
                    lifecycle.request_stop()
            stop.set()
            wind_down(lifecycle, loop, lambda: len(pool), host.connections.abort_all, self.running)
        finally:
            stop.set()
            if self._owns_wait:
                host.acceptor.stop()  # ends every accept still blocked (the stop did, unless serve failed)
            pool.join(FORCE_GRACE)  # a worker's threads see the latch at their wait's timeout at the latest
            if self._owns_wait:
                host.listener.setblocking(False)
            for turn in unstarted:
                turn.close()
            stop.close()

    def _take_turns(self, acceptor: Acceptor, turn: AcceptLoop) -> None:
        """A pool thread: wait for a connection (and the accept mutex, if any), accept it, serve it; until stopped."""
        lock = self._accept_lock
        serve_connection = self.host.serve_connection
        try:
            while True:
                if self._blocking:
                    accepted = self._accept_blocking(turn, acceptor, self._stop)
                elif lock is None:
                    accepted = self._accept_one(turn, acceptor)
                else:
                    with lock:
                        accepted = self._accept_one(turn, acceptor)
                if accepted is None:
                    return
                serve_connection(*accepted, main_thread=False)
        finally:
            turn.close()

    @staticmethod
    def _accept_blocking(turn: AcceptLoop, acceptor: Acceptor, stop: Latch) -> tuple[socket.socket, str] | None:
        """Wait in ``accept`` itself for a connection; None once the listener or the pool is stopped.

        The stop's ``shutdown`` ends the wait (``EINVAL``); in a pre-forked
        worker, whose stop leaves the shared listener alone, the wait ends at
        the listener's receive timeout and the thread looks at *stop*.  A
        connection taken is served even when the pool stopped meanwhile: no
        other thread was woken for it.  During a capacity back-off the thread
        sleeps on the stop latch instead.
        """
        while True:
            if acceptor.backoff_remaining():  # a capacity back-off, or stopped
                if acceptor.stopped:
                    return None
                turn.wait(accepting=True)
                if turn.woke:
                    return None
                continue
            accepted = acceptor.accept()
            if accepted is not None:
                return accepted
            if acceptor.stopped or stop.is_set():
                return None

    @staticmethod
    def _accept_one(turn: AcceptLoop, acceptor: Acceptor) -> tuple[socket.socket, str] | None:
        """Wait for a connection and accept it; None once the stop latch is set.

        A connection that woke this thread is taken even when the latch is set
        too: waiting exclusively, this thread may be the only one woken for it.
        (On a stopped listener :meth:`~framework.accepting.Acceptor.accept` finds none.)
        """
        while True:
            listener_ready = turn.wait(accepting=True)
            if listener_ready:
                accepted = acceptor.accept()
                if accepted is not None:
                    return accepted
            if turn.woke:
                return None


class HandoffRun(DispatchingRun):
    """``handoff``: the main thread accepts and feeds the pool through a queue (Stevens §30.12)."""

    strategy: PrethreadedStrategy

    def __init__(self, strategy: PrethreadedStrategy, host: Host, threads: int) -> None:
        # The pool size bounds the connections handed over.
        super().__init__(strategy, host, max_connections=threads)
        self._pool = LiveThreads("prethreaded")
        self._queue: queue.SimpleQueue[tuple[socket.socket, str] | None] = queue.SimpleQueue()
        self._busy = 0
        self._busy_lock = threading.Lock()

    def serve_datagrams(self) -> None:
        """See :func:`_serve_datagrams`."""
        _serve_datagrams(self, self.strategy.threads)

    def begin(self) -> None:
        """Start the pool; each thread waits on the queue."""
        for _ in range(self.strategy.threads):
            self._pool.start(self._take_from_queue)

    def live(self) -> int:
        """Connections handed over and not finished yet."""
        return self._busy

    def start_worker(self, sock: socket.socket, peer: str) -> None:
        """Hand *sock* to the pool (a thread is free: the loop accepts only then)."""
        with self._busy_lock:
            self._busy += 1
        self._queue.put((sock, peer))

    def _take_from_queue(self) -> None:
        lifecycle = self.host.lifecycle
        while (item := self._queue.get()) is not None:
            try:
                self.host.serve_connection(*item, main_thread=False)
            finally:
                with self._busy_lock:
                    self._busy -= 1
                    was_full = self._busy == self.strategy.threads - 1
                if was_full or lifecycle.stopping:
                    lifecycle.wakeup.wake()

    def force_stop(self) -> None:
        """Shut every open connection down, which ends the pool threads' waits."""
        self.host.connections.abort_all()

    def end(self) -> None:
        """One sentinel per thread; join; close any socket never picked up."""
        for _ in range(self.strategy.threads):
            self._queue.put(None)
        self._pool.join(FORCE_GRACE)
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if item is not None:
                item[0].close()
