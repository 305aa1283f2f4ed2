"""The loops that serve a datagram (UDP) socket: one thread, or several on the same socket.

:func:`serve_datagram_socket` is the loop every strategy uses: the
iterative strategy runs it in the serving thread, the threading and
prethreaded strategies in N threads on the same socket
(:func:`serve_datagrams_in_threads`), pre-forked workers in each worker
process.  What it needs of the server is a :class:`DatagramService`.

Two rules keep one datagram from costing more than one answer (issue 25
item 1; inetd's internal services and DNS servers keep the same):

* **No answer to a reflector.**  A datagram whose source port is 0, a
  service that answers anything (echo 7, daytime 13, chargen 19, time 37)
  or this socket's own port is dropped, counted and logged (throttled):
  its "sender" is our own socket (a forged source address) or another
  server that would answer our answer, and the two would bounce one
  datagram between them for ever at full speed.
* **Signals whatever the load.**  The main thread's loop dispatches a
  recorded signal between two datagrams, not only when ``recvmsg`` finds
  nothing: a socket that never empties must not make SIGTERM wait.
"""

from __future__ import annotations

import dataclasses
import logging
import select
import socket
import threading
from collections.abc import Callable
from typing import Any

from framework.address import format_peer
from framework.datagram import DatagramProtocol, DatagramTransport
from framework.lifecycle import ActiveConnections, Lifecycle
from framework.logthrottle import LogThrottle
from framework.signals import Latch, start_thread_without_signals

log = logging.getLogger("forkthread")

#: Bytes asked of one recvmsg(): more than any UDP payload (65,535 - 8 header bytes).
DATAGRAM_RECV_SIZE = 65536

#: Threads a threaded strategy runs on a datagram socket unless told otherwise.
DATAGRAM_THREADS = 8

#: How long an answer waits for room in a full send buffer before it is dropped.
SEND_WAIT_MS = 1000

_READ = select.POLLIN | select.POLLPRI

#: Source ports never answered: 0 is no port (it cannot be a sender's), and echo (7), daytime (13),
#: chargen (19) and time (37) answer any datagram, so answering them starts a loop between two servers.
REFLECTOR_PORTS = frozenset({0, 7, 13, 19, 37})


class ReflectionGuard:
    """Refuses datagrams from reflector source ports and from this socket's own port; counts and logs them.

    One guard per loop (thread or process).  The own port stands for the
    socket's own address on any local address too: a datagram forged with
    our address as its source, or sent by a sibling server on the same port
    elsewhere, would make us answer ourselves.
    """

    def __init__(self, sock: socket.socket) -> None:
        own_port = sock.getsockname()[1] if sock.family in (socket.AF_INET, socket.AF_INET6) else None
        self._family = sock.family
        self._ports = REFLECTOR_PORTS | ({own_port} if own_port is not None else set())
        self._own_port = own_port
        self._throttle = LogThrottle()
        #: Datagrams refused so far by this guard.
        self.refused = 0

    def allows(self, addr: Any) -> bool:
        """True when a datagram from *addr* may be answered; otherwise count it and warn (throttled)."""
        if not isinstance(addr, tuple) or addr[1] not in self._ports:
            return True
        self.refused += 1
        why = "our own port" if addr[1] == self._own_port else "a port that answers anything"
        self._throttle.warning(f"datagram from {format_peer(self._family, addr)} refused: its source is {why},"
                               f" and answering it could loop ({self.refused} refused in all)")
        return False


@dataclasses.dataclass(frozen=True)
class DatagramService:
    """What a datagram loop needs of its server: run state, protocols, a counter, an error handler."""

    lifecycle: Lifecycle
    new_protocol: Callable[[], DatagramProtocol]
    counter: ActiveConnections
    handle_error: Callable[[BaseException, str], None]


