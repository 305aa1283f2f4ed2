"""The prethreaded strategy: a fixed pool of threads made at start-up (UNP §30.11, §30.12).

Thread creation leaves the per-connection path: ``--threads N`` threads are
started once and serve connection after connection.  At most N connections
are served at once; the others wait in the listen backlog.  Two ways to
share the listener, chosen with ``--prethreaded-accept``:

``lock`` (Stevens §30.11, the default)
    Threads take turns: the one holding a mutex polls the listener and
    accepts one connection, releases the mutex, and serves.  Only one thread
    waits in the kernel at a time, so there is no thundering herd, and the
    main thread does nothing per connection.  The lock holder also polls a
    stop latch that is set once and never drained, so every thread in
    turn sees it and leaves promptly when the server stops.
``handoff`` (Stevens §30.12)
    The main thread accepts and hands each socket to the pool through a
    queue; one sentinel per thread ends the pool.  Every connection costs a
    queue hand-off (a lock and a condition-variable wake-up between two
    threads); in exchange only one thread ever touches the listener, and it
    is the main thread, which sees signals promptly.  The main thread stops
    polling the listener while every pool thread is busy, so connections
    wait in the kernel, not in a user-space queue.

Stevens measured the mutex slightly ahead of the hand-off; in CPython the
GIL adds a thread switch to every hand-off, so ``lock`` is usually cheaper.
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
ACCEPT_MODES = ("lock", "handoff")


@dataclasses.dataclass(frozen=True)
class PrethreadedStrategy(Strategy):
    """A fixed pool of *threads* threads sharing the listener by *accept* mode (``lock`` or ``handoff``)."""

    name = "prethreaded"
    description = "a fixed pool of threads, taking turns in accept or fed by the main thread"
    option_names = frozenset({"threads", "prethreaded_accept"})

    threads: int = 8
    accept: str = "lock"

    def __post_init__(self) -> None:
        if self.accept not in ACCEPT_MODES:
            raise ValueError(f"prethreaded accept mode must be one of {', '.join(ACCEPT_MODES)}, not {self.accept!r}")
        check_count(self.threads, "--threads", MAX_THREADS)

    @classmethod
    def from_options(cls, options: StrategyOptions) -> PrethreadedStrategy:
        """Use ``--threads`` and ``--prethreaded-accept``."""
        return cls(threads=options.threads, accept=options.prethreaded_accept)

    def describe(self) -> str:
        """``prethreaded(8,lock)``."""
        return f"{self.name}({self.threads},{self.accept})"

    def capacity(self) -> int:
        """One connection per pool thread."""
        return self.threads

    def start(self, host: Host) -> Run:
        """A run of the pool in the configured accept mode."""
        if self.accept == "lock":
            return TakingTurnsRun(self, host)
        return HandoffRun(self, host, self.threads)

    def can_serve_datagrams(self) -> bool:
        """Yes: the pool's threads all wait on the one datagram socket."""
        return True


def _serve_datagrams(run: Run, threads: int) -> None:
    """The pool's threads all wait on the one datagram socket (no accept, so no accept mode)."""
    serve_datagrams_in_threads(run.host.listener, run.host.datagram_service(), threads)


class TakingTurnsRun(Run):
    """``lock``: the pool threads take turns in accept, under a mutex (Stevens §30.11)."""

    strategy: PrethreadedStrategy

    def __init__(self, strategy: PrethreadedStrategy, host: Host) -> None:
        super().__init__(strategy, host)
        self._accept_lock = threading.Lock()

    def serve_datagrams(self) -> None:
        """See :func:`_serve_datagrams`."""
        _serve_datagrams(self, self.strategy.threads)

    def serve(self) -> None:
        """Start the pool; the main thread only runs signal actions until a stop, then winds down."""
        host = self.host
        lifecycle = host.lifecycle
        loop = AcceptLoop.for_host(host)  # the main thread only runs signal actions
        stop = Latch()
        pool = LiveThreads("prethreaded", lambda alive: lifecycle.wakeup.wake())
        try:
            started = sum(pool.start(self._take_turns, host.acceptor, stop.fileno())
                          for _ in range(self.strategy.threads))
            if not started:
                raise RuntimeError("prethreaded: no pool thread could be started")
            if started < self.strategy.threads:
                log.warning("prethreaded: serving with %d of %d pool threads", started, self.strategy.threads)
            while not lifecycle.stopping:
                loop.wait(accepting=False)
                if len(pool) < started and not lifecycle.stopping:
                    # A pool thread only ends early on a fatal accept error (logged by
                    # the thread): the listener is broken, so stop rather than idle.
                    log.error("a pool thread ended unexpectedly; stopping the server")
                    lifecycle.request_stop()
            stop.set()
            wind_down(lifecycle, loop, lambda: len(pool), host.connections.abort_all, self.running)
        finally:
            stop.set()
            pool.join(FORCE_GRACE)
            stop.close()

    def _take_turns(self, acceptor: Acceptor, stop_fd: int) -> None:
        """A pool thread: wait for the accept mutex, accept one connection, serve it; until stopped."""
        turn = AcceptLoop(acceptor, stop_fd, on_wake=lambda: None)
        try:
            while True:
                with self._accept_lock:
                    accepted = self._accept_one(turn, acceptor)
                if accepted is None:
                    return
                self.host.serve_connection(*accepted, main_thread=False)
        finally:
            turn.close()

    @staticmethod
    def _accept_one(turn: AcceptLoop, acceptor: Acceptor) -> tuple[socket.socket, str] | None:
        """Holding the mutex: wait for a connection and accept it; None once the stop latch is set."""
        while True:
            listener_ready = turn.wait(accepting=True)
            if turn.woke:
                return None
            if listener_ready:
                accepted = acceptor.accept()
                if accepted is not None:
                    return accepted


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
