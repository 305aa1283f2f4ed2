"""``forkthread client``: small clients for trying the bundled servers without other tools.

::

    forkthread client daytime 127.0.0.1:8013          # print the time (udp:HOST:PORT works too)
    echo hello | forkthread client echo 127.0.0.1:8007
    forkthread client http 127.0.0.1:8080 /index.html  # body on stdout, status and headers on stderr
    forkthread client chat 127.0.0.1:8016             # lines from stdin out, the room's lines in
    forkthread client message unix:/tmp/msg.sock hello quit
    forkthread client http 127.0.0.1:8443 / --tls --cacert cert.pem   # any stream client speaks TLS

Each client sits beside the server whose protocol it speaks and reuses its
framing (the message client the message server's length prefix, the HTTP
client :mod:`servers.http.client`).  Every client connects with
:func:`framework.address.connect`, so it takes the same address forms as ``--bind``.  A server that cannot be reached is
one line on standard error and exit status 1.

With ``--tls`` the connection speaks TLS, checking the server's certificate
against the system's trust store or ``--cacert FILE`` (and its name against
the address, or ``--server-name``).  Python's :mod:`ssl` cannot half-close a
TLS connection, so over TLS the echo and chat clients, once their input
ended, read until the server closes or has been silent for ``--timeout``.
"""

from __future__ import annotations

import argparse
import os
import select
import socket
import sys
from collections.abc import Callable
from typing import BinaryIO

from framework.address import Address, AddressError, connect, parse_address
from framework.argtypes import duration
from servers.chat import PrintableLines
from servers.http.client import run_http
from servers.message import HEADER as MESSAGE_HEADER
from servers.message import encode_message
from servers.output import ClientError, recv_all, write_stdout

PROG = "forkthread client"


def run_daytime(sock: socket.socket, address: Address, args: argparse.Namespace) -> int:
    """Print the server's time line (UDP: send an empty datagram first, as RFC 867 says)."""
    if address.is_datagram:
        sock.send(b"")
        write_stdout(sock.recv(65536))
    else:
        write_stdout(recv_all(sock))
    return 0


def run_echo(sock: socket.socket, address: Address, args: argparse.Namespace) -> int:
    """Send standard input and print what comes back (UDP: one datagram per input line)."""
    stdin = sys.stdin.buffer
    if address.is_datagram:
        for line in stdin:
            sock.send(line)
            write_stdout(sock.recv(65536))
        return 0
    _pump(sock, stdin)
    return 0


def _pump(sock: socket.socket, stdin: BinaryIO, show: Callable[[bytes], bytes] | None = None) -> None:
    """Copy *stdin* to *sock* and *sock* to stdout at the same time; half-close at input's end.

    *show*, when given, turns what arrives into what is written (the chat
    client's :class:`~servers.chat.PrintableLines`).
    """
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    in_fd = stdin.fileno()
    poller.register(in_fd, select.POLLIN)
    timeout = sock.gettimeout()
    tls = hasattr(sock, "pending")  # an ssl.SSLSocket: no half-close, and records buffered inside
    input_open = True
    while True:
        # While input is open the user may take their time; after it, the server's timeout applies.
        ready = poller.poll(None if input_open or timeout is None else timeout * 1000)
        if not ready:
            if tls:
                return  # the server said all it had to say (see the module's note on TLS)
            raise ClientError("the server did not finish within the timeout")
        for fd, _ in ready:
            if fd == in_fd:
                data = os.read(in_fd, 65536)
                if data:
                    sock.sendall(data)
                else:
                    input_open = False
                    poller.unregister(in_fd)
                    if not tls:
                        sock.shutdown(socket.SHUT_WR)
            else:
                received = _recv_tls(sock, timeout) if tls else sock.recv(65536)
                if received is None:
                    continue  # a TLS record with no data in it (a session ticket)
                if not received:
                    return
                write_stdout(show(received) if show else received)
                while tls and sock.pending():  # type: ignore[attr-defined]  # records poll() cannot see
                    more = sock.recv(65536)
                    write_stdout(show(more) if show else more)


def _recv_tls(sock: socket.socket, timeout: float | None) -> bytes | None:
    """Read a readable TLS socket without blocking: None when what arrived held no data."""
    import ssl  # loaded already: the socket is an SSLSocket

    sock.setblocking(False)
    try:
        return sock.recv(65536)
    except ssl.SSLWantReadError:
        return None
    finally:
        sock.settimeout(timeout)


def run_chat(sock: socket.socket, address: Address, args: argparse.Namespace) -> int:
    """Join a chat room: your lines go out, the room's lines come in, until either side ends.

    What comes in is shown, never obeyed: control characters arrive escaped
    (a server that does not escape them cannot retitle or repaint the terminal).
    """
    _pump(sock, sys.stdin.buffer, PrintableLines())
    return 0


def run_message(sock: socket.socket, address: Address, args: argparse.Namespace) -> int:
    """Send each TEXT as a message in the server's own framing and print each answer."""
    for text in args.texts:
        sock.sendall(encode_message(text))
        (size,) = MESSAGE_HEADER.unpack(_recv_exactly(sock, MESSAGE_HEADER.size))
        write_stdout(_recv_exactly(sock, size) + b"\n")
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
        parser.add_argument("--timeout", type=duration, default=10.0, metavar="SECONDS",
                            help="give up on a silent server after this long (default: %(default)s)")
        parser.add_argument("--tls", action="store_true", help="speak TLS (check the server's certificate)")
        parser.add_argument("--cacert", metavar="FILE",
                            help="with --tls: trust the CA (or self-signed certificate) in FILE")
        parser.add_argument("--server-name", metavar="NAME",
                            help="with --tls: the name the certificate must carry (default: the address's host)")
        if kind == "http":
            parser.add_argument("path", nargs="?", default="/", help="the path to fetch (default: /)")
            parser.add_argument("--host", help="the Host header (default: the address)")
            parser.add_argument("--head", action="store_true", help="send HEAD instead of GET")
        if kind == "message":
            parser.add_argument("texts", nargs="+", metavar="TEXT", help="messages to send, in order")
        parser.set_defaults(func=run_client, client=run)


def _wrap_tls(sock: socket.socket, address: Address, args: argparse.Namespace) -> socket.socket:
    """*sock* itself, or with ``--tls`` an :class:`ssl.SSLSocket` over it after the handshake."""
    if not args.tls:
        return sock
    from framework.tls import client_context  # loads OpenSSL only for --tls

    name = args.server_name or ("localhost" if address.is_unix else address.host)
    try:
        try:
            context = client_context(args.cacert)
        except OSError as exc:  # ssl.SSLError too; ssl's FileNotFoundError names no file: say which
            raise ClientError(f"cannot load --cacert {args.cacert!r}: {exc.strerror or exc}") from None
        return context.wrap_socket(sock, server_hostname=name)
    except BaseException:
        sock.close()
        raise


def run_client(args: argparse.Namespace) -> int:
    """Connect to the address and run the chosen client."""
    try:
        address = parse_address(args.address)
    except AddressError as exc:
        from framework.cli import UsageError

        raise UsageError(str(exc)) from None
    if args.tls and address.is_datagram:
        from framework.cli import UsageError

        raise UsageError("--tls needs a stream address (TCP or unix:), not udp:")
    try:
        with _wrap_tls(connect(address, timeout=args.timeout), address, args) as sock:
            status: int = args.client(sock, address, args)
            return status
    except (ClientError, AddressError, OSError) as exc:  # AddressError: a host name that does not resolve
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__
        print(f"{PROG}: {args.address}: {reason}", file=sys.stderr)
        return 1
