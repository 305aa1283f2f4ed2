"""The contract between a server and the strategies that carry it, and the strategy interface.

Three things live here, and nothing else joins the two layers:

:class:`Host`
    Everything a strategy may ask of the server it carries, written down
    once: where to take connections from, how to admit and serve one, the
    process's run state, the counters, and the one call by which a forked
    process enters its role (:meth:`Host.enter_child`).  A
    :class:`~framework.server.Server` is a Host; strategies name this
    class, never ``Server``, and never assign a server's attributes.
:class:`Strategy`
    A concurrency model as *configuration*: immutable, built from options,
    reusable.  :meth:`Strategy.start` creates a :class:`Run`.
:class:`Run`
    One serve of a strategy over one host: it owns that serve's state (the
    children it forked, its threads, a pre-forked supervisor) and is thrown
    away when serving ends.  Nothing a run does changes its strategy.
"""

from __future__ import annotations

import abc
import dataclasses
import os
import socket
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from framework.accepting import Acceptor
from framework.address import Address
from framework.drivers.datagram import DatagramService
from framework.lifecycle import ActiveConnections, Lifecycle
from framework.protocol import Protocol as ConnectionProtocol
from framework.signals import SignalAction

if TYPE_CHECKING:
    import ssl


@dataclasses.dataclass(frozen=True)
class ChildRole:
    """What a freshly forked process becomes; given to :meth:`Host.enter_child`.

    A child per connection (``forking``) takes the defaults: no listener, its
    own counters.  A pre-forked worker brings the acceptor its accept mode
    made, the counters it publishes on the scoreboard, and its own run.
    """

    #: Where the child takes connections from (None: it accepts none).
    acceptor: Acceptor | None = None
    #: The child's connection counters (None: fresh ones).
    connections: ActiveConnections | None = None
    #: Keep this process's copy of the listener (workers that accept on it); otherwise it is closed.
    keep_listener: bool = False
    #: The strategy the child serves by from now on: :meth:`Host.enter_child` starts its run
    #: and the child's status line reports it (None: the child serves what it was given, and
    #: its status counts its own connections).
    strategy: Strategy | None = None
    #: A pre-forked worker: run the server's ``worker_init`` hook (a failure there is a boot failure).
    worker: bool = False


