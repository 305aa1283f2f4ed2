"""Request bodies: framed, bounded, and skipped or decoded.

To keep a connection for the next request, a body must be read to its end
exactly as the client framed it, and no further: :class:`LengthBody` for
``Content-Length``, :class:`ChunkedBody` for ``Transfer-Encoding: chunked``
(RFC 9112 section 7.1: chunk sizes, extensions, trailer fields).  Both take
bytes from the front of the connection's buffer and leave what follows (the
next request) in place; given a *sink*, they hand it the body's data (decoded,
for chunked) instead of dropping it.  A body nobody reads (a GET with
``Content-Length``, a POST answered 405) is skipped; an application's is
decoded for it.

Every body is bounded in size (:data:`MAX_BODY` bytes on the wire, framing
included, for a skipped body; the reader's own bound otherwise); the
protocol bounds it in time.  A body over the bound, or a chunked body
framed wrongly, raises :class:`BodyError`: its end is unknown, so the
connection must end.
"""

from __future__ import annotations

from collections.abc import Callable

from servers.http.parser import MAX_FIELDS, MAX_HEAD, TOKEN_BYTES, RequestError, parse_fields

#: Most bytes of a request body read and thrown away to keep a connection (more: close).
MAX_BODY = 1 << 20
#: Longest chunk-size line (size and extensions), in bytes.
MAX_CHUNK_LINE = 4096

_HEX = frozenset(b"0123456789abcdefABCDEF")
# Bytes no chunk line may hold (a CR or LF inside one would make it readable two ways).
_LINE_CONTROLS = bytes(c for c in range(32) if c != 9) + b"\x7f"
# Chunk sizes are read only up to this many significant hex digits: more is beyond any bound.
_MAX_SIZE_DIGITS = 16


#: Where decoded body bytes go (``bytearray.extend``, a spool's ``write``); None: dropped.
Sink = Callable[[bytes | bytearray], object] | None


class BodyError(Exception):
    """A body that cannot be read safely (too large, or chunked framing broken)."""

    #: The status a request gets for it while its response has not started.
    status = 400


class BodyTooLarge(BodyError):
    """A body over the reader's bound: 413 while the response has not started."""

    status = 413


class LengthBody:
    """A body of a length known in advance (``Content-Length``)."""

    __slots__ = ("remaining",)

    def __init__(self, length: int) -> None:
        self.remaining = length

    def consume(self, buffer: bytearray, sink: Sink = None) -> bool:
        """Take body bytes from the front of *buffer* (to *sink*, if any); True once the whole body is gone."""
        taken = min(self.remaining, len(buffer))
        if sink is not None and taken:
            sink(buffer[:taken] if taken < len(buffer) else bytes(buffer))
        del buffer[:taken]
        self.remaining -= taken
        return not self.remaining


