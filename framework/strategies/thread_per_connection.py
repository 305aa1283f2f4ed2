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

import dataclasses
import socket

from framework.drivers.datagram import DATAGRAM_THREADS, serve_datagrams_in_threads
from framework.limits import MAX_THREADS
from framework.strategies.base import Host, StrategyOptions
from framework.strategies.dispatching import FORCE_GRACE, DispatchingRun, DispatchingStrategy, LiveThreads


@dataclasses.dataclass(frozen=True)
class ThreadingStrategy(DispatchingStrategy):
    """Start a thread per connection; bound them with ``max_connections``."""

    name = "threading"
    description = "one thread per connection"
    option_names = frozenset({"max_connections"})

    @classmethod
    def from_options(cls, options: StrategyOptions) -> ThreadingStrategy:
        """Use ``--max-connections``."""
        return cls(max_connections=options.max_connections)

    def start(self, host: Host) -> ThreadingRun:
        """A run that starts a thread per connection."""
        return ThreadingRun(self, host, self.max_connections)

    def can_serve_datagrams(self) -> bool:
        """Yes: a fixed set of threads shares the datagram socket."""
        return True


class ThreadingRun(DispatchingRun):
    """The threads of one serve, each removing itself when its connection ends."""

    def __init__(self, strategy: ThreadingStrategy, host: Host, max_connections: int | None) -> None:
        super().__init__(strategy, host, max_connections)
        lifecycle = host.lifecycle

        def on_exit(alive: int) -> None:
            # The loop needs to hear of an end only when it is waiting for room or for the last thread.
            if lifecycle.stopping or (max_connections is not None and alive == max_connections - 1):
                lifecycle.wakeup.wake()

        self._threads = LiveThreads("connection", on_exit)

    def serve_datagrams(self) -> None:
        """UDP has no connections to give threads to: a fixed set of threads shares the socket.

        As many as ``--max-connections`` (default :data:`~framework.drivers.datagram.DATAGRAM_THREADS`),
        and no more than :data:`~framework.limits.MAX_THREADS`: a bound on connections is no reason
        to start a hundred thousand threads.
        """
        serve_datagrams_in_threads(self.host.listener, self.host.datagram_service(),
                                   min(self.max_connections or DATAGRAM_THREADS, MAX_THREADS))

    def live(self) -> int:
        """Threads serving a connection now."""
        return len(self._threads)

    def start_worker(self, sock: socket.socket, peer: str) -> None:
        """Serve *sock* in a new thread (closed at once if no thread can start).

        Under a bound, the threads that ended their connection are waited for
        first (:meth:`LiveThreads.join_ending`): the bound holds for threads, not
        only for connections.
        """
        if self.max_connections is not None:
            self._threads.join_ending(FORCE_GRACE)
        if not self._threads.start(self._serve, sock, peer):
            sock.close()

    def _serve(self, sock: socket.socket, peer: str) -> None:
        # Worker threads do not watch the wakeup pipe: the main thread dispatches signals.
        self.host.serve_connection(sock, peer, main_thread=False)

    def force_stop(self) -> None:
        """Shut every open connection down, which ends the threads serving them."""
        self.host.connections.abort_all()

    def end(self) -> None:
        """Join what is left (bounded: the stop phase already forced the connections)."""
        self._threads.join(FORCE_GRACE)
