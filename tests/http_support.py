"""Helpers for the HTTP tests: a document root with known files, h11 as a strict client, raw exchanges."""

from __future__ import annotations

import dataclasses
import os
import socket
from pathlib import Path

import h11

#: Files every HTTP test root holds (name -> bytes).
SMALL = b"hello, world\n"
BIG = os.urandom(1 << 20)
KIB = bytes(range(256)) * 4


def make_root(base: Path) -> Path:
    """A document root, and next to it a secret that must never be served."""
    root = base / "www"
    root.mkdir()
    (base / "secret.txt").write_bytes(b"TOP SECRET\n")
    (root / "index.html").write_bytes(b"<h1>index</h1>\n")
    (root / "hello.txt").write_bytes(SMALL)
    (root / "big.bin").write_bytes(BIG)
    (root / "kib.bin").write_bytes(KIB)
    (root / "empty.txt").write_bytes(b"")
    (root / "page.html").write_bytes(b"<p>page</p>\n")
    (root / "style.css").write_bytes(b"body{}\n")
    (root / "sub").mkdir()
    (root / "sub" / "index.html").write_bytes(b"<h1>sub</h1>\n")
    (root / "noindex").mkdir()
    (root / "noindex" / "a b.txt").write_bytes(b"spaced\n")
    (root / "noindex" / "<script>&.txt").write_bytes(b"odd\n")
    (root / "link-out").symlink_to(base / "secret.txt")
    (root / "link-in").symlink_to(root / "hello.txt")
    (root / "dir-out").symlink_to(base)
    (root / "evil.com").mkdir()
    return root


@dataclasses.dataclass
class Reply:
    """One response as h11 read it."""

    status: int
    headers: dict[str, str]
    body: bytes

    def header(self, name: str) -> str | None:
        """A header's value by lower-case name."""
        return self.headers.get(name)


def _headers(event: h11.Response) -> dict[str, str]:
    return {name.decode().lower(): value.decode("latin-1") for name, value in event.headers}


class StrictClient:
    """h11 as a strict client: checks that every byte of every response is well-formed HTTP/1.1."""

    def __init__(self) -> None:
        self.conn = h11.Connection(our_role=h11.CLIENT, max_incomplete_event_size=1 << 21)

    def expect(self, method: str = "GET") -> None:
        """Tell h11 a request was sent (so it knows whether a body follows: not for HEAD)."""
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        self.conn.send(h11.Request(method=method, target="/", headers=[("Host", "x"), ("Content-Length", "0")]))
        self.conn.send(h11.EndOfMessage())

    def feed(self, data: bytes | None) -> list[Reply]:
        """Give h11 *data* (None: nothing new, b"": end-of-file); return the responses it completes.

        Stops at the end of the current response, so pipelined responses are
        read one :meth:`expect` at a time.
        """
        if data is not None:
            self.conn.receive_data(data)
        replies = []
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA or event is h11.PAUSED or isinstance(event, h11.ConnectionClosed):
                break
            if isinstance(event, h11.Response):
                self._current = Reply(event.status_code, _headers(event), b"")
            elif isinstance(event, h11.Data):
                self._current.body += event.data
            elif isinstance(event, h11.EndOfMessage):
                replies.append(self._current)
                break
        return replies

    @property
    def closing(self) -> bool:
        """True when the response said the connection ends."""
        return self.conn.their_state in (h11.MUST_CLOSE, h11.CLOSED)


def parse_responses(data: bytes, methods: list[str], *, eof: bool = True) -> list[Reply]:
    """Parse *data* strictly as the responses to requests made with *methods*, in order.

    With *eof*, the data is all there is: a response cut short is an error.
    """
    client = StrictClient()
    replies: list[Reply] = []
    client.expect(methods[0])
    got = client.feed(data)
    for method in methods[1:]:
        replies += got
        if not got or client.closing:
            break
        client.expect(method)
        got = client.feed(None)
    else:
        replies += got
    if eof and client.closing:
        client.feed(b"")
    return replies


def pieces_of(data: bytes, chunk: int | None) -> list[bytes]:
    """*data* whole (None), by lines (-1), or in *chunk*-byte pieces."""
    if chunk == -1:
        return data.splitlines(keepends=True)
    if chunk:
        return [data[i:i + chunk] for i in range(0, len(data), chunk)]
    return [data]


def exchange(sock: socket.socket, data: bytes, methods: list[str], *, chunk: int | None = None,
             timeout: float = 10.0) -> tuple[list[Reply], bool]:
    """Send *data* (see :func:`pieces_of`), then read one response per method, strictly.

    Returns the responses and whether the server closed the connection after them.
    """
    for piece in pieces_of(data, chunk):
        try:
            sock.sendall(piece)
        except (BrokenPipeError, ConnectionResetError):
            break  # the server answered early (an error) and closed: read what it said
    return read_replies(sock, methods, timeout=timeout)


def read_replies(sock: socket.socket, methods: list[str], *, timeout: float = 10.0) -> tuple[list[Reply], bool]:
    """Read one response per entry of *methods*; also whether the server then closed."""
    client = StrictClient()
    replies: list[Reply] = []
    sock.settimeout(timeout)
    closed = False
    for method in methods:
        client.expect(method)
        got = client.feed(None)
        while not got:
            data = sock.recv(65536)
            got = client.feed(data)
            if not data:
                closed = True
                break
        replies += got
        if closed or client.closing:
            break
    if not closed and client.closing:
        closed = sock.recv(1) == b""
    return replies, closed


def byteranges_parts(reply: Reply) -> list[tuple[dict[str, str], bytes]]:
    """The parts of a ``multipart/byteranges`` *reply*: each part's headers (lower-case names) and bytes.

    Strict about the frame (RFC 9110 section 14.6, RFC 2046 section 5.1.1): it
    must start with the first delimiter and end with the closing one.
    """
    content_type = reply.header("content-type") or ""
    kind, _, parameters = content_type.partition(";")
    assert kind.strip() == "multipart/byteranges", content_type
    name, _, boundary = parameters.strip().partition("=")
    assert name == "boundary" and boundary, content_type
    delimiter = b"--" + boundary.encode("ascii")
    body = reply.body
    assert body.startswith(delimiter + b"\r\n"), body[:80]
    assert body.endswith(b"\r\n" + delimiter + b"--\r\n"), body[-80:]
    inner = body[len(delimiter) + 2:-(len(delimiter) + 6)]
    parts = []
    for chunk in inner.split(b"\r\n" + delimiter + b"\r\n"):
        head, blank, data = chunk.partition(b"\r\n\r\n")
        assert blank, chunk[:80]
        headers = {}
        for line in head.split(b"\r\n"):
            field, _, value = line.decode("latin-1").partition(":")
            headers[field.strip().lower()] = value.strip()
        parts.append((headers, data))
    return parts


#: Every request header the static server reads (the header-value fuzz covers each).
READ_HEADERS = ["Range", "If-Range", "If-Modified-Since", "If-None-Match", "If-Match", "If-Unmodified-Since",
                "Host", "Connection", "Content-Length", "Transfer-Encoding", "Expect", "Accept-Encoding"]


def request_with(name: str, value: bytes) -> bytes:
    """A GET of a file with *name*: *value* (replacing Host when that is the name), then a plain GET."""
    host = b"" if name == "Host" else b"Host: x\r\n"
    return (b"GET /kib.bin HTTP/1.1\r\n" + host + name.encode("ascii") + b": " + value + b"\r\n\r\n"
            + b"GET /hello.txt HTTP/1.1\r\nHost: x\r\n\r\n")
