"""Echo (RFC 862): send back every byte received; finish and close when the client half-closes."""

from __future__ import annotations

from framework import Protocol, Server


class EchoProtocol(Protocol):
    """Writes back what arrives, byte for byte.

    When the client half-closes, everything already queued is sent and the
    connection closes (``eof_received`` returns None).  Writes go out in the
    order the data came in, so any chunking yields the same byte stream.
    """

    def data_received(self, data: bytes) -> None:
        """Echo *data*."""
        self.transport.write(data)


class EchoServer(Server):
    """RFC 862 echo server."""

    name = "echo"
    description = "RFC 862: send back everything received"
    default_port = 8007
    protocol = EchoProtocol
