"""An example project's server: every line of whole numbers is answered with their sum.

``1 2 3`` gives ``6``; a line with anything else gives ``error: ...`` (a
client's mistake is an answer, never a traceback); a line longer than
:data:`MAX_LINE` bytes ends the connection.  Run it under any strategy::

    python adder.py --bind 127.0.0.1:0 --strategy forking
    forkthread serve adder:AdderServer --strategy poll
"""

from __future__ import annotations

import sys

from framework import Protocol, Server, Transport
from framework.cli import serve_main

#: The longest line the server reads (a client that sends more is cut off, not buffered forever).
MAX_LINE = 1024


def answer(line: bytes) -> bytes:
    """The reply to one line (without its newline)."""
    try:
        total = sum(int(word) for word in line.split())
    except ValueError:
        return b"error: whole numbers only\n"
    return b"%d\n" % total


class AdderProtocol(Protocol):
    """Buffers bytes until a newline, answers each complete line."""

    def connection_made(self, transport: Transport) -> None:
        super().connection_made(transport)
        self.pending = bytearray()

    def data_received(self, data: bytes) -> None:
        self.pending += data
        while (end := self.pending.find(b"\n")) >= 0:
            line = bytes(self.pending[:end])
            del self.pending[:end + 1]
            self.transport.write(answer(line))
        if len(self.pending) > MAX_LINE:
            self.transport.write(b"error: line too long\n")
            self.transport.close()


class AdderServer(Server):
    """The adder, under whichever strategy it is given."""

    name = "adder"
    description = "answers every line of whole numbers with their sum"
    protocol = AdderProtocol


if __name__ == "__main__":
    sys.exit(serve_main(AdderServer))
