"""``forkthread client``: small clients for trying the bundled servers without other tools.

::

    forkthread client daytime 127.0.0.1:8013          # print the time (udp:HOST:PORT works too)
    echo hello | forkthread client echo 127.0.0.1:8007
    forkthread client http 127.0.0.1:8080 /index.html  # body on stdout, status and headers on stderr
    forkthread client chat 127.0.0.1:8016             # lines from stdin out, the room's lines in
    forkthread client message unix:/tmp/msg.sock hello quit

Every client connects with :func:`framework.address.connect`, so it takes
the same address forms as ``--bind``.  A server that cannot be reached is
one line on standard error and exit status 1.
"""

from __future__ import annotations

import argparse
import os
import select
import socket
import struct
import sys
from collections.abc import Callable
from typing import BinaryIO

from framework.address import Address, AddressError, connect, parse_address

PROG = "forkthread client"


class ClientError(Exception):
    """A client-side failure worth one line to the user."""


def _write(data: bytes) -> None:
    out = sys.stdout.buffer
    out.write(data)
    out.flush()


def _recv_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def run_daytime(sock: socket.socket, address: Address, args: argparse.Namespace) -> int:
    """Print the server's time line (UDP: send an empty datagram first, as RFC 867 says)."""
    if address.is_datagram:
        sock.send(b"")
        _write(sock.recv(65536))
    else:
        _write(_recv_all(sock))
    return 0


def run_echo(sock: socket.socket, address: Address, args: argparse.Namespace) -> int:
    """Send standard input and print what comes back (UDP: one datagram per input line)."""
    stdin = sys.stdin.buffer
    if address.is_datagram:
        for line in stdin:
            sock.send(line)
            _write(sock.recv(65536))
        return 0
    _pump(sock, stdin)
    return 0


def _pump(sock: socket.socket, stdin: BinaryIO, on_line: Callable[[bytes], None] | None = None) -> None:
    """Copy *stdin* to *sock* and *sock* to stdout at the same time; half-close at input's end."""
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    in_fd = stdin.fileno()
    poller.register(in_fd, select.POLLIN)
    timeout = sock.gettimeout()
    input_open = True
    while True:
        # While input is open the user may take their time; after it, the server's timeout applies.
        ready = poller.poll(None if input_open or timeout is None else timeout * 1000)
        if not ready:
            raise ClientError("the server did not finish within the timeout")
        for fd, _ in ready:
            if fd == in_fd:
                data = os.read(in_fd, 65536)
                if data:
                    sock.sendall(data)
                else:
                    input_open = False
                    poller.unregister(in_fd)
                    sock.shutdown(socket.SHUT_WR)
            else:
                data = sock.recv(65536)
                if not data:
                    return
                _write(data)


def run_chat(sock: socket.socket, address: Address, args: argparse.Namespace) -> int:
    """Join a chat room: your lines go out, the room's lines come in, until either side ends."""
    _pump(sock, sys.stdin.buffer)
    return 0


def run_http(sock: socket.socket, address: Address, args: argparse.Namespace) -> int:
    """GET (or HEAD) *path*; body to stdout, status line and headers to stderr; exit 1 for 4xx/5xx."""
    host = args.host or ("localhost" if address.is_unix else f"{address.host}:{address.port}")
    if address.family == socket.AF_INET6 and not args.host:
        host = f"[{address.host}]:{address.port}"
    method = "HEAD" if args.head else "GET"
    request = (f"{method} {args.path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: forkthread-client\r\n"
               "Connection: close\r\n\r\n")
    sock.sendall(request.encode("ascii"))
    response = _recv_all(sock)
    head, sep, body = response.partition(b"\r\n\r\n")
    if not sep:
        raise ClientError(f"not an HTTP response: {response[:80]!r}")
    lines = head.decode("iso-8859-1").split("\r\n")
    sys.stderr.write("\n".join(lines) + "\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = _dechunk(body)
    _write(body)
    parts = lines[0].split()
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    return 0 if 200 <= status < 400 else 1


def _dechunk(data: bytes) -> bytes:
    """Decode a chunked body (trailers ignored)."""
    body = bytearray()
    while True:
        size_line, sep, data = data.partition(b"\r\n")
        if not sep:
            raise ClientError("truncated chunked body")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return bytes(body)
        body += data[:size]
        data = data[size + 2:]


def run_message(sock: socket.socket, address: Address, args: argparse.Namespace) -> int:
    """Send each TEXT as a length-prefixed message and print each answer."""
    header = struct.Struct("!I")
    for text in args.texts:
        data = text.encode("utf-8")
        sock.sendall(header.pack(len(data)) + data)
        size = header.unpack(_recv_exactly(sock, header.size))[0]
        _write(_recv_exactly(sock, size) + b"\n")
    return 0


def _recv_exactly(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise ClientError("the server closed the connection")
        data += chunk
    return data


CLIENTS: dict[str, tuple[Callable[[socket.socket, Address, argparse.Namespace], int], str]] = {
    "daytime": (run_daytime, "print the server's date and time"),
    "echo": (run_echo, "send standard input, print what comes back"),
    "http": (run_http, "fetch a path: body to stdout, status and headers to stderr"),
    "chat": (run_chat, "join a chat room: type lines, read the room"),
    "message": (run_message, "send text messages to the message server"),
}


def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``forkthread client KIND ADDRESS`` with the top-level parser."""
    client = commands.add_parser("client", help="talk to a server", description="Small clients for the servers.")
    kinds = client.add_subparsers(dest="kind", metavar="KIND", required=True)
    for kind, (run, help_text) in CLIENTS.items():
        parser = kinds.add_parser(kind, help=help_text, description=help_text)
        parser.add_argument("address", metavar="ADDRESS", help="HOST:PORT, [V6]:PORT, unix:PATH or udp:HOST:PORT")
        parser.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                            help="give up on a silent server after this long (default: %(default)s)")
        if kind == "http":
            parser.add_argument("path", nargs="?", default="/", help="the path to fetch (default: /)")
            parser.add_argument("--host", help="the Host header (default: the address)")
            parser.add_argument("--head", action="store_true", help="send HEAD instead of GET")
        if kind == "message":
            parser.add_argument("texts", nargs="+", metavar="TEXT", help="messages to send, in order")
        parser.set_defaults(func=run_client, client=run)


def run_client(args: argparse.Namespace) -> int:
    """Connect to the address and run the chosen client."""
    try:
        address = parse_address(args.address)
    except AddressError as exc:
        from framework.cli import UsageError

        raise UsageError(str(exc)) from None
    try:
        with connect(address, timeout=args.timeout) as sock:
            status: int = args.client(sock, address, args)
            return status
    except (ClientError, OSError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__
        print(f"{PROG}: {args.address}: {reason}", file=sys.stderr)
        return 1
