"""The event-loop peers: ``python -m framework.bench.peer_servers KIND [--bind H:P] [--work SPEC]``.

KIND is one of :data:`KINDS`.  Each prints ``listening on HOST:PORT`` like
``forkthread serve`` and stops on SIGTERM.  The handlers speak the same
protocols as forkthread's ``echo``, ``nbytes`` and ``work`` servers, written the way an
asyncio user would write them, in their common form (the streams API) and
their fastest (``asyncio.Protocol``), on asyncio's own loop or on uvloop's.
The ``work`` peers do :class:`servers.work.Work`, the very work forkthread's
``work`` server does, computing inline and sleeping either through
``run_in_executor`` (``executor``) or inline, blocking the loop (``inline``).
The socketserver peers are :mod:`framework.bench.socketserver_peer`.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Awaitable, Callable

from framework.bench.socketserver_peer import peer_parser
from servers.work import ANSWER, MAX_LINE, Work, parse_spec

#: Event-loop peers: (loop, API or way of sleeping, protocol).
KINDS = [f"{loop}-{form}-{protocol}" for loop in ("asyncio", "uvloop")
         for form, protocol in (("streams", "echo"), ("protocol", "echo"), ("protocol", "nbytes"), ("executor", "work"),
                                ("inline", "work"))]

#: nbytes: the longest request line, and the bytes sent in slices (as :mod:`servers.nbytes`).
_NBYTES_LINE = 32
_CHUNK = (bytes(range(ord("a"), ord("z") + 1)) * 2521)[:65536]


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


class _NBytesProtocol(asyncio.Protocol):
    """UNP ch. 30's nbytes with asyncio's fastest API: read ``COUNT\\n``, send COUNT bytes, close."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.line: bytes | None = b""

    def data_received(self, data: bytes) -> None:
        if self.line is None:
            return  # answered: the rest is ignored
        line = self.line + data
        newline = line.find(b"\n")
        if newline < 0:
            self.line = line
            if len(line) >= _NBYTES_LINE:
                self._refuse()
            return
        self.line = None
        text = line[:newline].strip()
        if not text.isdigit():
            self._refuse()
            return
        count = int(text)
        view = memoryview(_CHUNK)
        while count > 0:
            piece = min(count, len(_CHUNK))
            self.transport.write(view[:piece])
            count -= piece
        self.transport.close()

    def _refuse(self) -> None:
        self.line = None
        self.transport.write(b"error: expected a decimal byte count and a newline\r\n")
        self.transport.close()


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
        protocol = _NBytesProtocol if kind.endswith("-nbytes") else _EchoProtocol
        server = await asyncio.get_running_loop().create_server(protocol, host, port, backlog=1024)
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
    parser = peer_parser("python -m framework.bench.peer_servers", KINDS)
    args = parser.parse_args()
    host, _, port = args.bind.rpartition(":")
    try:
        work = Work(parse_spec(args.work), args.calibration) if args.kind.endswith("-work") else None
    except ValueError as exc:
        parser.error(str(exc))
    run_loop(args.kind, host, int(port), work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
