"""The strategy interface: how connections are carried, whatever is said on them."""

from __future__ import annotations

import abc
import dataclasses
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from framework.server import Server


@dataclasses.dataclass
class StrategyOptions:
    """Every strategy knob the command line offers; each strategy reads the ones it uses.

    Keeping them in one place gives every strategy the same flag names and
    lets a composed strategy (a pre-forked pool of threaded workers) hand
    the right ones to its inner strategy.
    """

    #: forking / threading / poll: most connections served at once (None: unbounded).
    max_connections: int | None = None
    #: prethreaded, and preforked with ``worker="threads"``: threads per process.
    threads: int = 8
    #: prethreaded: ``"lock"`` (threads take turns in accept) or ``"handoff"`` (main thread accepts).
    prethreaded_accept: str = "lock"
    #: preforked: worker processes (default: CPU count).
    workers: int = dataclasses.field(default_factory=lambda: os.cpu_count() or 1)
    #: preforked: ``shared``, ``lock``, ``reuseport`` or ``passfd``.
    accept: str = "shared"
    #: preforked: the inner strategy of each worker: ``iterative``, ``threads`` or ``poll``.
    worker: str = "iterative"
    #: poll: the selector, ``poll``, ``epoll`` or ``select``.
    selector: str = "poll"
    #: preforked: recycle a worker after this many connections (0: never).
    max_requests: int = 0
    #: preforked: add up to this many to each worker's max_requests, so they do not all restart at once.
    max_requests_jitter: int = 0


class ServeError(RuntimeError):
    """A strategy cannot go on serving (a worker failed to boot...); the message is one line for the user."""

    def __init__(self, message: str, exit_status: int = 1) -> None:
        super().__init__(message)
        #: The exit status ``forkthread serve`` ends with.
        self.exit_status = exit_status


class Strategy(abc.ABC):
    """A concurrency model: given a bound :class:`~framework.server.Server`, serve until stopped.

    :meth:`serve` runs in the thread that called
    :meth:`~framework.server.Server.serve_forever`.  It must return once
    ``server.lifecycle.stopping`` and in-flight connections are over (or the
    graceful deadline passed), with every child reaped and thread joined.
    It serves each connection with
    :meth:`~framework.server.Server.handle_connection` (blocking driver) or
    the non-blocking driver, and accepts with ``server.acceptor``.
    """

    #: The name on the command line (``--strategy NAME``).
    name: ClassVar[str] = ""
    #: One line for ``forkthread list``.
    description: ClassVar[str] = ""

    @classmethod
    def from_options(cls, options: StrategyOptions) -> Strategy:
        """Build the strategy from command-line options (default: no options)."""
        return cls()

    @abc.abstractmethod
    def serve(self, server: Server) -> None:
        """Serve *server*'s listener until a stop is requested and all work is over."""

    def serve_datagrams(self, server: Server) -> None:
        """Answer datagrams on *server*'s (datagram) socket until a stop is requested.

        Strategies that make sense for datagrams (iterative, threading,
        pre-forked) override this with :func:`framework.datagram.serve_datagram_socket`
        in one thread, several threads or several processes; a connection-based
        model (fork per connection, an event loop of connections) refuses.
        """
        raise NotImplementedError(f"strategy {self.name!r} cannot serve datagrams (UDP)")

    def can_serve_datagrams(self) -> bool:
        """True when this strategy, as configured, implements :meth:`serve_datagrams`.

        :class:`~framework.server.Server` asks before binding, so that a
        refusal is a clear error rather than a failure once serving.
        """
        return type(self).serve_datagrams is not Strategy.serve_datagrams

    def signal_actions(self, server: Server) -> dict[int, Callable[[int], None]]:
        """Signal actions of the strategy's own (a master's HUP, TTIN...), beyond TERM, INT and USR1.

        :meth:`~framework.server.Server.serve_forever` installs them with the
        defaults, before it announces the server, so that no signal sent after
        the announcement meets its default action.  Default: none.
        """
        return {}

    def counts(self, server: Server) -> tuple[int, int]:
        """``(connections served, connections active)`` for the status line."""
        return server.connections.served, len(server.connections)

    def describe(self) -> str:
        """The strategy with its main options, for the status line (``preforked(4,lock)``)."""
        return self.name
