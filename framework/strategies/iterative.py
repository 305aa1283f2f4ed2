"""The iterative strategy: one connection at a time, in the serving thread (UNP §30.2).

The baseline every other model is measured against: no process or thread
control at all, so its CPU time is the pure cost of the work.  A second
client waits in the listen backlog until the first has left.
"""

from __future__ import annotations

import dataclasses

from framework.accepting import Acceptor
from framework.drivers.datagram import serve_datagram_socket
from framework.lifecycle import Lifecycle
from framework.strategies.base import Host, Run, Strategy
from framework.strategies.dispatching import AcceptLoop


@dataclasses.dataclass(frozen=True)
class IterativeStrategy(Strategy):
    """Accept, serve to the end, accept the next; nothing runs concurrently."""

    name = "iterative"
    description = "one connection at a time in one process (the baseline)"

    def start(self, host: Host) -> IterativeRun:
        """A run serving one connection at a time."""
        return IterativeRun(self, host)

    def can_serve_datagrams(self) -> bool:
        """Yes: one loop answers datagrams in the serving thread."""
        return True

    def capacity(self) -> int:
        """One connection at a time."""
        return 1

    def waits_in_accept(self) -> bool:
        """Yes: the serving thread waits in ``accept`` where its acceptor allows it (a pre-forked worker's)."""
        return True


class IterativeRun(Run):
    """The serving thread accepts a connection and serves it to its end."""

    def serve(self) -> None:
        """Accept and serve connections one by one until a stop is requested."""
        loop = AcceptLoop.for_host(self.host)
        try:
            self._serve(self.host.lifecycle, self.host.acceptor, loop)
        finally:
            loop.close()

    def _serve(self, lifecycle: Lifecycle, acceptor: Acceptor, loop: AcceptLoop) -> None:
        if acceptor.waits_in_accept:
            self._serve_waiting_in_accept(lifecycle, acceptor, loop)
            return
        host = self.host
        listener_ready = False
        while not lifecycle.stopping:
            # After a connection, look before waiting: under load the next one is
            # usually there already, and a zero-timeout peek finds it for less than
            # the wait's bookkeeping (and far less than an accept that finds none:
            # that raises).  On a shared listener another process may have taken
            # what the wait saw: look then too.
            if acceptor.wants_polling() and ((listener_ready and not acceptor.shared) or acceptor.waiting()):
                accepted = acceptor.accept()
                if accepted is not None:
                    host.serve_connection(*accepted, main_thread=True)
                    listener_ready = False
                    continue
            listener_ready = loop.wait(accepting=True)

    def _serve_waiting_in_accept(self, lifecycle: Lifecycle, acceptor: Acceptor, loop: AcceptLoop) -> None:
        """Wait in ``accept`` itself (a pre-forked worker's shared listener, made so by its master).

        Each wait ends with a connection, at the listener's receive timeout,
        when a signal's action is recorded (``EINTR``; Python retries the
        ``accept`` after recording it, so it runs here at the timeout at the
        latest), or when the master stops listening.  A connection taken is
        served even when a stop has begun meanwhile: the kernel gave it to
        this worker alone.
        """
        host = self.host
        signals = lifecycle.signals
        while not lifecycle.stopping:
            if signals.pending():
                lifecycle.dispatch()
            elif acceptor.backoff_remaining():  # out of descriptors, or the listener stopped: wait for a signal
                loop.wait(accepting=True)
            else:
                accepted = acceptor.accept()
                if accepted is not None:
                    host.serve_connection(*accepted, main_thread=True)

    def serve_datagrams(self) -> None:
        """Answer datagrams one by one in the serving thread until a stop is requested."""
        host = self.host
        serve_datagram_socket(host.listener, host.datagram_service(), wakeup_fd=host.lifecycle.wakeup_fd(),
                              main_thread=True)
