"""``start_response`` and the response on the wire: checks, framing, ``write()``, file bodies.

:class:`Response` is one request's response.  ``start_response`` checks
what PEP 3333 and HTTP require of the status and headers (a status
``NNN reason``, field names that are tokens, values in latin-1 without
CR, LF or other controls, no hop-by-hop field: the server owns the
connection) and raises :class:`ResponseError` otherwise: the exchange
answers 500 and logs one line.  ``exc_info`` works as the PEP says: before
the head went out it replaces the response, after it re-raises.

The head goes out with the first non-empty body bytes (or at the end), so
its framing can be chosen: the application's ``Content-Length`` (honoured:
bytes beyond it are dropped, and a body that falls short closes the
connection), the length of a whole body known in advance (a list, a file),
chunked otherwise on HTTP/1.1, the end of the connection on HTTP/1.0.  A
HEAD request and a 1xx, 204 or 304 response carry no body.  ``Date`` and
``Server`` are added unless the application set them.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable
from typing import IO, Any

from servers.http import responses
from servers.http.parser import RequestHead

#: Fields only the server may send: they describe the connection, not the response (PEP 3333).
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
                        "transfer-encoding", "upgrade"})
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Controls no field value may hold (HTAB is allowed).
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_STATUS = re.compile(r"[1-5][0-9][0-9] [^\x00-\x1f\x7f]*")
# Statuses whose responses never carry a body (RFC 9110 sections 15.2, 15.3.5, 15.4.5).
_NO_BODY = frozenset({204, 304})

# An application mostly answers with the same status and headers again: what was checked
# and formatted for them is kept, by value (the status and the headers as a tuple).
# Checked: (status, headers) -> status code.  Heads: (status, headers, framing) -> (second,
# head bytes, length, chunked, keep-alive), reused until the Date changes.  Plain dicts:
# threads may both build an entry, and either one kept is right.
_CHECKED: dict[tuple[str, tuple[tuple[str, str], ...]], int] = {}
_HEADS: dict[tuple[object, ...], tuple[int, bytes, int | None, bool, bool]] = {}
#: Entries kept at most in each (then they are all forgotten: a new set builds up).
_KEPT = 256


class ResponseError(Exception):
    """The application broke the rules of ``start_response`` or of the body it returned."""


class FileWrapper:
    """``wsgi.file_wrapper``: a file the server sends with ``sendfile(2)`` when it can (iterable otherwise)."""

    def __init__(self, filelike: Any, blksize: int = 65536) -> None:
        self.filelike = filelike
        self.blksize = blksize
        close = getattr(filelike, "close", None)
        if close is not None:
            self.close = close

    def __iter__(self) -> Any:
        read = self.filelike.read
        while data := read(self.blksize):
            yield data


class Response:
    """The response to *request*; its bytes go to *send* (a port's ``write``), files to *sendfile*."""

    __slots__ = ("_keep_alive", "_key", "_no_body", "_send", "_sendfile", "chunked", "code", "head_sent",
                 "headers", "length", "request", "sent", "status")

    def __init__(self, request: RequestHead, keep_alive: bool, send: Callable[[bytes], None],
                 sendfile: Callable[[IO[bytes], int, int], None]) -> None:
        self.request = request
        self._keep_alive = keep_alive
        self._send = send
        self._sendfile = sendfile
        self.status: str | None = None
        self._key: tuple[str, tuple[tuple[str, str], ...]] | None = None
        self.code = 0
        self.headers: list[tuple[str, str]] = []
        #: The head is on the wire: the status can no longer change.
        self.head_sent = False
        #: The body length the head states (None: chunked or until the connection ends).
        self.length: int | None = None
        self.chunked = False
        self._no_body = request.method == b"HEAD"
        #: Body bytes sent (or, for HEAD, that would have been).
        self.sent = 0

    # -- what the application calls ------------------------------------------------

    def start_response(self, status: str, headers: list[tuple[str, str]],
                       exc_info: Any = None) -> Callable[[bytes], None]:
        """PEP 3333's ``start_response``: check and keep *status* and *headers*; return ``write``."""
        if exc_info is not None:
            try:
                if self.head_sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None  # no reference cycle through the traceback
        elif self.status is not None:
            raise ResponseError("start_response called a second time without exc_info")
        try:
            key = (status, tuple(headers))
            code = _CHECKED[key]
        except (KeyError, TypeError):
            code = _check(status, headers)
            key = (status, tuple(headers))
            if len(_CHECKED) >= _KEPT:
                _CHECKED.clear()
            _CHECKED[key] = code
        self.status, self.code, self.headers, self._key = status, code, headers, key
        self.length = None
        self._no_body = self.request.method == b"HEAD" or code in _NO_BODY or code < 200
        return self.write

    def write(self, data: bytes) -> None:
        """PEP 3333's ``write()`` callable (and each item of the body iterable): send *data*."""
        if type(data) is not bytes:
            if not isinstance(data, (bytes, bytearray)):
                raise ResponseError(f"the body must be bytes, not {type(data).__name__}")
            data = bytes(data)
        if not self.head_sent:
            if not data:
                return
            self._send_head(data, None)
            return
        self._send_body(data)

    # -- what the exchange calls ----------------------------------------------------------

    def send_whole(self, body: bytes) -> None:
        """The whole body at once (a one-item list): head and body in one write, with its length."""
        if self.head_sent:
            self._send_body(body)
        else:
            self._send_head(body, len(body))

    def send_file(self, file: IO[bytes]) -> bool:
        """Send a ``wsgi.file_wrapper`` file with sendfile from its position; False when it is no regular file."""
        try:
            fd = file.fileno()
            info = os.fstat(fd)
            offset = file.tell()
        except (AttributeError, OSError, ValueError, io_unsupported()):
            return False
        if not stat.S_ISREG(info.st_mode):
            return False
        count = max(0, info.st_size - offset)
        if not self.head_sent:
            self._send_head(b"", count)
        if self.length is not None:
            count = min(count, self.length - self.sent)
        if not self._no_body and count > 0:
            self._sendfile(file, offset, count)
        self.sent += count
        return True

    def finish(self) -> None:
        """The body is over: send the head if nothing did, end a chunked body."""
        if not self.head_sent:
            self._send_head(b"", 0)
        elif self.chunked:
            self._send(b"0\r\n\r\n")

    def keeps_alive(self) -> bool:
        """Whether the connection may carry another request after this response."""
        return self._keep_alive and (self.length is None or self._no_body or self.sent >= self.length)

    # -- the wire ------------------------------------------------------------------------------

    def _send_head(self, first: bytes, whole: int | None) -> None:
        """The head, with *first* body bytes after it; *whole* is the body's length when known."""
        if self.status is None:
            raise ResponseError("the application returned a body without calling start_response")
        key = (self._key, whole, self._keep_alive, self._no_body, self.request.version)
        kept = _HEADS.get(key)
        if kept is not None and kept[0] == responses.second():
            _, head, self.length, self.chunked, self._keep_alive = kept
        else:
            head = self._format_head(whole)
            if len(_HEADS) >= _KEPT:
                _HEADS.clear()
            _HEADS[key] = (responses.second(), head, self.length, self.chunked, self._keep_alive)
        self.head_sent = True
        if first and not self._no_body:
            first = self._framed(first)
            self._send(head + first if len(first) < 65536 else head)
            if len(first) >= 65536:
                self._send(first)
        else:
            self.sent += len(first)
            self._send(head)

    def _format_head(self, whole: int | None) -> bytes:
        """The head's bytes; sets the framing (:attr:`length`, :attr:`chunked`, keep-alive)."""
        lines = [f"HTTP/1.1 {self.status}\r\n"]
        append = lines.append
        dated = served = False
        length = None
        for name, value in self.headers:
            lower = name.lower()
            if lower == "content-length":
                length = _length(value)
                if self.code in _NO_BODY and self.code != 304:
                    continue
            elif lower == "date":
                dated = True
            elif lower == "server":
                served = True
            append(f"{name}: {value}\r\n")
        if not dated:
            append(f"Date: {responses.date()}\r\n")
        if not served:
            append(f"Server: {responses.SERVER_NAME}\r\n")
        no_body = self._no_body
        if length is None and self.code not in _NO_BODY and self.code >= 200:
            if whole is not None:
                length = whole
                append(f"Content-Length: {whole}\r\n")
            elif self.request.version >= (1, 1) and not no_body:
                self.chunked = True
                append("Transfer-Encoding: chunked\r\n")
            elif not no_body:
                self._keep_alive = False  # the body ends with the connection
        self.length = length
        append("Connection: keep-alive\r\n\r\n" if self._keep_alive else "Connection: close\r\n\r\n")
        try:
            return "".join(lines).encode("latin-1")
        except UnicodeEncodeError as exc:
            raise ResponseError(f"a header is not latin-1: {exc}") from None

    def _framed(self, data: bytes) -> bytes:
        """*data* as it goes on the wire: within the stated length, or as a chunk."""
        length = self.length
        if length is not None:
            room = length - self.sent
            if len(data) > room:
                data = data[:room]  # never more than the head announced
            self.sent += len(data)
            return data
        self.sent += len(data)
        if self.chunked:
            return b"%x\r\n%b\r\n" % (len(data), data)
        return data

    def _send_body(self, data: bytes) -> None:
        if not data:
            return
        if self._no_body:
            self.sent += len(data)
            return
        data = self._framed(data)
        if data:
            self._send(data)


def io_unsupported() -> type[Exception]:
    """``io.UnsupportedOperation`` (a file-like object without a descriptor)."""
    import io

    return io.UnsupportedOperation


def _length(value: str) -> int:
    if not value.isdigit() or not value.isascii() or len(value) > 18:
        raise ResponseError(f"invalid Content-Length {value!r}")
    return int(value)


def _check(status: object, headers: object) -> int:
    """The status code, once *status* and *headers* are found valid (:class:`ResponseError` otherwise)."""
    if type(status) is not str or not _STATUS.fullmatch(status):
        raise ResponseError(f"invalid status {status!r} (expected a str like '200 OK')")
    if type(headers) is not list:
        raise ResponseError(f"headers must be a list of (name, value) tuples, not {type(headers).__name__}")
    for header in headers:
        if type(header) is not tuple or len(header) != 2:
            raise ResponseError(f"invalid header {header!r} (expected a (name, value) tuple)")
        name, value = header
        if type(name) is not str or not _TOKEN.fullmatch(name):
            raise ResponseError(f"invalid header name {name!r}")
        if type(value) is not str or _BAD_VALUE.search(value):
            raise ResponseError(f"invalid value for header {name!r}: {value!r}")
        if name.lower() in HOP_BY_HOP:
            raise ResponseError(f"hop-by-hop header {name!r} is the server's to send")
    code = int(status[:3])
    if code < 200:
        raise ResponseError(f"an application cannot send an interim (1xx) status: {status!r}")
    return code
