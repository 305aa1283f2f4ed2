"""The iterative strategy: one connection at a time, in the serving thread (UNP §30.2).

The baseline every other model is measured against: no process or thread
control at all, so its CPU time is the pure cost of the work.  A second
client waits in the listen backlog until the first has left.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from framework.datagram import serve_datagram_socket
from framework.strategies.base import Strategy
from framework.strategies.dispatching import AcceptLoop

if TYPE_CHECKING:
    from framework.server import Server


class IterativeStrategy(Strategy):
    """Accept, serve to the end, accept the next; nothing runs concurrently."""

    name = "iterative"
    description = "one connection at a time in one process (the baseline)"

    def serve(self, server: Server) -> None:
        """Accept and serve connections one by one until a stop is requested."""
        lifecycle = server.lifecycle
        acceptor = server.acceptor
        loop = AcceptLoop.for_server(server)
        while not lifecycle.stopping:
            # Accept first: under load a connection is usually waiting already,
            # which saves the poll() call.
            accepted = acceptor.accept() if acceptor.backoff_remaining() == 0 else None
            if accepted is not None:
                server.handle_connection(*accepted, main_thread=True)
                continue
            loop.wait(accepting=True)

    def serve_datagrams(self, server: Server) -> None:
        """Answer datagrams one by one in the serving thread until a stop is requested."""
        assert server.listener is not None
        serve_datagram_socket(server, server.listener, wakeup_fd=server.lifecycle.wakeup_fd(), main_thread=True)
