"""An incremental HTTP/1.x request-head parser: bytes in, :class:`RequestHead` or :class:`RequestError` out.

Feed it chunks split anywhere (down to single bytes) with :meth:`HeadParser.feed`
and ask for the next complete head with :meth:`HeadParser.next_head`.  It knows
the limits that keep a server safe (request line, head size, field count), the
framing rules that keep it unambiguous (``Content-Length`` and
``Transfer-Encoding``; RFC 9112 section 6), and nothing about files.

The head is searched for incrementally (no rescanning of bytes already seen,
so a head trickled byte by byte costs linear time), and every pattern is a
plain byte-string operation: no regular expression, no ``email`` parser.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Protocol

#: Longest request line accepted (method, target and version), in bytes: longer gets 414.
MAX_REQUEST_LINE = 8192
#: Longest request head accepted (request line and fields), in bytes: longer gets 431.
MAX_HEAD = 65536
#: Most header fields accepted in one request: more gets 431.
MAX_FIELDS = 100

#: The methods HTTP defines that this server knows but does not serve: 405.
KNOWN_METHODS = frozenset({b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS", b"TRACE", b"CONNECT"})
#: The methods it serves.
SERVED_METHODS = frozenset({b"GET", b"HEAD"})

#: tchar (RFC 9110 section 5.6.2): what a method, a field name or any other token may contain.
TOKEN_BYTES = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
# Control characters no part of a head may hold (HTAB, CR and LF are checked where they matter).
_HEAD_CONTROLS = bytes(c for c in range(32) if c not in (9, 10, 13)) + b"\x7f"
_DIGITS = frozenset(b"0123456789")
# How much of a refused request line the access log shows.
_LOGGED_LINE = 1024


class BodyReader(Protocol):
    """What :meth:`HeadParser.skip_body` drives (see :mod:`servers.http.body`)."""

    def consume(self, buffer: bytearray, sink: Callable[[bytes | bytearray], object] | None = None) -> bool:
        """Take body bytes from the front of *buffer* (handing them to *sink*); True once the body ended."""


class RequestError(Exception):
    """A request the server must refuse: *status* says how (400, 414, 431, 501, 505).

    Every such error leaves the connection's framing in doubt, so the server
    answers once and closes.
    """

    def __init__(self, status: int, detail: str, request_line: bytes = b"") -> None:
        super().__init__(f"{status}: {detail}")
        self.status = status
        self.detail = detail
        #: What was received of the request line (for the access log).
        self.request_line = request_line


@dataclasses.dataclass(slots=True)
class RequestHead:
    """One parsed request head.

    Field names are lower-cased; a repeated field's values are joined with
    ``", "`` (RFC 9110 section 5.3), so ``fields`` is a plain dict.  Read
    only: a :class:`HeadParser` hands the same object again for a repeated head.
    """

    method: bytes
    target: bytes
    version: tuple[int, int]
    fields: dict[bytes, bytes]
    #: The request line as received (for the access log).
    request_line: bytes
    #: Body bytes that follow the head (from Content-Length; 0 when none).
    content_length: int = 0
    #: True when a chunked body follows (its end is found by :class:`servers.http.body.ChunkedBody`).
    chunked: bool = False
    #: Whether the connection may carry another request after this one.
    keep_alive: bool = True
    #: Whether the client asked for ``Expect: 100-continue``.
    expects_continue: bool = False


def _parse_version(text: bytes) -> tuple[int, int]:
    """``HTTP/1.1`` -> ``(1, 1)``; 400 when malformed, 505 for HTTP/2 and later (or before 1.0)."""
    if len(text) != 8 or not text.startswith(b"HTTP/") or text[6:7] != b"." \
            or text[5] not in _DIGITS or text[7] not in _DIGITS:
        raise RequestError(400, "malformed HTTP version")
    major, minor = text[5] - 48, text[7] - 48
    if major != 1:
        raise RequestError(505, f"HTTP/{major}.{minor} is not supported")
    return major, minor


def _connection_tokens(value: bytes) -> set[bytes]:
    return {token.strip().lower() for token in value.split(b",")}


def _content_length(value: bytes) -> int:
    """The length a Content-Length field states; 400 for anything but one field of digits.

    A repeated field (joined with ``,`` by :func:`parse_fields`) or a list is
    refused even when its values agree, as llhttp and gunicorn refuse it:
    RFC 9112 section 6.3 allows that, and a front end that took the first of
    two and a server that took the second would frame the body differently.
    """
    if b"," in value:
        lengths = {part.strip() for part in value.split(b",")}
        raise RequestError(400, "conflicting Content-Length values" if len(lengths) > 1
                           else "more than one Content-Length")
    length = value.strip()
    if not length or not _DIGITS.issuperset(length) or len(length) > 18:
        raise RequestError(400, "invalid Content-Length")
    return int(length)


def parse_fields(lines: list[bytes]) -> dict[bytes, bytes]:
    """Field lines (no line ends) -> values by lower-cased name; 400 when one is malformed.

    A repeated field's values are joined with ``, `` (RFC 9110 section 5.3),
    except ``Host``, which may appear once.  Used for the head's fields and a
    chunked body's trailer fields alike.
    """
    fields: dict[bytes, bytes] = {}
    for line in lines:
        name, colon, value = line.partition(b":")
        if not colon or not name or not TOKEN_BYTES.issuperset(name):
            if line[:1] in (b" ", b"\t"):
                raise RequestError(400, "obsolete line folding")
            raise RequestError(400, "malformed header field")
        if b"\r" in value:
            raise RequestError(400, "CR in header value")
        name = name.lower()
        value = value.strip(b" \t")
        previous = fields.get(name)
        if previous is None:
            fields[name] = value
        elif name == b"host":
            raise RequestError(400, "more than one Host field")
        else:
            fields[name] = previous + b", " + value
    return fields


def parse_head(block: bytes) -> RequestHead:
    """Parse one complete head (*block* ends just before its blank line).

    Raises :class:`RequestError` for anything malformed or unsupported.
    """
    # RFC 9112 section 2.2 lets a recipient take a bare LF as a line end; a
    # server behind a proxy must not: where a front end that ends lines only
    # at CRLF sees one field (``Dummy: x\nContent-Length: 23``), this server
    # would see two, and the two would disagree about where the next request
    # starts (request smuggling).  So every LF must end a CRLF.
    if block.count(b"\n") != block.count(b"\r\n"):
        raise RequestError(400, "bare LF in request head")
    lines = block.split(b"\r\n")
    request_line = lines[0]
    if len(request_line) > MAX_REQUEST_LINE:
        raise RequestError(414, "request line too long")
    if len(lines) - 1 > MAX_FIELDS:
        raise RequestError(431, "too many header fields")
    # One pass over the whole head for the control characters nothing may
    # contain; what is left (a CR inside a line, a TAB or non-ASCII in the
    # target) is checked where it matters.
    if block.translate(None, _HEAD_CONTROLS) != block:
        raise RequestError(400, "control character in request head")
    parts = request_line.split(b" ")
    if len(parts) != 3:
        raise RequestError(400, "malformed request line")
    method, target, version_text = parts
    if not method or not TOKEN_BYTES.issuperset(method):
        raise RequestError(400, "malformed method")
    if not target or not target.isascii() or b"\t" in target or b"\r" in target:
        raise RequestError(400, "malformed request target")
    version = _parse_version(version_text)
    fields = parse_fields(lines[1:])
    head = RequestHead(method, target, version, fields, request_line)
    _check_framing(head)
    return head


def _check_framing(head: RequestHead) -> None:
    """Fill in the body length, chunked flag, keep-alive and Expect from the fields."""
    fields = head.fields
    if head.version >= (1, 1) and b"host" not in fields:
        raise RequestError(400, "HTTP/1.1 request without Host")
    connection = fields.get(b"connection")
    tokens = _connection_tokens(connection) if connection is not None else set()
    if head.version >= (1, 1):
        head.keep_alive = b"close" not in tokens
    else:
        head.keep_alive = b"keep-alive" in tokens and b"close" not in tokens
    transfer_encoding = fields.get(b"transfer-encoding")
    if transfer_encoding is not None:
        if b"content-length" in fields:
            raise RequestError(400, "both Transfer-Encoding and Content-Length")  # request smuggling
        if head.version < (1, 1):
            raise RequestError(400, "Transfer-Encoding in an HTTP/1.0 request")
        codings = [coding.strip().lower() for coding in transfer_encoding.split(b",")]
        if codings[-1] != b"chunked" or b"chunked" in codings[:-1]:
            raise RequestError(400, "chunked must be the final transfer coding, once")
        if any(coding not in (b"chunked", b"gzip", b"deflate", b"compress", b"x-gzip") for coding in codings):
            raise RequestError(501, "unknown transfer coding")
        head.chunked = True
    elif (length := fields.get(b"content-length")) is not None:
        head.content_length = _content_length(length)
    expect = fields.get(b"expect")
    head.expects_continue = expect is not None and expect.lower() == b"100-continue"


class HeadParser:
    """Collects bytes and cuts them into request heads; what follows a head stays buffered.

    Call :meth:`feed` with each chunk, then :meth:`next_head` until it
    returns None (more bytes needed).  Body bytes are taken with
    :meth:`skip_body` before the next head is looked for.
    """

    __slots__ = ("_buffer", "_last_head", "_last_raw", "_scanned")

    def __init__(self) -> None:
        self._buffer = bytearray()
        # How far the buffer has been searched for the end of the head, so a
        # head trickled in byte by byte is not rescanned from its start.
        self._scanned = 0
        # The last head parsed and the bytes it was cut from (its blank line
        # included): a keep-alive client mostly repeats its head byte for byte,
        # and parsing is a pure function of those bytes.
        self._last_raw = b""
        self._last_head: RequestHead | None = None

    def feed(self, data: bytes) -> None:
        """Append *data* to what is buffered."""
        self._buffer += data

    @property
    def buffered(self) -> int:
        """How many bytes are waiting (a partial head, or pipelined requests)."""
        return len(self._buffer)

    def skip_body(self, body: BodyReader, sink: Callable[[bytes | bytearray], object] | None = None) -> bool:
        """Let *body* take its bytes from the front of the buffer (to *sink*, or dropped); True once it ended.

        What follows the body (the next request) stays buffered.
        """
        done = body.consume(self._buffer, sink)
        self._scanned = 0
        return done

    def next_head(self) -> RequestHead | None:
        """The next complete request head, or None when more bytes are needed.

        Raises :class:`RequestError` for a bad head (including one that
        exceeds a limit before it is complete).
        """
        buffer = self._buffer
        if self._last_head is not None and buffer == self._last_raw:
            # Exactly the last head again and nothing more (a keep-alive client's next request).
            buffer.clear()
            self._scanned = 0
            return self._last_head
        # RFC 9112 section 2.2: ignore empty lines before a request line.
        if buffer and buffer[0] in (13, 10):  # CR, LF
            stripped = buffer.lstrip(b"\r\n")
            if len(stripped) < len(buffer):
                del buffer[:len(buffer) - len(stripped)]
                self._scanned = 0
        start = max(0, self._scanned - 3)
        end = buffer.find(b"\n\r\n", start)
        bare = buffer.find(b"\n\n", start, end + 2 if end >= 0 else len(buffer))
        if bare >= 0:
            # The blank line that ends this head is a bare LF: refused (see parse_head),
            # but only now, so that what came before is logged as usual.
            block = bytes(buffer[:bare])
            del buffer[:bare + 2]
            self._scanned = 0
            raise RequestError(400, "bare LF in request head",
                               block.partition(b"\n")[0].removesuffix(b"\r")[:_LOGGED_LINE])
        if end < 0:
            self._scanned = len(buffer)
            self._check_partial()
            return None
        if end > MAX_HEAD:
            raise RequestError(431, "request head too large", self._first_line())
        raw = bytes(buffer[:end + 3])
        del buffer[:end + 3]
        self._scanned = 0
        if raw == self._last_raw:
            return self._last_head  # the same bytes parse the same (heads are not changed once parsed)
        # The head's last line ends just before *end*: with its CR, or with a bare LF
        # that parse_head refuses.
        block = raw[:end - 1] if raw[end - 1] == 13 else raw[:end + 1]
        try:
            head = parse_head(block)
        except RequestError as refused:
            refused.request_line = block.partition(b"\n")[0].removesuffix(b"\r")[:_LOGGED_LINE]
            raise
        self._last_raw, self._last_head = raw, head
        return head

    def _check_partial(self) -> None:
        """Refuse an incomplete head that is already over a limit."""
        buffer = self._buffer
        if len(buffer) > MAX_REQUEST_LINE + 2 and buffer.find(b"\n", 0, MAX_REQUEST_LINE + 2) < 0:
            raise RequestError(414, "request line too long", self._first_line())
        if len(buffer) > MAX_HEAD + 4:
            raise RequestError(431, "request head too large", self._first_line())

    def _first_line(self) -> bytes:
        return bytes(self._buffer[:_LOGGED_LINE]).partition(b"\n")[0].removesuffix(b"\r")
