"""The threading strategy: one thread per connection (UNP §30.10).

The serving thread accepts; each connection gets a new thread that serves it
and ends.  A thread costs far less than a process (no address space to
copy) but shares everything: a protocol that corrupts shared state or never
returns affects the whole server, and the GIL lets only one thread run
Python code at a time, so this model scales with waiting, not with CPUs.

* **The bound.**  With ``--max-connections N`` the listener leaves the poll
  set while N threads are serving; clients wait in the listen backlog, and
  the thread that ends the N-th connection wakes the loop to accept again.
* **No ever-growing list.**  Live threads are a set from which each thread
  removes itself (socketserver kept every thread ever started: bpo-37193).
* **Signals.**  Worker threads block the server's signals, so they are
  delivered to the main thread and a storm of them interrupts no worker's
  system call.  Worker threads do not watch the wakeup pipe.
* **Stopping.**  Threads are joined until the graceful deadline; then every
  connection still open is shut down (``ActiveConnections.abort_all``),
  which ends the threads' waits, and they are joined again.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

from framework.datagram import DATAGRAM_THREADS, serve_datagrams_in_threads
from framework.strategies.base import StrategyOptions
from framework.strategies.dispatching import FORCE_GRACE, DispatchingStrategy, LiveThreads

if TYPE_CHECKING:
    from framework.server import Server


class ThreadingStrategy(DispatchingStrategy):
    """Start a thread per connection; bound them with ``max_connections``."""

    name = "threading"
    description = "one thread per connection"

    def __init__(self, max_connections: int | None = None) -> None:
        super().__init__(max_connections)
        self._threads: LiveThreads | None = None

    @classmethod
    def from_options(cls, options: StrategyOptions) -> ThreadingStrategy:
        """Use ``--max-connections``."""
        return cls(max_connections=options.max_connections)

    def begin(self, server: Server) -> None:
        """Create the live-thread set; a thread that ends wakes the loop when it matters."""
        bound = self.max_connections

        def on_exit(alive: int) -> None:
            # The loop needs to hear of an end only when it is waiting for room or for the last thread.
            if server.lifecycle.stopping or (bound is not None and alive == bound - 1):
                server.lifecycle.wakeup.wake()

        self._threads = LiveThreads("connection", on_exit)

    def serve_datagrams(self, server: Server) -> None:
        """UDP has no connections to give threads to: a fixed set of threads shares the socket.

        As many as ``--max-connections`` (default :data:`~framework.datagram.DATAGRAM_THREADS`).
        """
        serve_datagrams_in_threads(server, self.max_connections or DATAGRAM_THREADS)

    def live(self) -> int:
        """Threads serving a connection now."""
        return 0 if self._threads is None else len(self._threads)

    def start_worker(self, server: Server, sock: socket.socket, peer: str) -> None:
        """Serve *sock* in a new thread (closed at once if no thread can start)."""
        assert self._threads is not None
        if not self._threads.start(serve_in_thread, server, sock, peer):
            sock.close()

    def force_stop(self, server: Server) -> None:
        """Shut every open connection down, which ends the threads serving them."""
        server.connections.abort_all()

    def end(self, server: Server) -> None:
        """Join what is left (bounded: the stop phase already forced the connections)."""
        if self._threads is not None:
            self._threads.join(FORCE_GRACE)


def serve_in_thread(server: Server, sock: socket.socket, peer: str) -> None:
    """Serve one connection in a worker thread (which does not watch the wakeup pipe)."""
    server.handle_connection(sock, peer, main_thread=False)