class Host(Protocol):
    """The whole of what a strategy may ask of the server it carries.

    The path of one connection is: take it from :attr:`acceptor`, then either
    :meth:`serve_connection` (blocking: admission, then the blocking driver or the
    server's blocking handler, every error handled, socket closed) or :meth:`admit`
    and hand the protocol to an event loop.  Only strategies whose
    :meth:`Strategy.carries_blocking_handlers` is true may carry a server with a
    handler, and they only ever call :meth:`serve_connection` for it.
    """

    @property
    def lifecycle(self) -> Lifecycle:
        """This process's run state, wakeup pipe, stop latch and signal routing."""

    @property
    def connections(self) -> ActiveConnections:
        """The connections this process serves now, and how many it has served."""

    @property
    def acceptor(self) -> Acceptor:
        """Where this process takes new connections from."""

    @property
    def listener(self) -> socket.socket:
        """This process's bound socket (a datagram socket, or a listener an accept mode shares)."""

    @property
    def address(self) -> Address:
        """The address really listened on."""

    @property
    def backlog(self) -> int:
        """The listen backlog (for listeners a strategy opens beside the server's own)."""

    @property
    def timeout(self) -> float | None:
        """Idle timeout of a connection, in seconds (None: none)."""

    @property
    def graceful_timeout(self) -> float:
        """How long in-flight connections may run on after a stop request."""

    @property
    def tls(self) -> ssl.SSLContext | None:
        """The server-side TLS context every connection speaks (None: plain TCP or Unix streams).

        :meth:`serve_connection` applies it itself; a strategy that drives an
        event loop hands it to :class:`~framework.drivers.nonblocking.EventLoop`.
        """

    def admit(self, sock: socket.socket, peer: str) -> ConnectionProtocol | None:
        """Admit one accepted connection: verify, apply socket options, count, make its protocol.

        Returns None (and closes *sock*) when the connection is refused or its
        set-up failed (logged).  The one admission rule both drivers use.
        """

    def serve_connection(self, sock: socket.socket, peer: str, *, main_thread: bool) -> None:
        """Admit and serve one connection to its end in the calling thread; closes *sock*; never raises.

        The server runs its protocol with the blocking driver, or its blocking
        handler (which may block the calling thread for as long as it likes:
        the server itself keeps the time limits and the graceful stop).
        *main_thread* says whether the caller is the process's main thread,
        which otherwise polls the wakeup pipe and runs signal actions.
        """

    def handle_error(self, exc: BaseException, peer: str) -> None:
        """Report a fault of one connection's protocol (the connection is already over)."""

    def rehearse(self, role: ChildRole | None = None) -> None:
        """Serve a few connections of the framework's own in this process, none of the server's hooks called.

        For a strategy about to fork a child per connection: each child then
        runs the serving path specialized by the interpreter rather than cold
        (:mod:`framework.rehearsal`); with *role*, the role each child will
        enter (:meth:`enter_child`), its entry too.
        """

    def datagram_service(self) -> DatagramService:
        """What a datagram loop needs to answer datagrams on :attr:`listener`."""

    def status(self) -> str:
        """The status line (SIGUSR1)."""

    def construction(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The arguments the server was made with, ``(args, kwargs)``: a strategy whose workers
        are other interpreters makes the same server again in each (``type(host)`` is its class).
        """

    def enter_child(self, role: ChildRole) -> Run | None:
        """In a freshly forked process: become *role* (the one call a child makes).

        Gives the process its own wakeup pipe and counters, takes the role's
        acceptor, closes the listener unless the role keeps it, runs
        ``worker_init`` for a worker, and returns the run of the role's
        strategy (None without one).
        """


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
    #: prethreaded: ``"shared"`` (each idle thread waits, the kernel wakes one), ``"lock"`` (threads
    #: take turns in accept) or ``"handoff"`` (the main thread accepts).
    prethreaded_accept: str = "shared"
    #: preforked, interpreters: workers (None: :func:`default_workers` for the ``worker`` kind).
    workers: int | None = None
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
    #: preforked: kill and replace a worker whose heartbeat is this many seconds old (None: never).
    worker_timeout: float | None = None

    def pool_size(self) -> int:
        """``workers``, or when it is None the default for the ``worker`` kind (:func:`default_workers`)."""
        return default_workers(self.worker) if self.workers is None else self.workers


def default_workers(worker: str) -> int:
    """How many workers a pool of *worker* kind has when ``--workers`` is not given.

    * ``poll``: one per CPU this process may run on (its affinity: ``taskset``,
      a container's cpuset), as ``concurrent.futures`` sizes its process pool
      from Python 3.13 and as nginx's ``worker_processes auto`` does.  An
      event-loop worker serves any number of connections at once, so a second
      worker on the same CPU adds no concurrency, only turns between processes:
      every short connection that wakes the idle worker preempts the busy one.
    * ``iterative`` and ``threads``: one per CPU of the machine, as before.  These
      workers' count is also how many connections the pool serves at once, so
      it does not shrink with the CPUs (one pinned iterative worker would serve
      one persistent connection at a time).
    """
    if worker == "poll":
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


class ServeError(RuntimeError):
    """A strategy cannot go on serving (a worker failed to boot...); the message is one line for the user."""

    def __init__(self, message: str, exit_status: int = 1) -> None:
        super().__init__(message)
        #: The exit status ``forkthread serve`` ends with.
        self.exit_status = exit_status


class Strategy(abc.ABC):
    """A concurrency model, as configuration: immutable once built, reusable for any number of serves.

    Concrete strategies are frozen dataclasses.  :meth:`start` makes the
    :class:`Run` that serves one host; the run's :meth:`Run.serve` runs in
    the thread that called :meth:`~framework.server.Server.serve_forever`.
    """

    #: The name on the command line (``--strategy NAME``).
    name: ClassVar[str] = ""
    #: One line for ``forkthread list``.
    description: ClassVar[str] = ""
    #: The :class:`StrategyOptions` fields :meth:`from_options` reads: ``forkthread serve``
    #: warns about an option given on the command line that the chosen strategy ignores.
    option_names: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def from_options(cls, options: StrategyOptions) -> Strategy:
        """Build the strategy from command-line options (default: no options)."""
        return cls()

    @classmethod
    def honoured_options(cls, options: StrategyOptions) -> frozenset[str]:
        """The :class:`StrategyOptions` fields a strategy built from *options* uses (default: :attr:`option_names`).

        A composed strategy adds its inner strategy's, which may depend on *options*.
        """
        return cls.option_names

    @classmethod
    def unavailable(cls) -> str | None:
        """Why this strategy cannot run on this Python (one line), or None when it can (default)."""
        return None

    @abc.abstractmethod
    def start(self, host: Host) -> Run:
        """A new run of this strategy over *host*; nothing is served until :meth:`Run.serve`."""

    def can_serve_datagrams(self) -> bool:
        """True when this strategy, as configured, can answer datagrams (its runs implement
        :meth:`Run.serve_datagrams`).  A server asks before binding, so a refusal is a clear error.
        """
        return False

    def capacity(self) -> int | None:
        """Most connections one run of this strategy serves at once (None: no bound of its own).

        A pre-forked master in ``passfd`` mode passes a worker no more than
        this, so further clients wait in the kernel's backlog, not in a busy
        worker's channel.
        """
        return None

    def carries_blocking_handlers(self) -> bool:
        """True when this strategy, as configured, serves every connection through
        :meth:`Host.serve_connection`: a thread of its own waits on the connection, so a
        blocking handler (a ``socketserver`` request handler) may block it.  False for an
        event loop (which admits with :meth:`Host.admit` and drives protocols).  A server
        with a handler asks before binding, so a refusal is a clear error.  Default: True.
        """
        return True

    def waits_in_accept(self) -> bool:
        """True when this strategy's runs can wait for connections in ``accept`` itself.

        That is, on a blocking listener rather than in a ``poll`` before each
        ``accept``: one system call per connection fewer, and the kernel wakes
        one waiter per connection.  A pre-forked master makes its workers'
        shared listener so (:attr:`~framework.accepting.Acceptor.waits_in_accept`)
        only for a worker kind that says yes here.  Default: False.
        """
        return False

    def describe(self) -> str:
        """The strategy with its main options, for the status line (``preforked(4,lock)``)."""
        return self.name


class Run(abc.ABC):
    """One serve of a :class:`Strategy` over a :class:`Host`: the state of that serve, and its loop.

    :meth:`serve` must return once ``host.lifecycle.stopping`` and in-flight
    connections are over (or the graceful deadline passed), with every child
    reaped and thread joined.
    """

    def __init__(self, strategy: Strategy, host: Host) -> None:
        #: The configuration this run serves by (never changed by the run).
        self.strategy = strategy
        self.host = host

    def signal_actions(self) -> dict[int, SignalAction]:
        """Signal actions of the run's own (a master's HUP, TTIN...), beyond TERM, INT and USR1.

        The server installs them with the defaults before it announces
        itself, so no signal sent after the announcement meets its default
        action.  Asking has no side effect.  Default: none.
        """
        return {}

    @abc.abstractmethod
    def serve(self) -> None:
        """Serve the host's listener until a stop is requested and all work is over."""

    def serve_datagrams(self) -> None:
        """Answer datagrams on the host's socket until a stop is requested.

        Only runs of strategies whose :meth:`Strategy.can_serve_datagrams` is true implement it.
        """
        raise NotImplementedError("this strategy cannot serve datagrams (UDP)")

    def counts(self) -> tuple[int, int]:
        """``(connections served, connections active)`` for the status line."""
        connections = self.host.connections
        return connections.served, len(connections)

    def running(self) -> list[str]:
        """What is served now, for a stop that cuts it short: each connection as ``PEER (N s)``."""
        return self.host.connections.running()

    def describe(self) -> str:
        """The run's strategy and options for the status line (a worker says which worker it is)."""
        return self.strategy.describe()