class ChunkedBody:
    """A chunked body, decoded just enough to find its end (RFC 9112 section 7.1).

    Lines end in CRLF only (a bare LF is refused here as in the head, for
    the same reason); sizes are hexadecimal of any length (leading zeros
    included) but bounded by *limit*; extensions are checked for their
    grammar and ignored; trailer fields are checked like header fields and
    ignored, at most :data:`~servers.http.parser.MAX_FIELDS` of them in at
    most :data:`~servers.http.parser.MAX_HEAD` bytes.
    """

    __slots__ = ("_chunk_left", "_limit", "_state", "_trailer_bytes", "_trailer_fields")

    def __init__(self, limit: int = MAX_BODY) -> None:
        # The bytes still allowed on the wire, framing included.
        self._limit = limit
        self._state = "size"  # size, data, data-end, trailer
        self._chunk_left = 0
        self._trailer_bytes = 0
        self._trailer_fields = 0

    def consume(self, buffer: bytearray, sink: Sink = None) -> bool:
        """Take body bytes from the front of *buffer* (data to *sink*, if any); True once the last
        chunk and trailers are gone.

        Raises :class:`BodyError` when the body breaks the framing or a limit.
        """
        while buffer:
            if self._state == "data":
                taken = min(self._chunk_left, len(buffer))
                if sink is not None and taken:
                    sink(buffer[:taken])
                self._take(buffer, taken)
                self._chunk_left -= taken
                if self._chunk_left:
                    return False
                self._state = "data-end"
                continue
            if self._state == "data-end":
                if len(buffer) < 2:
                    return False
                if buffer[:2] != b"\r\n":
                    raise BodyError("chunk data not followed by CRLF")
                self._take(buffer, 2)
                self._state = "size"
                continue
            line = self._line(buffer)
            if line is None:
                return False
            if self._state == "size":
                self._chunk_left = _chunk_size(line)
                if self._chunk_left > self._limit:
                    raise BodyTooLarge("chunked body over the size limit")
                self._state = "data" if self._chunk_left else "trailer"
            elif not line:
                return True  # the empty line after the trailer section
            else:
                self._trailer_field(line)
        return False

    def _take(self, buffer: bytearray, count: int) -> None:
        if count > self._limit:
            raise BodyTooLarge("chunked body over the size limit")
        self._limit -= count
        del buffer[:count]

    def _line(self, buffer: bytearray) -> bytes | None:
        """The next CRLF-ended line (without its CRLF), taken from *buffer*; None when incomplete."""
        longest = MAX_CHUNK_LINE if self._state == "size" else MAX_HEAD
        end = buffer.find(b"\n", 0, longest + 2)
        if end < 0:
            if len(buffer) > longest + 1:
                raise BodyError("chunk line too long")
            return None
        if end == 0 or buffer[end - 1] != 13:
            raise BodyError("chunk line not ended by CRLF")
        line = bytes(buffer[:end - 1])
        self._take(buffer, end + 1)
        if line.translate(None, _LINE_CONTROLS) != line:
            raise BodyError("control character in a chunk line")
        return line

    def _trailer_field(self, line: bytes) -> None:
        self._trailer_fields += 1
        self._trailer_bytes += len(line) + 2
        if self._trailer_fields > MAX_FIELDS or self._trailer_bytes > MAX_HEAD:
            raise BodyError("trailer section too large")
        try:
            parse_fields([line])
        except RequestError as refused:
            raise BodyError(f"trailer field: {refused.detail}") from None


def _chunk_size(line: bytes) -> int:
    """The size a chunk-size line states (its extensions checked, then ignored)."""
    size_text, semicolon, extensions = line.partition(b";")
    size_text = size_text.rstrip(b" \t")  # BWS before the first ';'
    if not size_text or not _HEX.issuperset(size_text):
        raise BodyError("malformed chunk size")
    if semicolon:
        _check_extensions(extensions)
    significant = size_text.lstrip(b"0")
    if len(significant) > _MAX_SIZE_DIGITS:
        return 1 << 64  # beyond any limit, without converting thousands of digits
    return int(significant or b"0", 16)


def _check_extensions(text: bytes) -> None:
    """``name[=value]`` items separated by ``;`` (*text* follows the first ``;``); value a token or quoted."""
    position, end = 0, len(text)
    while True:
        position = _skip_blanks(text, position)
        start = position
        while position < end and text[position] in TOKEN_BYTES:
            position += 1
        if position == start:
            raise BodyError("malformed chunk extension")
        position = _skip_blanks(text, position)
        if position < end and text[position] == 61:  # '='
            position = _skip_blanks(text, position + 1)
            position = _extension_value(text, position)
            position = _skip_blanks(text, position)
        if position == end:
            return
        if text[position] != 59:  # ';'
            raise BodyError("malformed chunk extension")
        position += 1


def _extension_value(text: bytes, position: int) -> int:
    """Where the token or quoted-string starting at *position* ends."""
    end = len(text)
    if position < end and text[position] == 34:  # '"'
        position += 1
        while position < end:
            byte = text[position]
            if byte == 34:
                return position + 1
            position += 2 if byte == 92 else 1  # a backslash quotes the next byte
        raise BodyError("unterminated quoted string in chunk extension")
    start = position
    while position < end and text[position] in TOKEN_BYTES:
        position += 1
    if position == start:
        raise BodyError("malformed chunk extension value")
    return position


def _skip_blanks(text: bytes, position: int) -> int:
    while position < len(text) and text[position] in (32, 9):
        position += 1
    return position
