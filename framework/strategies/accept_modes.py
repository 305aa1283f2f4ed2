"""How pre-forked workers get their connections: Stevens' pre-forked variants (UNP §30.6-30.9).

Each mode prepares shared state in the master before the first fork and
gives every worker an :class:`~framework.accepting.Acceptor` (the worker
enters its role with it: :class:`~framework.strategies.base.ChildRole`), so the worker's inner
strategy runs unchanged whatever the mode:

``shared``
    Every worker accepts on the inherited listener (§30.6, "no locking").
    Workers of a kind that can (``iterative``, ``threads``) wait in
    ``accept`` itself, on a listener the master made blocking with a receive
    timeout: the kernel wakes one waiter per connection and hands it the
    connection.  An event-loop worker (``poll``) watches the non-blocking
    listener in its own selector, which wakes every idle worker; one wins,
    the others peek and find nothing, which the acceptor treats as
    "nothing now".
``lock``
    As ``shared``, but ``accept`` is serialized by a POSIX record lock on a
    file the master opened (§30.7, "file locking").  ``fcntl.lockf`` locks
    belong to the process, so each worker really competes even though the
    descriptor is inherited (``flock`` on an inherited descriptor would be one
    lock shared by every fork); threads of one worker take turns on an
    in-process lock first, because a POSIX lock does not exclude threads of
    the process that holds it.
``reuseport``
    Each worker accepts on its own ``SO_REUSEPORT`` listener on the master's
    port and the kernel spreads connections over them by a hash of the
    4-tuple.  Listeners belong to *lanes* (0 .. workers-1), not to processes:
    the master creates a lane's listener before forking the lane's first
    worker and keeps it while the lane exists, so a worker that dies or is
    replaced (HUP, max-requests) leaves its backlog to its successor instead
    of resetting it (Linux resets the backlog of a closed reuseport listener
    unless ``net.ipv4.tcp_migrate_req`` is on).  The master never accepts on
    them, and a lane never lacks a worker for longer than a respawn; lane 0
    is the listener the server bound first.  As in ``shared`` mode, workers
    of a kind that can (``iterative``, ``threads``) wait in ``accept`` itself,
    on their lane's listener.
``passfd``
    The master accepts and passes each descriptor to the least-loaded worker
    over that worker's ``AF_UNIX`` channel with ``SCM_RIGHTS`` (§30.9), and
    only to a worker with room for it (fewer connections in flight than its
    inner strategy's :meth:`~framework.strategies.base.Strategy.capacity`).
    As in Stevens' version, the master counts what it passed and the worker
    answers :data:`PASSED_DONE` on the channel when a passed connection is
    closed; while no worker has room the master does not watch the listener,
    so further clients wait in the kernel's backlog, not in a busy worker's
    channel.
"""

from __future__ import annotations

import array
import contextlib
import fcntl
import logging
import socket
import threading
from collections.abc import Callable
from typing import IO, ClassVar

from framework.accepting import Acceptor, stop_listening, wait_in_accept
from framework.address import Address, bind_socket
from framework.strategies.base import Host, Strategy

log = logging.getLogger("forkthread")

#: Longest peer text the master sends beside a passed descriptor.
PEER_TEXT_MAX = 512
#: passfd: what a worker sends its master when it has closed a connection the master passed.
PASSED_DONE = b"D"


def _workers_can_wait_in_accept(listener: socket.socket, inner: Strategy) -> bool:
    """True when workers running *inner* can wait in ``accept`` itself on *listener* (a stream one)."""
    return inner.waits_in_accept() and listener.type == socket.SOCK_STREAM


def _stop_waiting_in_accept(listener: socket.socket) -> None:
    """Make a listener :func:`~framework.accepting.wait_in_accept` prepared non-blocking again, unless closed."""
    if listener.fileno() >= 0:
        wait_in_accept(listener, None)


class AcceptModeError(ValueError):
    """An accept mode cannot work with this server (a clear, one-line reason)."""


