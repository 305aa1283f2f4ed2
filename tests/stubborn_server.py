"""Test servers whose blocking handlers never let go: a graceful stop must end them all the same.

Run like any server script: ``python tests/stubborn_server.py sleeper --bind 127.0.0.1:0``.

``sleeper``
    The handler answers ``busy`` to the first line, then sleeps forever
    (every signal it gets, it sleeps on).
``spinner``
    The handler answers ``busy``, then computes forever.
``leaver``
    The handler starts a non-daemon thread that sleeps forever, answers
    ``left`` and returns: the interpreter would wait for that thread at exit.
``dozer``
    A protocol (every strategy, poll too) whose ``data_received`` answers
    ``busy`` and then sleeps forever: the serving thread never comes back.
"""

from __future__ import annotations

import socketserver
import sys
import threading
import time

from framework import Protocol, Server
from framework.cli import serve_main


class SleepingHandler(socketserver.StreamRequestHandler):
    """Answers one line, then never returns."""

    def handle(self) -> None:
        self.rfile.readline()
        self.wfile.write(b"busy\n")
        while True:
            time.sleep(3600)


class SpinningHandler(socketserver.StreamRequestHandler):
    """Answers one line, then spins forever."""

    def handle(self) -> None:
        self.rfile.readline()
        self.wfile.write(b"busy\n")
        count = 0
        while True:
            count += 1


def sleep_forever() -> None:
    while True:
        time.sleep(3600)


class LeavingHandler(socketserver.StreamRequestHandler):
    """Leaves a non-daemon thread behind, answers, and returns."""

    def handle(self) -> None:
        self.rfile.readline()
        threading.Thread(target=sleep_forever, name="left-behind", daemon=False).start()
        self.wfile.write(b"left\n")


class DozingProtocol(Protocol):
    """Answers, then sleeps forever inside the callback."""

    def data_received(self, data: bytes) -> None:
        self.transport.write(b"busy\n")
        sleep_forever()


def server_for(name: str, **attributes: object) -> type[Server]:
    """A server class named *name* carrying *attributes* (its handler or protocol)."""
    return type(f"{name.title()}Server", (Server,), {"name": name, **attributes})


SERVERS = {
    "sleeper": server_for("sleeper", handler=SleepingHandler),
    "spinner": server_for("spinner", handler=SpinningHandler),
    "leaver": server_for("leaver", handler=LeavingHandler),
    "dozer": server_for("dozer", protocol=DozingProtocol),
}

# Importable by name (module:Class), as the interpreters pool's workers import a server.
globals().update({cls.__name__: cls for cls in SERVERS.values()})

if __name__ == "__main__":
    # The classes of the module, not of __main__: a sub-interpreter worker imports them again.
    import stubborn_server

    sys.exit(serve_main(stubborn_server.SERVERS[sys.argv.pop(1)]))
