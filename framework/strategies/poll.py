"""The poll strategy: one thread, one event loop, every connection at once (UNP §6, ch. 16).

The listener, the wakeup pipe and every connection sit in one selector
(``poll(2)`` by default; ``epoll`` and ``select`` on request) and the
non-blocking driver (:mod:`framework.drivers.nonblocking`) runs each
connection's protocol as its socket becomes ready.  No process or thread is
created, so a connection costs a socket, a protocol object and its queued
output; the price is that one slow callback holds up everyone.
"""

from __future__ import annotations

import dataclasses
import logging
import selectors
import socket
from typing import ClassVar

from framework.accepting import ListenerWatch
from framework.drivers.common import ConnectionTimeout
from framework.drivers.nonblocking import EventLoop
from framework.strategies.base import Host, Run, Strategy, StrategyOptions

log = logging.getLogger("forkthread")

#: select(2) cannot watch descriptors at or above FD_SETSIZE.
FD_SETSIZE = 1024

#: --selector name -> selector class.
SELECTORS: dict[str, str] = {
    "poll": "PollSelector",
    "epoll": "EpollSelector",
    "select": "SelectSelector",
}


@dataclasses.dataclass(frozen=True)
class PollStrategy(Strategy):
    """Serve every connection from one event loop in the serving thread.

    *selector* is ``poll`` (the default), ``epoll`` or ``select``;
    *max_connections* bounds the connections served at once: at the bound
    the listener leaves the poll set and new clients wait in the backlog.
    *threads* bounds the pool that runs protocols' blocking jobs (a WSGI
    application: :mod:`framework.drivers.offload`), made only if one is offloaded.
    """

    name = "poll"
    description = "one thread, one event loop over poll(2) (or epoll/select): non-blocking I/O"
    option_names = frozenset({"selector", "max_connections", "threads"})
    SELECTORS: ClassVar[dict[str, str]] = SELECTORS

    selector: str = "poll"
    max_connections: int | None = None
    threads: int = 8

    def __post_init__(self) -> None:
        if self.selector not in SELECTORS or not hasattr(selectors, SELECTORS[self.selector]):
            raise ValueError(
                f"unknown or unavailable selector {self.selector!r} (choose from {', '.join(SELECTORS)})")
        if self.max_connections is not None and self.max_connections <= 0:
            raise ValueError(f"max_connections must be > 0, not {self.max_connections}")

    @classmethod
    def from_options(cls, options: StrategyOptions) -> PollStrategy:
        """``--selector``, ``--max-connections`` and ``--threads``."""
        return cls(options.selector, options.max_connections, options.threads)

    def describe(self) -> str:
        """``poll``, or ``poll(epoll)`` / ``poll(select,max=100)`` when options differ from the default."""
        details = [] if self.selector == "poll" else [self.selector]
        if self.max_connections is not None:
            details.append(f"max={self.max_connections}")
        return f"{self.name}({','.join(details)})" if details else self.name

    def capacity(self) -> int | None:
        """``max_connections``: the loop's own bound (None: it takes every connection)."""
        return self.max_connections

    def carries_blocking_handlers(self) -> bool:
        """No: one thread serves every connection, so a handler that blocks would stall them all."""
        return False

    def make_selector(self) -> selectors.BaseSelector:
        """A new selector of the configured kind."""
        selector: selectors.BaseSelector = getattr(selectors, SELECTORS[self.selector])()
        return selector

    def start(self, host: Host) -> PollRun:
        """A run of one event loop."""
        return PollRun(self, host)


class PollRun(Run):
    """The event loop of one serve: the listener, the wakeup pipe and every connection in one selector."""

    strategy: PollStrategy

    def __init__(self, strategy: PollStrategy, host: Host) -> None:
        super().__init__(strategy, host)
        # The loop keeps its connections and counts them (see counts and running); the host's
        # registry hears only the counts, and only if it publishes them (a worker's scoreboard).
        registry = host.connections
        publish = registry.publish_counts if registry.publishes else None
        self.loop = EventLoop(strategy.make_selector(), idle_timeout=host.timeout, handle_error=host.handle_error,
                              publish_counts=publish, tls=host.tls, pool_threads=strategy.threads)
        #: select(2) cannot watch a descriptor at or above FD_SETSIZE (None: the selector has no such limit).
        self._fd_limit = FD_SETSIZE if strategy.selector == "select" else None
        # Read once, for the accept path (every connection passes there).
        self._lifecycle = host.lifecycle
        self._bound = strategy.max_connections

    def serve(self) -> None:
        """Accept and serve connections until a stop is requested and the last one is over.

        On a stop request the listener leaves the poll set at once; open
        connections run on until they end or the graceful deadline passes,
        when the rest are aborted.
        """
        lifecycle = self.host.lifecycle
        acceptor = self.host.acceptor
        loop = self.loop
        listener = ListenerWatch(acceptor.fileno(), lambda fd: loop.add_reader(fd, self._accept_batch),
                                 loop.remove_reader)
        loop.add_reader(lifecycle.wakeup_fd(), lifecycle.dispatch)
        told_stopping = False
        try:
            while True:
                timeout: float | None = None
                if lifecycle.stopping:
                    listener.update(False)
                    if not told_stopping:
                        told_stopping = True
                        loop.notify_stopping()  # idle keep-alive connections can close now
                    if not loop.connections:
                        break
                    if lifecycle.past_deadline():
                        lifecycle.forced_end(self.running(), len(loop.connections))
                        loop.abort_all(ConnectionTimeout("server stopping: graceful timeout passed"))
                        break
                    timeout = lifecycle.remaining()
                else:
                    listener.update(acceptor.wants_polling(self._has_room()))
                    timeout = acceptor.backoff_remaining() or None
                loop.run_once(timeout)
        finally:
            loop.close()

    def counts(self) -> tuple[int, int]:
        """``(connections served, connections active)``: the loop's."""
        return self.loop.served, len(self.loop.connections)

    def running(self) -> list[str]:
        """Every connection of the loop as ``PEER (N s)``."""
        return self.loop.running()

    def _has_room(self) -> bool:
        bound = self.strategy.max_connections
        return bound is None or len(self.loop.connections) < bound

    def _may_accept(self) -> bool:
        # Asked before every accept of a batch: _has_room's test without its call.
        bound = self._bound
        return not self._lifecycle.stopping and (bound is None or len(self.loop.connections) < bound)

    def _accept_batch(self) -> None:
        # Take every waiting connection now (level-triggered poll would
        # report the listener again anyway), up to the bound.
        add_accepted = self.add_accepted
        for sock, peer in self.host.acceptor.accept_batch(self._may_accept):
            add_accepted(sock, peer)

    def add_accepted(self, sock: socket.socket, peer: str) -> None:
        """Hand one accepted connection to the loop, through the host's admission."""
        if self._fd_limit is not None and sock.fileno() >= self._fd_limit:
            log.warning("connection from %s refused: descriptor %d is beyond select()'s FD_SETSIZE",
                        peer, sock.fileno())
            sock.close()
            return
        protocol = self.host.admit(sock, peer)
        if protocol is not None:
            self.loop.add_connection(sock, peer, protocol)