class AcceptMode:
    """One way for pre-forked workers to receive connections."""

    #: The ``--accept`` name.
    name: ClassVar[str] = ""
    #: True when the master itself accepts and hands connections out.
    master_accepts: ClassVar[bool] = False
    #: True when a worker holds connections nobody else can take (its own
    #: listener's backlog, its channel's queue): it serves them before exiting.
    worker_drains: ClassVar[bool] = False

    def prepare(self, host: Host, inner: Strategy) -> None:
        """In the master, once, before the first worker is forked; *inner* is what each worker runs."""

    def before_spawn(self, host: Host, lane: int) -> None:
        """In the master, before forking a worker for *lane*."""

    def foreign_fds(self, lane: int) -> list[int]:
        """Descriptors a worker of *lane* inherits but must close (other lanes' resources)."""
        return []

    def worker_acceptor(self, host: Host, lane: int, channel: socket.socket,
                        master_gone: Callable[[], None]) -> Acceptor:
        """In a freshly forked worker of *lane*: the acceptor its inner strategy will use."""
        raise NotImplementedError

    def keeps_listener(self, lane: int) -> bool:
        """True when a worker of *lane* accepts on the server's own listener (so keeps its copy)."""
        return True

    def lane_closed(self, lane: int) -> None:
        """In the master: no worker is left on *lane* and the pool shrank below it."""

    def close(self) -> None:
        """In the master, at the end: release what the mode made."""


class SharedAccept(AcceptMode):
    """Every worker accepts on the inherited listener (no lock)."""

    name = "shared"

    def __init__(self) -> None:
        self._listener: socket.socket | None = None  # made to wait in accept by prepare(), until close()

    def prepare(self, host: Host, inner: Strategy) -> None:
        """For a worker kind that can, make the shared listener one to wait in ``accept`` on.

        Workers then wait in ``accept`` itself, as Stevens' pre-forked server
        does (§30.6): the kernel wakes one waiter per connection and hands it
        the connection in the same call.  Waiting in an ``epoll`` each instead
        (``EPOLLEXCLUSIVE``) cost about 3 µs more per connection with two
        workers on one CPU (docs/lab.md, the tenth round).  A worker cannot
        shut the shared listener down to end its own waits, so each wait is
        bounded (:data:`~framework.accepting.ACCEPT_WAIT`).
        """
        if _workers_can_wait_in_accept(host.listener, inner):
            wait_in_accept(host.listener)
            self._listener = host.listener

    def worker_acceptor(self, host: Host, lane: int, channel: socket.socket,
                        master_gone: Callable[[], None]) -> Acceptor:
        """The plain acceptor over the inherited listener, shared with the other workers.

        Waited on in ``accept`` itself when :meth:`prepare` made it so, else
        exclusively, in an ``epoll``.
        """
        if self._listener is not None:
            return Acceptor(host.listener, waits_in_accept=True)
        return Acceptor(host.listener, exclusive=True)

    def close(self) -> None:
        """Make the listener non-blocking again, without a receive timeout."""
        if self._listener is not None:
            _stop_waiting_in_accept(self._listener)
            self._listener = None


class LockedAcceptor(Acceptor):
    """An :class:`Acceptor` that holds a cross-process lock around each ``accept``.

    The lock is held for one non-blocking ``accept`` only, so a worker never
    sleeps in it for long and its loop stays responsive to signals.
    """

    def __init__(self, listener: socket.socket, lock_fd: int) -> None:
        super().__init__(listener, exclusive=True)
        self._lock_fd = lock_fd
        self._thread_lock = threading.Lock()

    def accept(self) -> tuple[socket.socket, str] | None:
        """Accept one connection while holding the lock (None when there is none)."""
        with self._thread_lock:
            fcntl.lockf(self._lock_fd, fcntl.LOCK_EX)
            try:
                return super().accept()
            finally:
                fcntl.lockf(self._lock_fd, fcntl.LOCK_UN)


