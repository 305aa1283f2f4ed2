"""The abstract :class:`Server`: address to listening socket, lifecycle, and the hooks users know.

A concrete server is a subclass that says *what* is spoken on a connection
(:meth:`Server.protocol_factory`); *how* connections are carried is a
:class:`~framework.strategies.base.Strategy` chosen at run time.  The two meet
only through the contract in :mod:`framework.strategies.base`: a server is
the :class:`~framework.strategies.base.Host` its strategy's run serves::

    class Upper(Protocol):
        def data_received(self, data):
            self.transport.write(data.upper())

    class UpperServer(Server):
        name = "upper"
        protocol = Upper

    with UpperServer("127.0.0.1:0", strategy="threading") as server:
        print(server.address)
        server.serve_forever()
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import threading
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, Self, TypeVar

from framework.accepting import Acceptor
from framework.activation import sd_notify
from framework.address import (
    DEFAULT_BACKLOG,
    Address,
    bind_socket,
    close_socket,
    local_address,
    parse_address,
    remove_unix_socket,
    socket_file_inode,
)
from framework.datagram import DatagramProtocol
from framework.drivers.blocking import BlockingConnection, tls_handshake
from framework.drivers.common import HandlerError, ends_quietly
from framework.drivers.datagram import DatagramService
from framework.drivers.handler import HandlerClass, close_request, run_handler
from framework.drivers.watch import ConnectionWatch
from framework.lifecycle import ActiveConnections, LastResort, Lifecycle
from framework.limits import check_duration
from framework.protocol import Protocol
from framework.rehearsal import ROUNDS as REHEARSAL_ROUNDS
from framework.rehearsal import RehearsalHandler, RehearsalProtocol, rehearse
from framework.signals import ignore_sigpipe
from framework.strategies.base import ChildRole, Run, Strategy

if TYPE_CHECKING:
    import ssl

log = logging.getLogger("forkthread")

_Made = TypeVar("_Made")

#: Default idle timeout (seconds): a connection silent for this long is closed.
DEFAULT_TIMEOUT = 60.0
#: Default graceful timeout (seconds) for in-flight connections at shutdown.
DEFAULT_GRACEFUL_TIMEOUT = 30.0
#: The peer a rehearsal connection is served as (see :meth:`Server.rehearse`).
_REHEARSAL_PEER = "rehearsal"


class Server:
    """Base class of every server: subclass it, set :attr:`protocol` (or override
    :meth:`protocol_factory`), and run it under any strategy.  Or set
    :attr:`handler` to a ``socketserver`` request handler, run unchanged
    under every strategy that gives a connection a thread of its own.

    *address* is text (``HOST:PORT``, ``[V6]:PORT``, ``unix:PATH``) or an
    :class:`~framework.address.Address`; *strategy* a strategy name or
    instance (default: the class's :attr:`default_strategy`).  *nodelay*
    and *keepalive* are applied to every accepted TCP connection by the
    framework itself, whatever :meth:`configure_connection` does.  *timeout* closes a connection idle for
    that many seconds (None: never); *graceful_timeout* bounds how long
    in-flight connections may run on after a stop request.  *listener* serves
    an already listening socket (systemd socket activation, tests) instead of
    binding.  The socket is bound when the server is created, so
    :attr:`address` is known at once; pass ``bind=False`` to delay that to
    :meth:`server_activate`.  *tls*, a server-side :class:`ssl.SSLContext`
    (:func:`framework.tls.server_context` makes one), has every stream
    connection speak TLS, under every strategy; the class's
    :attr:`alpn_protocols` are set on it.  *socket_mode* (a Unix address
    only) is the permission bits of the socket file, set before anyone can
    connect: who may connect (``0o600``: this user alone).
    """

    #: The name on the command line (``forkthread serve NAME``).
    name: ClassVar[str] = ""
    #: One line for ``forkthread list``.
    description: ClassVar[str] = ""
    #: The port ``--bind`` defaults to on 127.0.0.1.
    default_port: ClassVar[int] = 8000
    #: The strategy this server runs under when none is given.  Servers whose
    #: connections last (keep-alive HTTP, chat, echo sessions) choose one that
    #: serves many clients at once.
    default_strategy: ClassVar[str] = "iterative"
    #: Whether TCP_NODELAY is set on connections when ``nodelay`` is not given.
    default_nodelay: ClassVar[bool] = False
    #: Strategy names this server can run under; None means every one.
    #: A server with shared state between connections (a chat room) lists
    #: only the strategies that keep all connections in one process.
    supported_strategies: ClassVar[frozenset[str] | None] = None
    #: The protocol class instantiated for each connection by the default
    #: :meth:`protocol_factory`.
    protocol: ClassVar[type[Protocol] | None] = None
    #: Instead of :attr:`protocol`: a blocking request handler, a subclass of the standard
    #: library's ``socketserver.BaseRequestHandler`` (``StreamRequestHandler`` included), run
    #: unchanged for each connection under the strategies that give a connection a thread of
    #: its own; see :mod:`framework.drivers.handler`.  Its ``self.server`` is this server.
    handler: ClassVar[Callable[..., object] | None] = None
    #: The datagram protocol for ``udp:`` addresses (None: the server speaks streams only).
    datagram_protocol: ClassVar[type[DatagramProtocol] | None] = None
    #: The ALPN protocol names offered over TLS (http: ``("http/1.1",)``); empty: no ALPN.
    alpn_protocols: ClassVar[tuple[str, ...]] = ()

    #: The arguments the server was made with (:meth:`construction`).
    _construction: tuple[tuple[Any, ...], dict[str, Any]]

    def __new__(cls, *args: Any, **kwargs: Any) -> Self:
        """Note the arguments the server is made with: see :meth:`construction`."""
        server = super().__new__(cls)
        server._construction = (args, kwargs)
        return server

    def __init__(
        self,
        address: str | Address = "127.0.0.1:0",
        strategy: Strategy | str | None = None,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        graceful_timeout: float = DEFAULT_GRACEFUL_TIMEOUT,
        backlog: int = DEFAULT_BACKLOG,
        reuse_port: bool = False,
        keepalive: tuple[int, int, int] | None = None,
        nodelay: bool | None = None,
        listener: socket.socket | None = None,
        handle_signals: bool = True,
        bind: bool = True,
        tls: ssl.SSLContext | None = None,
        socket_mode: int | None = None,
    ) -> None:
        # A wait no strategy can do is refused here, not tripped over by the first connection.
        check_duration(timeout, "timeout")
        check_duration(graceful_timeout, "graceful_timeout")
        self.requested_address = parse_address(address) if isinstance(address, str) else address
        if socket_mode is not None and not (0 <= socket_mode <= 0o777):
            raise ValueError(f"socket mode must be between 0 and 0o777, not {socket_mode:#o}")
        if socket_mode is not None and (listener is not None or not self.requested_address.is_unix):
            raise ValueError("a socket mode is for the Unix socket file the server binds (unix:PATH)")
        self.socket_mode = socket_mode
        self.strategy = self._resolve_strategy(strategy)
        self.timeout = timeout
        self.graceful_timeout = graceful_timeout
        self.backlog = backlog
        self.reuse_port = reuse_port
        self.keepalive = keepalive
        self.nodelay = self.default_nodelay if nodelay is None else nodelay
        self.handle_signals = handle_signals
        self.tls = tls
        if tls is not None and self.alpn_protocols:
            tls.set_alpn_protocols(list(self.alpn_protocols))
        self._listener: socket.socket | None = listener
        #: The listener's local address, asked of the kernel once (a child per connection reads it too).
        self._bound_address: Address | None = None
        self.lifecycle = Lifecycle(graceful_timeout)
        self.connections = ActiveConnections()
        self._unix_inode: tuple[int, int, int] | None = None
        self._acceptor: Acceptor | None = None
        #: The run serving now (None outside serve_forever, and in a child per connection).
        self._run: Run | None = None
        self._serving_thread: threading.Thread | None = None
        self._stopped = threading.Event()
        self._stopped.set()
        #: Runs signals and the graceful stop for blocking handlers (no thread until needed).
        #: Signals and the graceful stop while a connection blocks its thread in the kernel.
        self._watch = ConnectionWatch(self.lifecycle)
        # New connections are refused as soon as a stop starts, not when the last one ends.
        self.lifecycle.call_when_stopping(self._stop_listening)
        self.lifecycle.call_when_stopping(self._stop_began)
        if listener is not None:
            listener.setblocking(False)
            self.requested_address = local_address(listener)
            self._acceptor = Acceptor(listener, stopped_by_process_stop=True)  # by _stop_listening
        self._check_datagram_support()
        self._check_strategy_support()
        # Admission calls a hook only when the class overrides it: the defaults
        # do nothing, and a call per connection is a frame per connection.
        # (Asked once, here: a class is not expected to change its methods once serving.)
        server_class = type(self)
        self._verifies = server_class.verify_request is not Server.verify_request
        self._configures = server_class.configure_connection is not Server.configure_connection
        if listener is None and bind:
            self.server_activate()

    # -- construction helpers ------------------------------------------------

    def _resolve_strategy(self, strategy: Strategy | str | None) -> Strategy:
        from framework.strategies import create_strategy

        if strategy is None or isinstance(strategy, str):
            strategy = create_strategy(strategy or self.default_strategy)
        return strategy

    def _check_datagram_support(self) -> None:
        """Refuse a datagram address that this server or the strategy cannot serve."""
        if not self.requested_address.is_datagram:
            return
        if self.tls is not None:
            raise ValueError("TLS needs a stream address (TCP or Unix), not udp:")
        if self.datagram_protocol is None and type(self).datagram_protocol_factory is Server.datagram_protocol_factory:
            raise ValueError(f"server {self.name or type(self).__name__!r} does not speak datagrams (UDP)")
        if not self.strategy.can_serve_datagrams():
            raise ValueError(f"strategy {self.strategy.name!r} cannot serve datagrams (UDP)")

    def _check_strategy_support(self) -> None:
        """Refuse a strategy this server cannot run under (:meth:`refusal`), or a handler set beside a protocol."""
        if self.handler is not None and self.protocol is not None:
            raise ValueError(f"server {self.name or type(self).__name__!r} sets both `protocol` and `handler`")
        refusal = self.refusal(self.strategy)
        if refusal is not None:
            raise ValueError(refusal)

    @classmethod
    def refusal(cls, strategy: Strategy) -> str | None:
        """Why *strategy* cannot carry this server class, or None when it can.

        The rules in one place, asked at construction (a clear error), by the
        lab to choose the models it measures, and by the pytest plugin (a skip
        with this reason): a server that lists its :attr:`supported_strategies`
        runs under those only, and a blocking handler needs a strategy that
        gives each connection a thread of its own
        (:meth:`Strategy.carries_blocking_handlers`).
        """
        allowed = cls.supported_strategies
        if allowed is not None and strategy.name not in allowed:
            return (f"server {cls.name or cls.__name__!r} does not run under strategy {strategy.name!r}"
                    f" (supported: {', '.join(sorted(allowed))})")
        if cls.handler is None or strategy.carries_blocking_handlers():
            return None
        return (f"server {cls.name or cls.__name__!r} runs a blocking handler, which strategy"
                f" {strategy.describe()} cannot carry: one thread serves every connection there, so one"
                " blocked handler would stall them all (use iterative, forking, threading, prethreaded, or"
                " preforked with --worker iterative or threads)")

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Add this server's own command-line options to *parser* (override to extend)."""

    @classmethod
    def options_from_arguments(cls, args: argparse.Namespace) -> dict[str, object]:
        """Turn parsed command-line options into constructor keyword arguments."""
        return {}

    # -- the socket ------------------------------------------------------------

    def server_activate(self) -> None:
        """Bind and listen (idempotent).  Raises :class:`OSError` as the kernel reports it."""
        if self._listener is not None:
            return
        self._listener = bind_socket(self.requested_address, backlog=self.backlog, reuse_port=self.reuse_port,
                                     socket_mode=self.socket_mode)
        self._bound_address = None
        self._acceptor = Acceptor(self._listener, stopped_by_process_stop=True)  # by _stop_listening
        if self.requested_address.is_unix:
            self._unix_inode = socket_file_inode(self.requested_address.path)

    @property
    def listener(self) -> socket.socket:
        """The bound socket (listening, or a datagram socket)."""
        if self._listener is None:
            raise RuntimeError("the server is not bound (or this process released its listener)")
        return self._listener

    @property
    def address(self) -> Address:
        """The address really listened on (with the real port when 0 was asked)."""
        if self._listener is None:
            return self.requested_address
        if self._bound_address is None:
            self._bound_address = local_address(self._listener)
        return self._bound_address

    def fileno(self) -> int:
        """The listening socket's descriptor."""
        return self.listener.fileno()

    # socketserver's names, so handlers written against socketserver.BaseServer keep working.

    @property
    def server_address(self) -> str | tuple[str, int]:
        """:attr:`address` as ``socketserver`` names it: ``(host, port)``, or a Unix socket's path."""
        return self.address.sockaddr()

    @property
    def RequestHandlerClass(self) -> Callable[..., object] | None:
        """:attr:`handler`, under ``socketserver``'s name."""
        return self.handler

    @property
    def acceptor(self) -> Acceptor:
        """Where this process takes connections from: the listener's, or a pre-forked worker's own."""
        if self._acceptor is None:
            raise RuntimeError("the server is not bound yet")
        return self._acceptor

    def _stop_listening(self) -> None:
        if self._acceptor is not None:
            self._acceptor.stop()

    def _stop_began(self) -> None:
        self.lifecycle.stop_started(self.counts()[1])
        self._end_idle_connections()

    def _end_idle_connections(self) -> None:
        """A stop began: connections waiting in recv in worker threads join the watch, which ends
        their input once idle (the blocking driver then tells the protocol); see :meth:`serve_connection`."""
        watch = self._watch
        self.connections.each_waiting_in_recv(lambda sock: watch.attach(sock, False))

    def running(self) -> list[str]:
        """What this process serves now, for a stop that cuts it short: ``PEER (N s)``, a master's workers."""
        if self._run is not None:
            return self._run.running()
        return self.connections.running()

    def exit_past_deadline(self) -> None:
        """End this process, whatever still runs, once a stop is :data:`~framework.lifecycle.LAST_RESORT_MARGIN`
        seconds past its graceful deadline (:class:`~framework.lifecycle.LastResort`).

        For a program whose process is the server's (``forkthread serve`` calls it): a
        blocking handler that never returns, or its non-daemon threads, cannot keep it alive.
        """
        LastResort(self.lifecycle, self.running, self._remove_socket_file).arm()

    def _remove_socket_file(self) -> None:
        if self._listener is not None and self.requested_address.is_unix:
            remove_unix_socket(self.requested_address.path, self._unix_inode)

    # -- what a connection says --------------------------------------------------

    def protocol_factory(self) -> Protocol:
        """Return a fresh protocol for one connection (default: ``self.protocol()``)."""
        if self.protocol is None:
            raise NotImplementedError(f"{type(self).__name__} must set `protocol` or override protocol_factory()")
        return self.protocol()

    def datagram_protocol_factory(self) -> DatagramProtocol:
        """Return a fresh datagram protocol for one serving loop (default: ``self.datagram_protocol()``)."""
        if self.datagram_protocol is None:
            raise NotImplementedError(f"{type(self).__name__} does not speak datagrams")
        return self.datagram_protocol()

    def verify_request(self, sock: socket.socket, peer: str) -> bool:
        """Return False to close a new connection at once, without serving it."""
        return True

    def configure_connection(self, sock: socket.socket) -> None:
        """Hook: set options of your own on a freshly accepted socket (default: nothing).

        The framework's own options (``nodelay``, ``keepalive``) are applied
        before this is called, whether or not a subclass overrides it.
        """

    def _apply_socket_options(self, sock: socket.socket) -> None:
        """``nodelay`` (TCP_NODELAY) and ``keepalive`` (SO_KEEPALIVE, TCP_KEEPIDLE/INTVL/CNT) on TCP."""
        # Called only when there is something to set (see _admit): ``sock.family``
        # converts to an enum, work a connection need not do otherwise.
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            return
        if self.nodelay:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.keepalive is not None:
            idle, interval, count = self.keepalive
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, count)

    def handle_error(self, exc: BaseException, peer: str) -> None:
        """Log a protocol's fault: the connection is already over, the server lives on."""
        log.error("connection from %s: handler failed: %r", peer, exc, exc_info=exc)

    # -- serving: the Host contract (framework.strategies.base) -------------------

    def admit(self, sock: socket.socket, peer: str) -> Protocol | None:
        """Admit one accepted connection: verify it, apply socket options, make its protocol.

        The one admission rule every strategy and driver uses.  Returns None,
        with *sock* closed, when :meth:`verify_request` refuses the connection
        or its set-up fails (reported to :meth:`handle_error`).  A refused
        connection is not counted as served.
        """
        return self._admit(sock, peer, self.protocol_factory)

    def _admit(self, sock: socket.socket, peer: str, make: Callable[[], _Made]) -> _Made | None:
        """:meth:`admit`, ending in ``make()``: the protocol, or the blocking handler to run."""
        try:
            if self._verifies and not self.verify_request(sock, peer):
                sock.close()
                return None
            if self.nodelay or self.keepalive is not None:
                self._apply_socket_options(sock)
            if self._configures:
                self.configure_connection(sock)
            return make()
        except Exception as exc:
            self.handle_error(exc, peer)
            sock.close()
            return None

    def _handler_class(self) -> Callable[..., object]:
        if self.handler is None:
            raise NotImplementedError(f"{type(self).__name__} has no `handler`")
        return self.handler

    def serve_connection(self, sock: socket.socket, peer: str, *, main_thread: bool = True) -> None:
        """Admit and serve one accepted connection to its end in the calling thread (blocking driver).

        Every exception is handled here, so a strategy can call this in a
        loop: a vanished peer or a timeout is logged at debug, a protocol's
        fault goes to :meth:`handle_error`.  *sock* is closed on return.
        A server with a :attr:`handler` runs it instead of a protocol.
        """
        if self.handler is not None:
            self._serve_with_handler(sock, peer, main_thread)
            return
        protocol = self.admit(sock, peer)  # (a server may override admit(): message does)
        if protocol is None:
            return
        if self.tls is not None:
            # The handshake itself runs in the driver, under its time limits and signal handling.
            wrapped = self._wrap_tls(sock, peer)
            if wrapped is None:
                return
            sock = wrapped
        self._serve_protocol(sock, peer, protocol, main_thread)

    def _serve_protocol(self, sock: socket.socket, peer: str, protocol: Protocol, main_thread: bool) -> None:
        """Serve an admitted connection with the blocking driver, to its end; close *sock*.

        The path every connection takes after its admission, and the one a
        rehearsal runs (:meth:`rehearse`).
        """
        self.connections.add(sock)
        try:
            connection = BlockingConnection(sock, peer, lifecycle=self.lifecycle, idle_timeout=self.timeout,
                                            watch_wakeup=main_thread, watch=self._watch)
            ended_by = connection.run(protocol)
            if ended_by is not None:
                log.debug("connection from %s ended: %s", peer, ended_by)
        except HandlerError as fault:
            self.handle_error(fault.original, peer)
        except Exception as exc:
            self._connection_ended_by(exc, peer)
        finally:
            self._forget(sock)
            if sock.fileno() != -1:  # the driver closes it, unless it ended early
                sock.close()

    def _serve_with_handler(self, sock: socket.socket, peer: str, main_thread: bool) -> None:
        """:meth:`serve_connection` for a blocking handler (:mod:`framework.drivers.handler`)."""
        handler = self._admit(sock, peer, self._handler_class)
        if handler is None:
            return
        if self.tls is not None:
            # The handler gets an ssl.SSLSocket whose handshake the driver completed (time limits, signals).
            wrapped = self._wrap_tls(sock, peer)
            if wrapped is None:
                return
            ended_by = tls_handshake(wrapped, peer, lifecycle=self.lifecycle, idle_timeout=self.timeout,
                                     watch_wakeup=main_thread)
            if ended_by is not None:
                log.debug("connection from %s ended: %s", peer, ended_by)
                wrapped.close()
                return
            sock = wrapped
        self._run_handler(sock, peer, handler, main_thread)

    def _run_handler(self, sock: socket.socket, peer: str, handler: HandlerClass, main_thread: bool) -> None:
        """Run a blocking handler over an admitted connection; close *sock* (also what :meth:`rehearse` runs)."""
        self.connections.add(sock)
        try:
            run_handler(handler, sock, self, timeout=self.timeout, watch=self._watch, main_thread=main_thread)
        except Exception as exc:  # the handler's own I/O meets the vanished peers and time limits
            self._connection_ended_by(exc, peer)
        finally:
            self._forget(sock)
            close_request(sock)

    def _forget(self, sock: socket.socket) -> None:
        """A connection is over: no longer counted, nor watched (a stop may have handed it to the watch)."""
        self.connections.discard(sock)
        if self.lifecycle.stopping:
            self._watch.detach(sock, False)

    def _wrap_tls(self, sock: socket.socket, peer: str) -> socket.socket | None:
        """*sock* as a server-side TLS socket whose handshake is still to come; None (closed) on failure."""
        assert self.tls is not None
        try:
            return self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        except OSError as exc:
            log.debug("connection from %s ended: %s", peer, exc)
            sock.close()
            return None

    def _connection_ended_by(self, exc: Exception, peer: str) -> None:
        """A connection ended by *exc*: a normal end (:func:`ends_quietly`) at debug, a fault to handle_error."""
        if ends_quietly(exc):
            log.debug("connection from %s ended: %s", peer, exc)
        else:
            self.handle_error(exc, peer)

    def _release_watch(self) -> None:
        self._watch.close()

    def datagram_service(self) -> DatagramService:
        """What a datagram loop needs of this server (see :mod:`framework.drivers.datagram`)."""
        return DatagramService(self.lifecycle, self.datagram_protocol_factory, self.connections, self.handle_error)

    def enter_child(self, role: ChildRole) -> Run | None:
        """In a freshly forked process: become *role*; see :meth:`framework.strategies.base.Host.enter_child`."""
        # A child serving what it was given (forking's) waits in its main thread, if at all.
        self.lifecycle.after_fork_in_child(late_wakeup=role.strategy is None)
        if self._serving_thread is None:
            # Otherwise it is this thread already: strategies fork from their serving thread (and a
            # lookup in threading's table, cold in a child, costs pages copied from the parent).
            self._serving_thread = threading.current_thread()
        self._unix_inode = None  # the parent owns the socket file
        self.connections = role.connections if role.connections is not None else ActiveConnections()
        self._acceptor = role.acceptor
        if not role.keep_listener and self._listener is not None:
            # Keep reporting the address really listened on after closing our copy.
            self.requested_address = self._bound_address or self.address
            close_socket(self._listener)
            self._listener = None
        # The parent's stop callbacks stay behind: a child's stop ends its own idle connections.
        self.lifecycle.call_when_stopping(self._end_idle_connections)
        self._run = role.strategy.start(self) if role.strategy is not None else None
        if role.worker:
            self.worker_init()
        return self._run

    def rehearse(self, role: ChildRole | None = None) -> None:
        """Serve a few connections of the framework's own here, so processes forked later find the path warm.

        See :mod:`framework.rehearsal`.  The path after admission runs -- the
        blocking driver with the rehearsal's protocol, or :meth:`_run_handler`
        with its handler -- with a count of connections of its own, as a
        child has (:meth:`enter_child`): this server's hooks are not called
        (:meth:`handle_error` only for a rehearsal connection that failed,
        which none is expected to), and what it has counted is left as it was.
        With *role*, the role every child will enter, :meth:`enter_child` is
        rehearsed too (:meth:`_rehearse_entry`).
        """
        def serve_one(sock: socket.socket, peer_closes: bool) -> None:
            if self.handler is not None:
                # Not as the main thread: its handler's watch would start a thread for a signal caught meanwhile.
                self._run_handler(sock, _REHEARSAL_PEER, RehearsalHandler, False)
            else:
                self._serve_protocol(sock, _REHEARSAL_PEER, RehearsalProtocol(closes_first=not peer_closes), True)

        if self.lifecycle.stopping:
            return  # stopping before the first connection: nothing will be forked
        counted = self.connections
        self.connections = ActiveConnections()
        try:
            rehearse(serve_one)
        finally:
            self.connections = counted
        if role is not None:
            self._rehearse_entry(role)

    def _rehearse_entry(self, role: ChildRole) -> None:
        """Enter *role* on stand-ins of this server, as each child will, so that each child enters it warm.

        A stand-in is an instance of this class holding only what
        :meth:`enter_child` reads: a throwaway lifecycle
        (:meth:`Lifecycle.throwaway`), this server's serving thread and
        address, and a socket of its own for the listener a child closes.
        The framework's ``Server.enter_child`` runs, never an override (the
        server's own code); a role that starts a run or a worker is not
        rehearsed (a child per connection's is neither); an error ends the
        rehearsal quietly; nothing of this server is touched.
        """
        if role.strategy is not None or role.worker or role.keep_listener:
            return
        for _ in range(REHEARSAL_ROUNDS):
            try:
                listener, other = socket.socketpair()
            except OSError:
                return
            lifecycle = Lifecycle.throwaway()
            try:
                stand_in = object.__new__(type(self))
                stand_in.lifecycle = lifecycle
                stand_in._serving_thread = self._serving_thread
                stand_in._bound_address = self.address
                stand_in._listener = listener
                Server.enter_child(stand_in, role)
            except Exception:  # the rehearsal ends; the server is none the worse
                return
            finally:
                lifecycle.close()
                listener.close()  # closed already by enter_child (a second close does nothing)
                other.close()

    def construction(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The arguments this server was made with, as given: ``(args, kwargs)``.

        A strategy whose workers are other interpreters makes the same server
        again in each of them from these.  (A subclass that overrides
        ``__new__`` passes its arguments on to ``Server.__new__``.)
        """
        return self._construction

    def counts(self) -> tuple[int, int]:
        """``(connections served, connections active)`` of this process's run (a master: its pool's)."""
        if self._run is not None:
            return self._run.counts()
        return self.connections.served, len(self.connections)

    def serve_forever(self, ready: Callable[[], object] | None = None) -> None:
        """Serve until :meth:`shutdown`, SIGTERM or SIGINT; then stop gracefully.

        When called in the main thread (and ``handle_signals`` is true),
        SIGTERM and SIGINT start a graceful stop and SIGUSR1 logs a status
        line; the previous handlers are restored on return.  *ready* is called
        once those handlers are in place (announce readiness there: a signal
        sent before would find the default action); under systemd
        (``NOTIFY_SOCKET`` set) READY=1 is sent then too.  On return every
        child process has been reaped and every thread joined.
        """
        self.server_activate()
        ignore_sigpipe()
        run = self._run = self.strategy.start(self)  # may refuse this server (ServeError), before anything starts
        self._stopped.clear()
        self._serving_thread = threading.current_thread()
        if self.handle_signals:
            self.lifecycle.install_default_signals(self.status)
            self.lifecycle.install_signals(run.signal_actions())
        if ready is not None:
            ready()
        sd_notify("READY=1")  # after ready(): whoever hears it may signal at once
        try:
            if self.requested_address.is_datagram:
                run.serve_datagrams()
            else:
                run.serve()
        finally:
            self._release_watch()
            if threading.current_thread() is threading.main_thread():
                self.lifecycle.signals.restore()
            self._run = None
            self._serving_thread = None
            self.lifecycle.stopped()
            self._stopped.set()

    def serve_connected(self, sock: socket.socket, peer: str) -> None:
        """Serve one already connected socket in this thread, then return (inetd mode).

        Signals are handled as in :meth:`serve_forever`: SIGTERM ends the
        connection within the graceful timeout.
        """
        ignore_sigpipe()
        self._stopped.clear()
        self._serving_thread = threading.current_thread()
        if self.handle_signals:
            self.lifecycle.install_default_signals(self.status)
        try:
            self.serve_connection(sock, peer, main_thread=True)
        finally:
            self._release_watch()
            if threading.current_thread() is threading.main_thread():
                self.lifecycle.signals.restore()
            self._serving_thread = None
            self._stopped.set()

    def shutdown(self, wait: bool = True, graceful: bool = True) -> None:
        """Ask :meth:`serve_forever` to stop; safe from any thread or signal action.

        With *wait* (and when not called from the serving thread itself, which
        would deadlock: bpo-39797) block until :meth:`serve_forever` returned.
        """
        self.lifecycle.request_stop(graceful=graceful)
        serving = self._serving_thread
        if wait and serving is not None and serving is not threading.current_thread():
            self._stopped.wait()

    def server_close(self) -> None:
        """Close the listener and the lifecycle's descriptors; remove our Unix socket file."""
        if self._listener is not None:
            self._listener.close()
            self._listener = None
            if self.requested_address.is_unix:
                remove_unix_socket(self.requested_address.path, self._unix_inode)
        self.lifecycle.close()

    def worker_init(self) -> None:
        """Hook: runs once in each pre-forked worker process, after the fork and before it serves.

        Open per-process resources here.  An exception is a boot failure: the
        master stops with an error instead of forking replacements forever.
        """

    def status(self) -> str:
        """One line describing the server now: for SIGUSR1 and logs."""
        served, active = self.counts()
        strategy = self._run.describe() if self._run is not None else self.strategy.describe()
        return (
            f"pid={os.getpid()} server={self.name or type(self).__name__} strategy={strategy}"
            f" address={self.address} served={served} active={active}"
            f" state={self.lifecycle.state.value}"
        )

    def __enter__(self) -> Server:
        self.server_activate()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.server_close()
