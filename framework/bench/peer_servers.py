"""Stdlib peers the lab measures against: ``python -m framework.bench.peer_servers KIND [--bind H:P]``.

KIND is one of :data:`KINDS`.  Each prints ``listening on HOST:PORT`` like
``forkthread serve``, and on SIGTERM stops serving and (for the socketserver
peers) waits for its threads or children, so that their CPU is charged to it.
The handlers speak the same protocols as forkthread's ``echo`` and ``nbytes``
servers, written the way a socketserver or asyncio user would write them.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socketserver
import sys
import threading
from types import FrameType

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
}
KINDS = [*SOCKETSERVER_KINDS, "asyncio-echo"]


def run_socketserver(kind: str, host: str, port: int) -> None:
    """Serve with a socketserver class until SIGTERM/SIGINT; then wait for threads/children."""
    server_class, handler = SOCKETSERVER_KINDS[kind]
    with server_class((host, port), handler) as server:

        def stop(signum: int, frame: FrameType | None) -> None:
            threading.Thread(target=server.shutdown).start()  # shutdown() from the serving thread deadlocks

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        bound_host, bound_port = server.server_address[:2]
        print(f"listening on {bound_host!s}:{bound_port}", flush=True)
        server.serve_forever()


async def _asyncio_echo(host: str, port: int) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, host, port, backlog=1024)
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopped.set)
    bound_host, bound_port = server.sockets[0].getsockname()[:2]
    print(f"listening on {bound_host}:{bound_port}", flush=True)
    async with server:
        await stopped.wait()


def main() -> int:
    """Parse the command line and serve."""
    parser = argparse.ArgumentParser(prog="python -m framework.bench.peer_servers")
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("--bind", default="127.0.0.1:0", metavar="HOST:PORT")
    args = parser.parse_args()
    host, _, port = args.bind.rpartition(":")
    if args.kind == "asyncio-echo":
        asyncio.run(_asyncio_echo(host, int(port)))
    else:
        run_socketserver(args.kind, host, int(port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