class LockAccept(AcceptMode):
    """Accept serialized by a POSIX record lock on an unlinked temporary file."""

    name = "lock"

    def __init__(self) -> None:
        self._lock_file: IO[bytes] | None = None

    def prepare(self, host: Host, inner: Strategy) -> None:
        """Create the lock file (already unlinked: nothing to clean up on disk)."""
        # Imported here: tempfile imports random, whose at-fork reseed would then
        # run in every child a forking server makes.
        import tempfile

        # Kept open for the whole serve, closed by close(): no context manager fits.
        self._lock_file = tempfile.TemporaryFile(prefix="forkthread-accept-lock-")  # noqa: SIM115

    def worker_acceptor(self, host: Host, lane: int, channel: socket.socket,
                        master_gone: Callable[[], None]) -> Acceptor:
        """An acceptor on the inherited listener that takes the lock around accept."""
        assert self._lock_file is not None
        return LockedAcceptor(host.listener, self._lock_file.fileno())

    def close(self) -> None:
        """Close the lock file."""
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None


def reuseport_listener(address: Address, backlog: int) -> socket.socket:
    """A non-blocking listener with SO_REUSEPORT on *address* (joining its reuseport group)."""
    return bind_socket(address, backlog=backlog, reuse_port=True)


class ReusePortAccept(AcceptMode):
    """One SO_REUSEPORT listener per lane; the master creates and holds them, workers accept."""

    name = "reuseport"
    worker_drains = True

    def __init__(self) -> None:
        self._lanes: dict[int, socket.socket] = {}
        #: Every lane's listener is made one to wait in ``accept`` on (see :meth:`SharedAccept.prepare`).
        self._waits_in_accept = False

    def prepare(self, host: Host, inner: Strategy) -> None:
        """Make the server's own listener lane 0 of a reuseport group.

        For a worker kind that can, every lane's listener is made one to wait
        in ``accept`` on, as ``shared`` mode does with its one listener: a
        lane's workers then wait in ``accept`` itself.  The master's stop shuts
        every lane down, which ends those waits at once; a worker's own stop
        is seen when its wait times out.
        """
        listener = host.listener
        if listener.family not in (socket.AF_INET, socket.AF_INET6):
            raise AcceptModeError(f"--accept reuseport needs a TCP address, not {host.address}")
        # Linux lets a listening socket join a reuseport group after the fact:
        # the flag is checked when the next socket binds.
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        self._waits_in_accept = _workers_can_wait_in_accept(listener, inner)
        if self._waits_in_accept:
            wait_in_accept(listener)
        self._lanes[0] = listener
        # Every lane's listener takes new connections until it stops listening, not only lane 0.
        host.lifecycle.call_when_stopping(self._stop_lanes)

    def _stop_lanes(self) -> None:
        for listener in self._lanes.values():
            stop_listening(listener)

    def before_spawn(self, host: Host, lane: int) -> None:
        """Create the lane's listener the first time the lane gets a worker."""
        if lane not in self._lanes:
            listener = reuseport_listener(host.address, host.backlog)
            if self._waits_in_accept:
                wait_in_accept(listener)
            self._lanes[lane] = listener

    def foreign_fds(self, lane: int) -> list[int]:
        """Every other lane's listener: a worker holding one would keep a closed lane alive.

        Lane 0 is the server's own listener, which a worker of another lane
        closes when it enters its role (:meth:`keeps_listener`).
        """
        return [sock.fileno() for number, sock in self._lanes.items() if number not in (0, lane)]

    def worker_acceptor(self, host: Host, lane: int, channel: socket.socket,
                        master_gone: Callable[[], None]) -> Acceptor:
        """An acceptor on the lane's listener, waited on in ``accept`` itself when :meth:`prepare` made it so."""
        return Acceptor(self._lanes[lane], waits_in_accept=self._waits_in_accept)

    def keeps_listener(self, lane: int) -> bool:
        """Only lane 0's workers accept on the server's own listener."""
        return lane == 0

    def lane_closed(self, lane: int) -> None:
        """Close a lane the pool no longer has (SIGTTOU); lane 0 is the server's and stays."""
        if lane != 0 and lane in self._lanes:
            self._lanes.pop(lane).close()

    def close(self) -> None:
        """Close every lane's listener but the server's own, which is made non-blocking again."""
        for lane in list(self._lanes):
            self.lane_closed(lane)
        own = self._lanes.pop(0, None)
        if own is not None and self._waits_in_accept:
            _stop_waiting_in_accept(own)


