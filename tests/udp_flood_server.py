"""A datagram server that keeps its own socket full: each datagram it gets makes two more.

``python -m framework serve tests.udp_flood_server:SelfFeedingServer --bind
udp:127.0.0.1:0``.  The two datagrams go from a socket of its own (an
ordinary ephemeral source port, so the reflection guard lets them in) to
the server's address: once fed, ``recvmsg`` never finds the socket empty,
which is the load under which a loop that looks at signals only when idle
ignores SIGTERM (issue 25 item 1).
"""

from __future__ import annotations

import socket
from typing import Any

from framework import Server
from framework.datagram import DatagramProtocol, DatagramTransport


class SelfFeeding(DatagramProtocol):
    """Answers every datagram with two datagrams to the server's own socket."""

    def connection_made(self, transport: DatagramTransport) -> None:
        """Open the socket the extra datagrams leave from."""
        super().connection_made(transport)
        self.own = transport.get_extra_info("sockname")
        sock = transport.get_extra_info("socket")
        self.feeder = socket.socket(sock.family, socket.SOCK_DGRAM)
        self.feeder.setblocking(False)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        """Send two more (a full buffer drops some: the socket stays full anyway)."""
        for _ in range(2):
            try:
                self.feeder.sendto(data, self.own)
            except OSError:
                pass


class SelfFeedingServer(Server):
    """UDP only: :class:`SelfFeeding` on the datagram socket."""

    name = "self-feeding"
    description = "each datagram makes two more to itself (a test of signals under load)"
    datagram_protocol = SelfFeeding
