"""Echo (RFC 862): send back every byte received; finish and close when the client half-closes.

Over UDP (``--bind udp:HOST:PORT``) each datagram goes back to its sender unchanged.
"""

from __future__ import annotations

from typing import Any

from framework import Protocol, Server
from framework.datagram import DatagramProtocol


class EchoProtocol(Protocol):
    """Writes back what arrives, byte for byte.

    When the client half-closes, everything already queued is sent and the
    connection closes (``eof_received`` returns None).  Writes go out in the
    order the data came in, so any chunking yields the same byte stream.
    """

    def data_received(self, data: bytes) -> None:
        """Echo *data*."""
        self.transport.write(data)


class EchoDatagramProtocol(DatagramProtocol):
    """RFC 862 over UDP: send each datagram back to its sender, the same bytes, as one datagram."""

    def datagram_received(self, data: bytes, addr: Any) -> None:
        """Echo *data* (an empty datagram gets an empty answer)."""
        self.transport.sendto(data, addr)


class EchoServer(Server):
    """RFC 862 echo server."""

    name = "echo"
    description = "RFC 862: send back everything received"
    default_port = 8007
    #: An echo session lasts as long as the client wants: a thread each, many at once.
    default_strategy = "threading"
    protocol = EchoProtocol
    datagram_protocol = EchoDatagramProtocol