class PassedConnection(socket.socket):
    """A connection the master passed: closing it tells the master, once, that it is done.

    Every way a connection ends in a worker (served to its end, refused at
    admission, dropped by an event loop) closes its socket, so the close is
    the one place that sees them all.
    """

    __slots__ = ("_done",)

    def __init__(self, fileno: int, done: Callable[[], None]) -> None:
        super().__init__(fileno=fileno)
        self._done: Callable[[], None] | None = done

    def close(self) -> None:
        """Close the socket, then tell the master (the descriptor is already free by then)."""
        super().close()
        done, self._done = self._done, None
        if done is not None:
            done()


class PassedFdAcceptor(Acceptor):
    """An :class:`Acceptor` whose connections arrive as descriptors on the master's channel.

    The channel is an ``AF_UNIX`` ``SOCK_SEQPACKET`` socket, so a message (the
    peer's address as text, plus one descriptor) is received whole even when
    several threads of the worker read it.  End-of-file means the master is
    gone: *master_gone* is called, once.  Each connection is a
    :class:`PassedConnection`, which sends :data:`PASSED_DONE` back when it is
    closed; so does a connection lost on the way.
    """

    def __init__(self, channel: socket.socket, master_gone: Callable[[], None]) -> None:
        super().__init__(channel)
        self._channel = channel
        self._master_gone: Callable[[], None] | None = master_gone

    def _done(self) -> None:
        # A blocking send: the master reads its channels whenever they are readable.
        # It fails only when the master is gone, and then nobody is counting.
        with contextlib.suppress(OSError):
            self._channel.send(PASSED_DONE)

    def accept(self) -> tuple[socket.socket, str] | None:
        """Receive one passed connection, or None when none is waiting."""
        try:
            data, fds, flags = receive_fd(self._channel)
        except (BlockingIOError, InterruptedError):
            return None
        if not fds:
            if not data and self._master_gone is not None:
                self._master_gone()
                self._master_gone = None
            elif flags & socket.MSG_CTRUNC:
                # The kernel could not install the descriptor (we are at our
                # descriptor limit) and closed it: that client is lost.
                log.warning("passfd: a passed connection was dropped: out of descriptors")
                self._done()
            return None
        return PassedConnection(fds[0], self._done), data.decode(errors="replace")


class PassFdAccept(AcceptMode):
    """The master accepts; workers receive descriptors over their channel (SCM_RIGHTS)."""

    name = "passfd"
    master_accepts = True
    worker_drains = True

    def worker_acceptor(self, host: Host, lane: int, channel: socket.socket,
                        master_gone: Callable[[], None]) -> Acceptor:
        """An acceptor reading passed descriptors from the worker's channel."""
        return PassedFdAcceptor(channel, master_gone)

    def keeps_listener(self, lane: int) -> bool:
        """No: only the master accepts."""
        return False


#: ``--accept`` name -> mode class.
ACCEPT_MODES: dict[str, type[AcceptMode]] = {
    mode.name: mode for mode in (SharedAccept, LockAccept, ReusePortAccept, PassFdAccept)
}


def pass_connection(channel: socket.socket, sock: socket.socket, peer: str) -> bool:
    """Send *sock* with its *peer* text to a worker; False when the channel is full (try another)."""
    text = peer.encode(errors="replace")[:PEER_TEXT_MAX]
    # Not socket.send_fds/recv_fds: before Python 3.12 they drop their flags argument.
    ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [sock.fileno()]))]
    try:
        channel.sendmsg([text], ancillary, socket.MSG_DONTWAIT)
    except (BlockingIOError, InterruptedError):
        return False
    return True


def receive_fd(channel: socket.socket) -> tuple[bytes, list[int], int]:
    """Receive one message without blocking: ``(peer text, descriptors, msg flags)``.

    The descriptors are close-on-exec (``MSG_CMSG_CLOEXEC``).  Raises
    :class:`BlockingIOError` when no message is waiting.
    """
    fds = array.array("i")
    data, ancillary, flags, _ = channel.recvmsg(
        PEER_TEXT_MAX, socket.CMSG_LEN(fds.itemsize), socket.MSG_DONTWAIT | socket.MSG_CMSG_CLOEXEC)
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
    return data, list(fds), flags
