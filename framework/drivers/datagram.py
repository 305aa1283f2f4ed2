"""The loops that serve a datagram (UDP) socket: one thread, or several on the same socket.

:func:`serve_datagram_socket` is the loop every strategy uses: the
iterative strategy runs it in the serving thread, the threading and
prethreaded strategies in N threads on the same socket
(:func:`serve_datagrams_in_threads`), pre-forked workers in each worker
process.  What it needs of the server is a :class:`DatagramService`.
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
from framework.signals import Latch, start_thread_without_signals

log = logging.getLogger("forkthread")

#: Bytes asked of one recvmsg(): more than any UDP payload (65,535 - 8 header bytes).
DATAGRAM_RECV_SIZE = 65536

#: Threads a threaded strategy runs on a datagram socket unless told otherwise.
DATAGRAM_THREADS = 8

#: How long an answer waits for room in a full send buffer before it is dropped.
SEND_WAIT_MS = 1000

_READ = select.POLLIN | select.POLLPRI


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
    protocol = service.new_protocol()
    protocol.connection_made(SocketDatagramTransport(sock))
    poller = select.poll()
    poller.register(sock.fileno(), _READ)
    poller.register(wakeup_fd, select.POLLIN)
    while not lifecycle.stopping:
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
        for worker in workers:
            start_thread_without_signals(worker.start)
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

