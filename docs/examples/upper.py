"""Tutorial example: a server that answers every line in upper case, and counts them.

Run it under any strategy::

    python docs/examples/upper.py --bind 127.0.0.1:0 --strategy threading

The protocol never touches a socket: it buffers bytes until a newline,
answers each complete line, and when the client half-closes it reports how
many lines it saw (an unterminated last line counts too).
"""

from __future__ import annotations

import sys

from framework import Protocol, Server, Transport
from framework.cli import serve_main


class UpperProtocol(Protocol):
    """Upper-cases each line; at end of input, writes ``N lines``."""

    def connection_made(self, transport: Transport) -> None:
        super().connection_made(transport)
        self.pending = bytearray()
        self.lines = 0

    def data_received(self, data: bytes) -> None:
        self.pending += data
        # Answer every complete line; keep the unterminated rest for later.
        *complete, rest = self.pending.split(b"\n")
        for line in complete:
            self.lines += 1
            self.transport.write(line.upper() + b"\n")
        self.pending = bytearray(rest)

    def eof_received(self) -> bool | None:
        if self.pending:
            self.lines += 1
            self.transport.write(bytes(self.pending).upper() + b"\n")
        self.transport.write(f"{self.lines} lines\n".encode())
        return None  # close once everything is sent

    def between_messages(self) -> bool:
        # No line half received: a graceful stop may close this connection at once.
        return not self.pending


class UpperServer(Server):
    """The tutorial's line-upper-casing server."""

    name = "upper"
    description = "answers each line in upper case and counts the lines"
    protocol = UpperProtocol


if __name__ == "__main__":
    sys.exit(serve_main(UpperServer))
