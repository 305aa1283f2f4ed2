"""What every bundled client shares: its one-line error, reading to the end, writing to stdout."""

from __future__ import annotations

import socket
import sys


class ClientError(Exception):
    """A client-side failure worth one line to the user."""


def write_stdout(data: bytes) -> None:
    """Write *data* to standard output at once (a client's output is read as it comes)."""
    out = sys.stdout.buffer
    out.write(data)
    out.flush()


def recv_all(sock: socket.socket) -> bytes:
    """Read until the server closes the connection."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)
