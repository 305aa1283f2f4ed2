"""Datagram (UDP) services: the sans-I/O contract, beside :mod:`framework.protocol` for streams.

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

The loops that serve a datagram socket are in :mod:`framework.drivers.datagram`.
"""

from __future__ import annotations

import abc
from typing import Any


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
