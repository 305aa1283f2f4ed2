"""Test servers that note which process ran each of their hooks: a rehearsal must run none of them.

Every hook a server may override appends ``HOOK PID`` to the file
``--witness`` names (one ``write`` of a short line to a file opened for
appending: the lines of concurrent processes do not mix), and each
connection is answered with the pid of the process that served it.
Under ``forking`` every line must name a child, never the parent, whose
rehearsal (:mod:`framework.rehearsal`) serves connections of its own.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from typing import Any

from framework import Protocol, Server
from framework.cli import serve_main


def note(path: str, hook: str) -> None:
    """Append ``HOOK PID`` to *path*."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{hook} {os.getpid()}\n".encode())
    finally:
        os.close(fd)


class WitnessProtocol(Protocol):
    """Answer the first chunk with this process's pid, then close."""

    def __init__(self, witness: str) -> None:
        self.witness = witness

    def data_received(self, data: bytes) -> None:
        """Note the call; answer; close."""
        note(self.witness, "data_received")
        self.transport.write(b"%d" % os.getpid())
        self.transport.close()


class WitnessHandler:
    """A blocking handler (socketserver's calling convention): answer with this process's pid."""

    def __init__(self, request: socket.socket, client_address: object, server: WitnessHandlerServer) -> None:
        note(server.witness, "handler")
        if request.recv(64):
            request.sendall(b"%d" % os.getpid())


class WitnessServer(Server):
    """Each hook notes its process in ``--witness``; the protocol answers with its pid."""

    name = "witness"
    description = "test server: notes which process runs each hook"

    def __init__(self, *args: Any, witness: str, **kwargs: Any) -> None:
        self.witness = witness
        super().__init__(*args, **kwargs)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """``--witness PATH``."""
        parser.add_argument("--witness", required=True, metavar="PATH", help="file the hooks append to")

    @classmethod
    def options_from_arguments(cls, args: argparse.Namespace) -> dict[str, object]:
        """Pass ``--witness`` on."""
        return {"witness": args.witness}

    def verify_request(self, sock: socket.socket, peer: str) -> bool:
        """Note the call; admit."""
        note(self.witness, "verify_request")
        return True

    def configure_connection(self, sock: socket.socket) -> None:
        """Note the call."""
        note(self.witness, "configure_connection")

    def protocol_factory(self) -> Protocol:
        """Note the call."""
        note(self.witness, "protocol_factory")
        return WitnessProtocol(self.witness)

    def handle_error(self, exc: BaseException, peer: str) -> None:
        """Note the call, then report as usual."""
        note(self.witness, "handle_error")
        super().handle_error(exc, peer)


class WitnessHandlerServer(WitnessServer):
    """The same with a blocking handler instead of a protocol."""

    name = "witness-handler"
    handler = WitnessHandler


if __name__ == "__main__":
    sys.exit(serve_main(WitnessServer))
