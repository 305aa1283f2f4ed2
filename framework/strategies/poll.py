"""The poll strategy: one thread, one event loop, every connection at once (UNP §6, ch. 16).

The listener, the wakeup pipe and every connection sit in one selector
(``poll(2)`` by default; ``epoll`` and ``select`` on request) and the
non-blocking driver (:mod:`framework.drivers.nonblocking`) runs each
connection's protocol as its socket becomes ready.  No process or thread is
created, so a connection costs a socket, a protocol object and its queued
output; the price is that one slow callback holds up everyone.
"""

from __future__ import annotations

import logging
import selectors
from typing import TYPE_CHECKING, ClassVar

from framework.drivers.blocking import ConnectionTimeout
from framework.drivers.nonblocking import EventLoop
from framework.strategies.base import Strategy, StrategyOptions

if TYPE_CHECKING:
    import socket

    from framework.server import Server

log = logging.getLogger("forkthread")

#: select(2) cannot watch descriptors at or above FD_SETSIZE.
FD_SETSIZE = 1024


class PollStrategy(Strategy):
    """Serve every connection from one event loop in the serving thread.

    *selector* is ``poll`` (the default), ``epoll`` or ``select``;
    *max_connections* bounds the connections served at once: at the bound
    the listener leaves the poll set and new clients wait in the backlog.
    """

    name = "poll"
    description = "one thread, one event loop over poll(2) (or epoll/select): non-blocking I/O"

    #: --selector name -> selector class.
    SELECTORS: ClassVar[dict[str, str]] = {
        "poll": "PollSelector",
        "epoll": "EpollSelector",
        "select": "SelectSelector",
    }

    def __init__(self, selector: str = "poll", max_connections: int | None = None) -> None:
        if selector not in self.SELECTORS or not hasattr(selectors, self.SELECTORS[selector]):
            raise ValueError(f"unknown or unavailable selector {selector!r} (choose from {', '.join(self.SELECTORS)})")
        if max_connections is not None and max_connections <= 0:
            raise ValueError(f"max_connections must be > 0, not {max_connections}")
        self.selector = selector
        self.max_connections = max_connections

    @classmethod
    def from_options(cls, options: StrategyOptions) -> PollStrategy:
        """``--selector`` and ``--max-connections``."""
        return cls(options.selector, options.max_connections)

    def describe(self) -> str:
        """``poll``, or ``poll(epoll)`` / ``poll(select,max=100)`` when options differ from the default."""
        details = [] if self.selector == "poll" else [self.selector]
        if self.max_connections is not None:
            details.append(f"max={self.max_connections}")
        return f"{self.name}({','.join(details)})" if details else self.name

    def make_selector(self) -> selectors.BaseSelector:
        """A new selector of the configured kind."""
        selector: selectors.BaseSelector = getattr(selectors, self.SELECTORS[self.selector])()
        return selector

    def serve(self, server: Server) -> None:
        """Accept and serve connections until a stop is requested and the last one is over.

        On a stop request the listener leaves the poll set at once; open
        connections run on until they end or the graceful deadline passes,
        when the rest are aborted.
        """
        lifecycle = server.lifecycle
        acceptor = server.acceptor
        listen_fd = acceptor.fileno()
        loop = EventLoop(self.make_selector(), idle_timeout=server.timeout, handle_error=server.handle_error,
                         connections=server.connections)
        bound = self.max_connections
        check_fd_setsize = self.selector == "select"

        def accept_batch() -> None:
            # Take every waiting connection now (level-triggered poll would
            # report the listener again anyway), up to the bound.
            while not lifecycle.stopping and (bound is None or len(loop.connections) < bound):
                accepted = acceptor.accept()
                if accepted is None:
                    return
                self._start(server, loop, *accepted, check_fd_setsize=check_fd_setsize)

        loop.add_reader(lifecycle.wakeup_fd(), lifecycle.dispatch)
        listening = False
        told_stopping = False
        try:
            while True:
                timeout: float | None = None
                if lifecycle.stopping:
                    want_listener = False
                    if not told_stopping:
                        told_stopping = True
                        loop.notify_stopping()  # idle keep-alive connections can close now
                else:
                    backoff = acceptor.backoff_remaining()
                    want_listener = not backoff and (bound is None or len(loop.connections) < bound)
                    timeout = backoff or None
                if want_listener != listening:
                    if want_listener:
                        loop.add_reader(listen_fd, accept_batch)
                    else:
                        loop.remove_reader(listen_fd)
                    listening = want_listener
                if lifecycle.stopping:
                    if not loop.connections:
                        break
                    if lifecycle.past_deadline():
                        aborted = loop.abort_all(ConnectionTimeout("server stopping: graceful timeout passed"))
                        log.info("graceful timeout passed: aborted %d connection(s)", aborted)
                        break
                    timeout = lifecycle.remaining()
                loop.run_once(timeout)
        finally:
            loop.close()

    @staticmethod
    def _start(server: Server, loop: EventLoop, sock: socket.socket, peer: str, *, check_fd_setsize: bool) -> None:
        """Hand one accepted connection to the loop, through the server's hooks."""
        try:
            if check_fd_setsize and sock.fileno() >= FD_SETSIZE:
                log.warning("connection from %s refused: descriptor %d is beyond select()'s FD_SETSIZE",
                            peer, sock.fileno())
                sock.close()
                return
            if not server.verify_request(sock, peer):
                sock.close()
                return
            server.configure_connection(sock)
            protocol = server.protocol_factory()
        except Exception as exc:
            server.handle_error(exc, peer)
            sock.close()
            return
        loop.add_connection(sock, peer, protocol)
