"""Lab example (docs/lab.md, "Measure your own server"): a socketserver handler whose every answer computes.

Each request line is a whole number; the answer is ``prime`` or the
smallest factor, found by trial division in pure Python (it holds the GIL
for about two milliseconds for ``1000000007`` on a quiet machine).  Which model serves it best?
Ask the lab, from this folder::

    forkthread bench primes:PrimeServer --send '1000000007\\n' --expect-line --quick
    forkthread bench primes:PrimeServer --client primes:ask --quick

``ask`` is the same exchange as a client function: the lab calls it with a
connected socket, and an exception means the exchange failed.
"""

from __future__ import annotations

import socket
import socketserver
import sys

from framework import Server
from framework.cli import serve_main


def smallest_factor(number: int) -> int:
    """The smallest factor of *number* greater than 1 (*number* itself when it is prime)."""
    if number % 2 == 0:
        return 2
    factor = 3
    while factor * factor <= number:
        if number % factor == 0:
            return factor
        factor += 2
    return number


class PrimeHandler(socketserver.StreamRequestHandler):
    """Answers each line holding a number (up to 10**12) with ``prime`` or ``factor N``."""

    def handle(self) -> None:
        for line in self.rfile:
            text = line.strip()
            if not text.isdigit() or not 1 < int(text) <= 10**12:
                self.wfile.write(b"error: a whole number from 2 to 10**12\n")
                continue
            number = int(text)
            factor = smallest_factor(number)
            self.wfile.write(b"prime\n" if factor == number else b"factor %d\n" % factor)


class PrimeServer(Server):
    """The lab example: a blocking handler that computes."""

    name = "primes"
    description = "answers whether each line's number is prime"
    handler = PrimeHandler


def ask(sock: socket.socket) -> None:
    """One exchange, for ``--client primes:ask``: ask about 1000000007 and check the answer."""
    sock.sendall(b"1000000007\n")
    answer = b""
    while not answer.endswith(b"\n"):
        data = sock.recv(64)
        if not data:
            raise ConnectionError("the server closed the connection")
        answer += data
    if answer != b"prime\n":
        raise ValueError(f"wrong answer {answer!r}")


if __name__ == "__main__":
    sys.exit(serve_main(PrimeServer))
