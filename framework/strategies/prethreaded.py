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
    stop pipe that is written once and never drained, so every thread in
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

import logging
import os
import queue
import socket
import threading
from typing import TYPE_CHECKING

from framework.accepting import Acceptor
from framework.datagram import serve_datagrams_in_threads
from framework.strategies.base import Strategy, StrategyOptions
from framework.strategies.dispatching import FORCE_GRACE, AcceptLoop, DispatchingStrategy, LiveThreads, wind_down

if TYPE_CHECKING:
    from framework.server import Server

log = logging.getLogger("forkthread")

#: The values of ``--prethreaded-accept``.
ACCEPT_MODES = ("lock", "handoff")


class PrethreadedStrategy(DispatchingStrategy):
    """A fixed pool of *threads* threads sharing the listener by *accept* mode (``lock`` or ``handoff``)."""

    name = "prethreaded"
    description = "a fixed pool of threads, taking turns in accept or fed by the main thread"

    def __init__(self, threads: int = 8, accept: str = "lock") -> None:
        if accept not in ACCEPT_MODES:
            raise ValueError(f"prethreaded accept mode must be one of {', '.join(ACCEPT_MODES)}, not {accept!r}")
        if threads < 1:
            raise ValueError(f"prethreaded needs at least 1 thread, not {threads}")
        # In hand-off mode, the pool size bounds the connections handed over.
        super().__init__(max_connections=threads)
        self.threads = threads
        self.accept_mode = accept
        self._pool: LiveThreads | None = None
        self._queue: queue.SimpleQueue[tuple[socket.socket, str] | None] = queue.SimpleQueue()
        self._busy = 0
        self._busy_lock = threading.Lock()
        self._accept_lock = threading.Lock()

    @classmethod
    def from_options(cls, options: StrategyOptions) -> PrethreadedStrategy:
        """Use ``--threads`` and ``--prethreaded-accept``."""
        return cls(threads=options.threads, accept=options.prethreaded_accept)

    def describe(self) -> str:
        """``prethreaded(8,lock)``."""
        return f"{self.name}({self.threads},{self.accept_mode})"

    def counts(self, server: Server) -> tuple[int, int]:
        """``(connections served, connections active)``."""
        return Strategy.counts(self, server)

    def serve_datagrams(self, server: Server) -> None:
        """The pool's threads all wait on the one datagram socket (no accept, so no accept mode)."""
        serve_datagrams_in_threads(server, self.threads)

    def serve(self, server: Server) -> None:
        """Serve with the pool, in the chosen accept mode."""
        if self.accept_mode == "lock":
            self._serve_taking_turns(server)
        else:
            super().serve(server)

    # -- lock: the threads take turns in accept ---------------------------------

    def _serve_taking_turns(self, server: Server) -> None:
        lifecycle = server.lifecycle
        loop = AcceptLoop.for_server(server)  # the main thread only runs signal actions
        stop_read, stop_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        pool = LiveThreads("prethreaded", lambda alive: lifecycle.wakeup.wake())
        try:
            started = sum(pool.start(self._take_turns, server, server.acceptor, stop_read)
                          for _ in range(self.threads))
            if not started:
                raise RuntimeError("prethreaded: no pool thread could be started")
            while not lifecycle.stopping:
                loop.wait(accepting=False)
                if len(pool) < started and not lifecycle.stopping:
                    # A pool thread only ends early on a fatal accept error (logged by
                    # the thread): the listener is broken, so stop rather than idle.
                    log.error("a pool thread ended unexpectedly; stopping the server")
                    lifecycle.request_stop()
            os.write(stop_write, b"\0")
            wind_down(server, loop, lambda: len(pool), server.connections.abort_all)
        finally:
            os.write(stop_write, b"\0")  # idempotent: the pipe is never drained
            pool.join(FORCE_GRACE)
            os.close(stop_read)
            os.close(stop_write)

    def _take_turns(self, server: Server, acceptor: Acceptor, stop_fd: int) -> None:
        """A pool thread: wait for the accept mutex, accept one connection, serve it; until stopped."""
        turn = AcceptLoop(acceptor, stop_fd, on_wake=lambda: None)
        while True:
            with self._accept_lock:
                accepted = self._accept_one(turn, acceptor)
            if accepted is None:
                return
            server.handle_connection(*accepted, main_thread=False)

    @staticmethod
    def _accept_one(turn: AcceptLoop, acceptor: Acceptor) -> tuple[socket.socket, str] | None:
        """Holding the mutex: wait for a connection and accept it; None once the stop pipe is readable."""
        while True:
            listener_ready = turn.wait(accepting=True)
            if turn.woke:
                return None
            if listener_ready:
                accepted = acceptor.accept()
                if accepted is not None:
                    return accepted

    # -- handoff: the main thread accepts and feeds the pool ---------------------

    def begin(self, server: Server) -> None:
        """Start the pool; each thread waits on the queue."""
        self._pool = LiveThreads("prethreaded")
        for _ in range(self.threads):
            self._pool.start(self._take_from_queue, server)

    def live(self) -> int:
        """Connections handed over and not finished yet."""
        return self._busy

    def start_worker(self, server: Server, sock: socket.socket, peer: str) -> None:
        """Hand *sock* to the pool (a thread is free: the loop accepts only then)."""
        with self._busy_lock:
            self._busy += 1
        self._queue.put((sock, peer))

    def _take_from_queue(self, server: Server) -> None:
        while (item := self._queue.get()) is not None:
            try:
                server.handle_connection(*item, main_thread=False)
            finally:
                with self._busy_lock:
                    self._busy -= 1
                    was_full = self._busy == self.threads - 1
                if was_full or server.lifecycle.stopping:
                    server.lifecycle.wakeup.wake()

    def force_stop(self, server: Server) -> None:
        """Shut every open connection down, which ends the pool threads' waits."""
        server.connections.abort_all()

    def end(self, server: Server) -> None:
        """One sentinel per thread; join; close any socket never picked up."""
        if self._pool is None:
            return
        for _ in range(self.threads):
            self._queue.put(None)
        self._pool.join(FORCE_GRACE)
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if item is not None:
                item[0].close()
