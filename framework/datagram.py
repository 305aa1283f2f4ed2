"""Datagram (UDP) services: the sans-I/O contract and the loop that serves one socket.

A stream protocol lives for one connection; a datagram protocol lives for
the socket and is told about each datagram with the sender's address, and
answers through :meth:`DatagramTransport.sendto`.  The shape follows
:class:`asyncio.DatagramProtocol`::

    class EchoDatagrams(DatagramProtocol):
        def datagram_received(self, data, addr):
            self.transport.sendto(data, addr)

Datagram boundaries are kept: one ``recvmsg`` is one datagram and one
``sendto`` one answer.  The receive buffer (64 KiB) is larger than the
largest UDP payload (65,507 bytes over IPv4, 65,527 over IPv6), so nothing
is cut; a datagram the kernel still reports as truncated (``MSG_TRUNC``)
is logged and dropped rather than answered with a part of it.

:func:`serve_datagram_socket` is the loop every strategy uses: the
iterative strategy runs it in the serving thread, the threading strategy in
N threads on the same socket, pre-forked workers in each worker process.
"""

from __future__ import annotations

import abc
import logging
import os
import select
import signal
import socket
import threading
from typing import TYPE_CHECKING, Any

from framework.address import format_peer
from framework.signals import block_signals_in_thread

if TYPE_CHECKING:
    from framework.server import Server

log = logging.getLogger("forkthread")

#: Bytes asked of one recvmsg(): more than any UDP payload (65,535 - 8 header bytes).
DATAGRAM_RECV_SIZE = 65536

#: Threads a threaded strategy runs on a datagram socket unless told otherwise.
DATAGRAM_THREADS = 8

#: How long an answer waits for room in a full send buffer before it is dropped.
SEND_WAIT_MS = 1000

_READ = select.POLLIN | select.POLLPRI


class DatagramTransport(abc.ABC):
    """The datagram socket as a protocol sees it: a place to send answers to addresses."""

    @abc.abstractmethod
    def sendto(self, data: bytes | bytearray | memoryview, addr: Any) -> None:
        """Send *data* as one datagram to *addr* (the address ``datagram_received`` gave).

        A datagram the network refuses (too large, unreachable) is logged and
        dropped: UDP promises no delivery, and one bad peer must not stop the service.
        """

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """Return optional information, asyncio style (``"sockname"``)."""
        return default


class DatagramProtocol:
    """What a datagram server says.  One instance serves a socket (per thread or process).

    Called in this order: :meth:`connection_made` once with the transport,
    then :meth:`datagram_received` for each datagram.  Under the threading
    strategy each thread has its own protocol instance, so a protocol needs
    no locks for its own state.
    """

    transport: DatagramTransport

    def connection_made(self, transport: DatagramTransport) -> None:
        """Called once with the transport before any datagram."""
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        """Called with each datagram and the sender's address."""


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


def serve_datagram_socket(server: Server, sock: socket.socket, *, wakeup_fd: int, main_thread: bool) -> None:
    """Answer datagrams on *sock* with a fresh protocol from *server* until a stop is requested.

    *wakeup_fd* is polled beside the socket.  In the main thread it is the
    lifecycle's wakeup pipe (signals are dispatched from here); in other
    threads it is a descriptor that becomes readable, and stays readable,
    when they must stop.  Several threads or processes may run this loop on
    the same socket: the kernel hands each datagram to one of them, and the
    others' ``recvmsg`` finds nothing and goes back to waiting.
    """
    lifecycle = server.lifecycle
    protocol = server.datagram_protocol_factory()
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
        server.connections.note_served()
        try:
            protocol.datagram_received(data, addr)
        except Exception as exc:  # a fault in the protocol: this datagram only
            server.handle_error(exc, peer)


class StopSignal:
    """A pipe that becomes readable, and stays so, when helper threads must stop.

    The lifecycle's wakeup pipe is drained by the main thread, so other
    threads cannot rely on seeing it; this one is never drained.
    """

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def set(self) -> None:
        """Make the read end readable for good."""
        try:
            os.write(self.write_fd, b"\0")
        except BlockingIOError:
            pass

    def close(self) -> None:
        """Close both ends."""
        os.close(self.read_fd)
        os.close(self.write_fd)


def serve_datagrams_in_threads(server: Server, threads: int) -> None:
    """Answer datagrams on *server*'s socket in *threads* threads until a stop is requested.

    Every thread runs :func:`serve_datagram_socket` on the same socket with
    its own protocol instance; the calling (main) thread waits on the
    lifecycle's wakeup pipe, dispatches signals, and on a stop tells the
    threads with a :class:`StopSignal` and joins them.  An answer in progress
    is finished first: a datagram is never half-handled.
    """
    assert server.listener is not None
    lifecycle = server.lifecycle
    stop = StopSignal()
    workers = [
        threading.Thread(target=_datagram_thread, args=(server, server.listener, stop.read_fd),
                         name=f"datagrams-{index}")
        for index in range(threads)
    ]
    try:
        for worker in workers:
            worker.start()
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


def _datagram_thread(server: Server, sock: socket.socket, stop_fd: int) -> None:
    block_signals_in_thread({signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGCHLD, signal.SIGHUP})
    serve_datagram_socket(server, sock, wakeup_fd=stop_fd, main_thread=False)
