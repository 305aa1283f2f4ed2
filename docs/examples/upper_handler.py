"""Tutorial example (docs/porting-socketserver.md): a socketserver handler, run by forkthread.

The handler below is plain standard-library code: it would run as it is
under ``socketserver.TCPServer(("127.0.0.1", 8000), UpperHandler)``.  The
``UpperServer`` class is all it takes to run it under forkthread's models::

    python docs/examples/upper_handler.py --bind 127.0.0.1:0 --strategy forking
    forkthread serve upper_handler:UpperServer --strategy threading   # from docs/examples/

It answers every line in upper case and, when the client half-closes, says
how many lines it saw (an unterminated last line counts too).
"""

from __future__ import annotations

import socketserver
import sys

from framework import Server
from framework.cli import serve_main


class UpperHandler(socketserver.StreamRequestHandler):
    """Upper-cases each line; at end of input, writes ``N lines``."""

    def handle(self) -> None:
        lines = 0
        for line in self.rfile:  # blocks in readline until a line, or end of input
            lines += 1
            self.wfile.write(line.upper() if line.endswith(b"\n") else line.upper() + b"\n")
        self.wfile.write(f"{lines} lines\n".encode())


class UpperServer(Server):
    """The same handler under any strategy that gives a connection a thread of its own."""

    name = "upper"
    description = "answers each line in upper case and counts the lines (a socketserver handler)"
    handler = UpperHandler


if __name__ == "__main__":
    sys.exit(serve_main(UpperServer))
