"""Daytime (RFC 867): on connect, send the date and time as one line, then close."""

from __future__ import annotations

import argparse
import time
from typing import Any

from framework import Protocol, Server, Transport
from framework.datagram import DatagramProtocol


def daytime_line(utc: bool = False, now: float | None = None) -> bytes:
    """The RFC 867 answer: a ``time.ctime()``-style line ending in CRLF.

    RFC 867 leaves the format free; ``Sat Nov 21 05:27:33 2026`` is what
    Stevens' examples print, in local time unless *utc*.
    """
    moment = time.gmtime(now) if utc else time.localtime(now)
    return time.asctime(moment).encode("ascii") + b"\r\n"


class DaytimeProtocol(Protocol):
    """Writes the time and closes; whatever the client sends is ignored (RFC 867)."""

    def __init__(self, utc: bool = False) -> None:
        self.utc = utc

    def connection_made(self, transport: Transport) -> None:
        """Answer at once and close."""
        super().connection_made(transport)
        transport.write(daytime_line(self.utc))
        transport.close()


class DaytimeDatagramProtocol(DatagramProtocol):
    """RFC 867 over UDP: any datagram, whatever it holds, is answered with the time line."""

    def __init__(self, utc: bool = False) -> None:
        self.utc = utc

    def datagram_received(self, data: bytes, addr: Any) -> None:
        """Answer the sender with the time."""
        self.transport.sendto(daytime_line(self.utc), addr)


class DaytimeServer(Server):
    """RFC 867 daytime server; ``utc=True`` answers in UTC instead of local time."""

    name = "daytime"
    description = "RFC 867: send the date and time as one line, then close"
    default_port = 8013

    def __init__(self, *args: object, utc: bool = False, **kwargs: object) -> None:
        self.utc = utc
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def protocol_factory(self) -> DaytimeProtocol:
        """A protocol that answers in local time or UTC, as configured."""
        return DaytimeProtocol(self.utc)

    def datagram_protocol_factory(self) -> DaytimeDatagramProtocol:
        """The UDP flavour (``--bind udp:HOST:PORT``), in local time or UTC as configured."""
        return DaytimeDatagramProtocol(self.utc)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """``--utc``."""
        parser.add_argument("--utc", action="store_true", help="answer in UTC instead of local time")

    @classmethod
    def options_from_arguments(cls, args: argparse.Namespace) -> dict[str, object]:
        """Pass ``--utc`` on."""
        return {"utc": args.utc}
