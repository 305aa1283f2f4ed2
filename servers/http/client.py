"""The HTTP client of ``forkthread client http``: one request, the response on stdout and stderr."""

from __future__ import annotations

import argparse
import socket
import sys

from framework.address import Address
from servers.output import ClientError, recv_all, write_stdout


def run_http(sock: socket.socket, address: Address, args: argparse.Namespace) -> int:
    """GET (or HEAD) *path*; body to stdout, status line and headers to stderr; exit 1 for 4xx/5xx."""
    host = args.host or ("localhost" if address.is_unix else f"{address.host}:{address.port}")
    if address.family == socket.AF_INET6 and not args.host:
        host = f"[{address.host}]:{address.port}"
    method = "HEAD" if args.head else "GET"
    request = (f"{method} {args.path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: forkthread-client\r\n"
               "Connection: close\r\n\r\n")
    sock.sendall(request.encode("ascii"))
    response = recv_all(sock)
    head, sep, body = response.partition(b"\r\n\r\n")
    if not sep:
        raise ClientError(f"not an HTTP response: {response[:80]!r}")
    lines = head.decode("iso-8859-1").split("\r\n")
    sys.stderr.write("\n".join(lines) + "\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = _dechunk(body)
    write_stdout(body)
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
