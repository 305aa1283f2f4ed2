"""Response heads and small bodies, as bytes ready for the wire.

Every response this server sends is HTTP/1.1 with ``Date``, ``Server`` and
an explicit ``Content-Length`` (or none, for 304), so any strict client (h11)
can frame it, error responses included.
"""

from __future__ import annotations

import time
from http import HTTPStatus

from framework import __version__
from servers.http.dates import DateCache

SERVER_NAME = f"forkthread/{__version__}"

#: ``HTTP/1.1 200 OK\r\n`` for every status, built once.
STATUS_LINES: dict[int, bytes] = {
    status.value: f"HTTP/1.1 {status.value} {status.phrase}\r\n".encode("ascii") for status in HTTPStatus
}

ALLOW = "GET, HEAD"

#: The interim response that asks a client waiting on ``Expect: 100-continue`` for its body.
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"

_dates = DateCache()


def date() -> str:
    """The ``Date`` value for now (formatted once a second)."""
    return _dates.now()


def second() -> int:
    """The second :func:`date` stands for now: what was built with it holds until this changes."""
    return int(time.time())


def head(status: int, headers: str, *, keep_alive: bool) -> bytes:
    """A whole response head: status line, Date, Server, *headers* (CRLF-terminated lines), Connection.

    *headers* is text already formatted as ``Name: value\\r\\n`` lines.
    """
    connection = "keep-alive" if keep_alive else "close"
    return STATUS_LINES[status] + (
        f"Date: {_dates.now()}\r\nServer: {SERVER_NAME}\r\n{headers}Connection: {connection}\r\n\r\n"
    ).encode("latin-1")


def error_body(status: int, detail: str = "") -> bytes:
    """A short text body for an error *status*: the status line, then *detail* if given."""
    phrase = HTTPStatus(status).phrase
    text = f"{status} {phrase}\n" + (f"{detail}\n" if detail else "")
    return text.encode("utf-8")


def error_response(status: int, detail: str = "", *, keep_alive: bool = False, with_body: bool = True,
                   extra: str = "") -> bytes:
    """A complete error response (head and body; no body for HEAD when not *with_body*).

    *extra* adds header lines (``Allow: GET, HEAD\\r\\n`` for 405,
    ``Content-Range: bytes */SIZE\\r\\n`` for 416).
    """
    body = error_body(status, detail)
    headers = f"Content-Type: text/plain; charset=utf-8\r\nContent-Length: {len(body)}\r\n{extra}"
    return head(status, headers, keep_alive=keep_alive) + (body if with_body else b"")


def html_response(status: int, body: bytes, *, keep_alive: bool, with_body: bool = True,
                  extra: str = "") -> bytes:
    """A generated HTML page (a directory listing) with its head."""
    headers = f"Content-Type: text/html; charset=utf-8\r\nContent-Length: {len(body)}\r\n{extra}"
    return head(status, headers, keep_alive=keep_alive) + (body if with_body else b"")
