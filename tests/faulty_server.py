"""A test server whose protocol fails on command: echo, except for a few magic words.

Run like any server script: ``python tests/faulty_server.py --bind 127.0.0.1:0
--strategy threading``.  The reliability tests use it to prove that a
protocol's exception ends only its own connection, is logged once with its
traceback, and leaves the server (and the worker process) serving.

``raise-in-data``
    ``data_received`` raises :class:`ValueError`.
``raise-in-eof``
    ``eof_received`` (at the client's half-close) raises :class:`RuntimeError`.
``raise-in-lost``
    ``connection_lost`` raises :class:`LookupError` after an orderly end.
``exit-process``
    The process serving the connection exits at once (``os._exit``): a
    crashing pre-forked worker.
"""

from __future__ import annotations

import os
import sys

from framework import Protocol, Server
from framework.cli import serve_main


class FaultyProtocol(Protocol):
    """Echo that raises, or exits, when it sees a magic word."""

    def connection_made(self, transport) -> None:  # type: ignore[no-untyped-def]
        super().connection_made(transport)
        self.seen = bytearray()

    def data_received(self, data: bytes) -> None:
        self.seen += data
        if b"raise-in-data" in self.seen:
            raise ValueError("fault injected in data_received")
        if b"exit-process" in self.seen:
            os._exit(7)
        self.transport.write(data)

    def eof_received(self) -> bool | None:
        if b"raise-in-eof" in self.seen:
            raise RuntimeError("fault injected in eof_received")
        return None

    def connection_lost(self, exc: BaseException | None) -> None:
        if b"raise-in-lost" in self.seen:
            raise LookupError("fault injected in connection_lost")


class FaultyServer(Server):
    """Echo server with injectable protocol faults."""

    name = "faulty"
    description = "echo that fails on command (tests only)"
    protocol = FaultyProtocol


if __name__ == "__main__":
    sys.exit(serve_main(FaultyServer))
