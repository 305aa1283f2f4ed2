"""``multipart/byteranges`` (RFC 9110 section 14.6): the frame around several ranges of one file.

Only the frame is built here (each part's head, and the closing
delimiter); the parts' bytes still go from the file to the socket with
``sendfile``, never through Python.
"""

from __future__ import annotations

import dataclasses
import os


@dataclasses.dataclass(slots=True)
class Byteranges:
    """The frame of a multipart body: send each part head then its file segment, then *tail*."""

    #: The response's ``Content-Type`` (with the boundary).
    content_type: str
    #: ``(part head, offset, count)`` for each range, in order.
    parts: list[tuple[bytes, int, int]]
    tail: bytes
    #: The whole body's length: every part head, segment and the tail.
    length: int


def byteranges(spans: list[tuple[int, int]], part_type: str, size: int) -> Byteranges:
    """The frame for *spans* (inclusive ``(first, last)``) of a *size*-byte file of type *part_type*.

    The boundary is random, so a file cannot be crafted to contain it.
    """
    boundary = os.urandom(12).hex()
    parts = []
    length = 0
    for index, (first, last) in enumerate(spans):
        # The CRLF before each delimiter belongs to the delimiter (RFC 2046 section 5.1.1).
        delimiter = f"--{boundary}\r\n" if index == 0 else f"\r\n--{boundary}\r\n"
        part_head = (f"{delimiter}Content-Type: {part_type}\r\n"
                     f"Content-Range: bytes {first}-{last}/{size}\r\n\r\n").encode("latin-1")
        count = last - first + 1
        parts.append((part_head, first, count))
        length += len(part_head) + count
    tail = f"\r\n--{boundary}--\r\n".encode("latin-1")
    return Byteranges(f"multipart/byteranges; boundary={boundary}", parts, tail, length + len(tail))
