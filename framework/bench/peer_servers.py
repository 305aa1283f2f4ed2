"""Peers the lab measures against: ``python -m framework.bench.peer_servers KIND [--bind H:P] [--work SPEC]``.

KIND is one of :data:`KINDS`.  Each prints ``listening on HOST:PORT`` like
``forkthread serve``, and on SIGTERM stops serving and (for the socketserver
peers) waits for its threads or children, so that their CPU is charged to it.
The handlers speak the same protocols as forkthread's ``echo``, ``nbytes``
and ``work`` servers, written the way a socketserver or asyncio user would
write them.  The event-loop peers come in their common form (the streams
API) and their fastest (``asyncio.Protocol``), on asyncio's own loop or on
uvloop's.  The ``work`` peers do :class:`servers.work.Work`, the very work
forkthread's ``work`` server does: the socketserver ones with its handler,
the event-loop ones computing inline and sleeping either through
``run_in_executor`` (``executor``) or inline, blocking the loop (``inline``).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socketserver
import sys
import threading
from collections.abc import Awaitable, Callable
from types import FrameType

from servers.work import ANSWER, MAX_LINE, Work, WorkRequestHandler, parse_spec

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


class _Threading(socketserver.ThreadingMixIn, socketserver.TCPServer):
    allow_reuse_address = True
    request_queue_size = 1024


class _Forking(socketserver.ForkingMixIn, socketserver.TCPServer):
    allow_reuse_address = True
    request_queue_size = 1024


SOCKETSERVER_KINDS: dict[str, tuple[type[socketserver.TCPServer], type[socketserver.BaseRequestHandler]]] = {
    "socketserver-threading-echo": (_Threading, EchoHandler),
    "socketserver-forking-echo": (_Forking, EchoHandler),
    "socketserver-threading-nbytes": (_Threading, NBytesHandler),
    "socketserver-forking-nbytes": (_Forking, NBytesHandler),
    "socketserver-threading-work": (_Threading, WorkRequestHandler),
    "socketserver-forking-work": (_Forking, WorkRequestHandler),
}
#: Event-loop peers: (loop, API or way of sleeping, protocol).
LOOP_KINDS = [f"{loop}-{form}-{protocol}" for loop in ("asyncio", "uvloop")
              for form, protocol in (("streams", "echo"), ("protocol", "echo"), ("executor", "work"),
                                     ("inline", "work"))]
KINDS = [*SOCKETSERVER_KINDS, *LOOP_KINDS]


def run_socketserver(kind: str, host: str, port: int, work: Work | None) -> None:
    """Serve with a socketserver class until SIGTERM/SIGINT; then wait for threads/children."""
    server_class, handler = SOCKETSERVER_KINDS[kind]
    with server_class((host, port), handler) as server:
        server.work = work  # type: ignore[attr-defined]  # what WorkRequestHandler reads

        def stop(signum: int, frame: FrameType | None) -> None:
            threading.Thread(target=server.shutdown).start()  # shutdown() from the serving thread deadlocks

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        bound_host, bound_port = server.server_address[:2]
        print(f"listening on {bound_host!s}:{bound_port}", flush=True)
        server.serve_forever()


async def _echo_streams(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


class _EchoProtocol(asyncio.Protocol):
    """Echo with asyncio's fastest API: no coroutine, no stream buffer."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


def _work_streams(work: Work, executor: bool) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter],
                                                          Awaitable[None]]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                line = await reader.readline()
                if not line.endswith(b"\n"):
                    return
                work.cpu()  # computation is done inline: an executor thread would hold the same GIL
                if executor:
                    await loop.run_in_executor(None, work.sleep)  # the default pool: min(32, CPUs + 4) threads
                else:
                    work.sleep()  # the mistake the lab shows: the whole loop waits
                writer.write(ANSWER)
                await writer.drain()
        except (ConnectionError, ValueError):  # ValueError: a line over the limit
            pass
        finally:
            writer.close()

    return handle


async def _serve_loop(kind: str, host: str, port: int, work: Work | None) -> None:
    form = kind.split("-")[1]
    if form == "protocol":
        server = await asyncio.get_running_loop().create_server(_EchoProtocol, host, port, backlog=1024)
    elif form == "streams":
        server = await asyncio.start_server(_echo_streams, host, port, backlog=1024)
    else:
        assert work is not None
        server = await asyncio.start_server(_work_streams(work, form == "executor"), host, port, backlog=1024,
                                            limit=MAX_LINE)
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopped.set)
    bound_host, bound_port = server.sockets[0].getsockname()[:2]
    print(f"listening on {bound_host}:{bound_port}", flush=True)
    async with server:
        await stopped.wait()


def run_loop(kind: str, host: str, port: int, work: Work | None) -> None:
    """Serve with asyncio's own event loop or uvloop's until SIGTERM/SIGINT."""
    coroutine = _serve_loop(kind, host, port, work)
    if kind.startswith("uvloop-"):
        import uvloop

        uvloop.run(coroutine)
    else:
        asyncio.run(coroutine)


def main() -> int:
    """Parse the command line and serve."""
    parser = argparse.ArgumentParser(prog="python -m framework.bench.peer_servers")
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("--bind", default="127.0.0.1:0", metavar="HOST:PORT")
    parser.add_argument("--work", default="cpu:1", metavar="SPEC", help="work peers: as forkthread serve work")
    parser.add_argument("--calibration", type=int, default=None, metavar="N",
                        help="work peers: as forkthread serve work")
    args = parser.parse_args()
    host, _, port = args.bind.rpartition(":")
    try:
        work = Work(parse_spec(args.work), args.calibration) if args.kind.endswith("-work") else None
    except ValueError as exc:
        parser.error(str(exc))
    if args.kind in SOCKETSERVER_KINDS:
        run_socketserver(args.kind, host, int(port), work)
    else:
        run_loop(args.kind, host, int(port), work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
