"""The socketserver peers, as lean as a socketserver program: ``python -P socketserver_peer.py KIND [--bind H:P]``.

KIND is one of :data:`KINDS`: ``socketserver-{iterative,threading,forking}-{echo,nbytes,work}``
(``iterative`` is the plain ``TCPServer``: one request at a time, UNP's iterative server).
Like every lab server it prints ``listening on HOST:PORT``, and on SIGTERM
stops serving and waits for its threads or children, so that their CPU is
charged to it.

Why a script of its own, run by path (``-P``: its folder is not put on
the import path): a forked child's cost grows with the parent's memory
(page tables copied at the fork and torn down at the exit), so a
ForkingTCPServer that carried the lab's other peers (asyncio) or the
``framework`` package (which ``python -m framework.bench...`` imports
first) would pay for imports a socketserver program does not have.  This
one imports what such a program imports: :mod:`socketserver` and its
handler.  Only the ``work`` kinds load more: the handler of forkthread's
``work`` server (:mod:`servers.work`), so that both do the very same work.

A measurement, not a peer: with :data:`CARRY_ENV` naming modules
(comma-separated), the program loads them first, unused, and freezes its
heap as forkthread's forking parent does.  ``forkthread bench stevens``
then shows what carrying another program's modules costs a fork per
connection (docs/lab.md, "The fifth round"), and says so in its notes.
The lab never sets it.
"""

from __future__ import annotations

import argparse
import gc
import os
import signal
import socketserver
import sys
import threading
from types import FrameType
from typing import Any

_CHUNK = (bytes(range(ord("a"), ord("z") + 1)) * 2521)[:65536]


class EchoHandler(socketserver.BaseRequestHandler):
    """RFC 862 echo over a socketserver request."""

    def handle(self) -> None:
        """Send back everything until the client closes."""
        while True:
            data = self.request.recv(65536)
            if not data:
                return
            self.request.sendall(data)


class NBytesHandler(socketserver.StreamRequestHandler):
    """UNP ch. 30: read ``COUNT\\n``, send COUNT bytes, close."""

    def handle(self) -> None:
        """Answer one request."""
        line = self.rfile.readline(32).strip()
        if not line.isdigit():
            self.wfile.write(b"error: expected a decimal byte count and a newline\r\n")
            return
        count = int(line)
        while count > 0:
            piece = min(count, len(_CHUNK))
            self.wfile.write(_CHUNK[:piece])
            count -= piece


class _Iterative(socketserver.TCPServer):
    allow_reuse_address = True
    request_queue_size = 1024


class _Threading(socketserver.ThreadingMixIn, socketserver.TCPServer):
    allow_reuse_address = True
    request_queue_size = 1024


class _Forking(socketserver.ForkingMixIn, socketserver.TCPServer):
    allow_reuse_address = True
    request_queue_size = 1024


#: The server classes, by the model in a KIND.
SERVER_CLASSES: dict[str, type[socketserver.TCPServer]] = {
    "iterative": _Iterative, "threading": _Threading, "forking": _Forking}
#: The protocols a KIND may end in.
PROTOCOLS = ("echo", "nbytes", "work")
#: The variable naming modules to load, unused, before serving (see the module docstring).
CARRY_ENV = "FORKTHREAD_PEER_CARRY"

#: Every KIND this script serves.
KINDS = [f"socketserver-{model}-{protocol}" for model in SERVER_CLASSES for protocol in PROTOCOLS]


def _handler_and_work(protocol: str, spec: str, calibration: int | None) -> tuple[type[Any], object]:
    """The handler class for *protocol*, and the work its server carries (``work`` only, else None)."""
    if protocol == "echo":
        return EchoHandler, None
    if protocol == "nbytes":
        return NBytesHandler, None
    from servers.work import Work, WorkRequestHandler, parse_spec  # only here: it loads the framework

    return WorkRequestHandler, Work(parse_spec(spec), calibration)


def serve(server_class: type[socketserver.TCPServer], handler: type[Any], work: object, host: str, port: int) -> None:
    """Serve *handler* with *server_class* until SIGTERM/SIGINT; then wait for the threads or children.

    The stop runs ``shutdown()`` in a thread of its own: from the serving thread
    (a signal handler runs there) it would deadlock.  The iterative server
    (no mix-in) then has nothing to wait for.
    """
    with server_class((host, port), handler) as server:
        server.work = work  # type: ignore[attr-defined]  # what WorkRequestHandler reads

        def stop(signum: int, frame: FrameType | None) -> None:
            threading.Thread(target=server.shutdown).start()  # shutdown() from the serving thread deadlocks

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        bound_host, bound_port = server.server_address[:2]
        print(f"listening on {bound_host!s}:{bound_port}", flush=True)
        server.serve_forever()


def _fixed_width_formatter(prog: str) -> argparse.HelpFormatter:
    # A width of its own: argparse's formatter imports shutil to ask the terminal for one, and
    # shutil loads zlib, bz2 and lzma, which a forking peer would copy at every fork.  A lean
    # socketserver program carries none of them (nor does forkthread: framework.cli.help_width).
    return argparse.HelpFormatter(prog, width=78)


def peer_parser(prog: str, kinds: list[str]) -> argparse.ArgumentParser:
    """The command line of every lab peer program: ``KIND [--bind HOST:PORT] [--work SPEC] [--calibration N]``.

    Here, in the program that must import nothing of the framework, so that
    :mod:`framework.bench.peer_servers` can share it.
    """
    parser = argparse.ArgumentParser(prog=prog, formatter_class=_fixed_width_formatter)
    parser.add_argument("kind", choices=kinds)
    parser.add_argument("--bind", default="127.0.0.1:0", metavar="HOST:PORT")
    parser.add_argument("--work", default="cpu:1", metavar="SPEC", help="work kinds: as forkthread serve work")
    parser.add_argument("--calibration", type=int, default=None, metavar="N",
                        help="work kinds: as forkthread serve work")
    return parser


def carried_modules() -> list[str]:
    """The modules :data:`CARRY_ENV` names (none: the lean peer)."""
    return [name.strip() for name in os.environ.get(CARRY_ENV, "").split(",") if name.strip()]


def main() -> int:
    """Parse the command line and serve."""
    parser = peer_parser("python -P socketserver_peer.py", KINDS)
    args = parser.parse_args()
    carried = carried_modules()
    for name in carried:
        __import__(name)  # (importlib itself would be one more module carried)
    if carried:
        gc.freeze()  # as forkthread's forking parent does: the collector then leaves their pages alone
    host, _, port = args.bind.rpartition(":")
    _, model, protocol = args.kind.split("-")
    try:
        handler, work = _handler_and_work(protocol, args.work, args.calibration)
    except ValueError as exc:
        parser.error(str(exc))
    serve(SERVER_CLASSES[model], handler, work, host, int(port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