class SocketDatagramTransport(DatagramTransport):
    """A :class:`DatagramTransport` over a real (non-blocking) datagram socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def sendto(self, data: bytes | bytearray | memoryview, addr: Any) -> None:
        """Send one datagram; when the socket buffer is full, wait for room (briefly)."""
        try:
            while True:
                try:
                    self.sock.sendto(data, addr)
                    return
                except BlockingIOError:
                    # The send buffer is full: wait for room rather than drop an answer at once.
                    poller = select.poll()
                    poller.register(self.sock.fileno(), select.POLLOUT)
                    if not poller.poll(SEND_WAIT_MS):
                        raise
        except OSError as exc:
            log.warning("datagram to %s dropped: %s", format_peer(self.sock.family, addr), exc.strerror or exc)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """``sockname`` or ``socket``."""
        if name == "sockname":
            return self.sock.getsockname()
        if name == "socket":
            return self.sock
        return default


def serve_datagram_socket(sock: socket.socket, service: DatagramService, *, wakeup_fd: int, main_thread: bool) -> None:
    """Answer datagrams on *sock* with a fresh protocol from *service* until a stop is requested.

    *wakeup_fd* is polled beside the socket.  In the main thread it is the
    lifecycle's wakeup pipe (signals are dispatched from here); in other
    threads it is a descriptor that becomes readable, and stays readable,
    when they must stop.  Several threads or processes may run this loop on
    the same socket: the kernel hands each datagram to one of them, and the
    others' ``recvmsg`` finds nothing and goes back to waiting.
    """
    lifecycle = service.lifecycle
    guard = ReflectionGuard(sock)
    protocol = service.new_protocol()
    protocol.connection_made(SocketDatagramTransport(sock))
    poller = select.poll()
    poller.register(sock.fileno(), _READ)
    poller.register(wakeup_fd, select.POLLIN)
    while not lifecycle.stopping:
        if main_thread and lifecycle.signals.pending():
            lifecycle.dispatch()  # a socket that never empties must not keep a signal waiting
            continue
        try:
            data, _, flags, addr = sock.recvmsg(DATAGRAM_RECV_SIZE)
        except BlockingIOError:
            for fd, _ in poller.poll():
                if fd == wakeup_fd and main_thread:
                    lifecycle.dispatch()
                elif fd == wakeup_fd:
                    return
            continue
        except OSError as exc:
            # A pending ICMP error of an earlier send surfaces here: not our socket's fault.
            log.debug("datagram socket: %s", exc)
            continue
        if not guard.allows(addr):
            continue
        peer = format_peer(sock.family, addr)
        if flags & socket.MSG_TRUNC:
            log.warning("datagram from %s larger than %d bytes: dropped", peer, DATAGRAM_RECV_SIZE)
            continue
        service.counter.note_served()
        try:
            protocol.datagram_received(data, addr)
        except Exception as exc:  # a fault in the protocol: this datagram only
            service.handle_error(exc, peer)


def serve_datagrams_in_threads(sock: socket.socket, service: DatagramService, threads: int) -> None:
    """Answer datagrams on *sock* in *threads* threads until a stop is requested.

    Every thread runs :func:`serve_datagram_socket` on the same socket with
    its own protocol instance; the calling (main) thread waits on the
    lifecycle's wakeup pipe, dispatches signals, and on a stop tells the
    threads with a :class:`~framework.signals.Latch` and joins them.  An answer in progress
    is finished first: a datagram is never half-handled.
    """
    lifecycle = service.lifecycle
    stop = Latch()
    workers = [
        threading.Thread(target=serve_datagram_socket, args=(sock, service),
                         kwargs={"wakeup_fd": stop.fileno(), "main_thread": False}, name=f"datagrams-{index}")
        for index in range(threads)
    ]
    try:
        for started, worker in enumerate(workers):
            try:
                start_thread_without_signals(worker.start)
            except RuntimeError as exc:  # "can't start new thread": a ulimit or memory; once, not per thread
                if not started:
                    raise
                log.warning("started %d of %d datagram threads: %s", started, threads, exc)
                break
        poller = select.poll()
        poller.register(lifecycle.wakeup_fd(), select.POLLIN)
        while not lifecycle.stopping:
            if poller.poll():
                lifecycle.dispatch()
    finally:
        stop.set()
        for worker in workers:
            if worker.ident is not None:
                worker.join()
        stop.close()

