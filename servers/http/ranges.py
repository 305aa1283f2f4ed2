"""Byte ranges (RFC 9110 section 14): which part of a file a ``Range`` header asks for.

One range is served as 206; several ranges fall back to the whole file
(allowed, and it spares a multipart body); a syntactically invalid header
is ignored, as the RFC asks; a valid one that no byte satisfies is 416.
"""

from __future__ import annotations


class Unsatisfiable(Exception):
    """No byte of the file is in the requested range: answer 416 with ``Content-Range: bytes */SIZE``."""


def parse_range(header: bytes, size: int) -> tuple[int, int] | None:
    """``(first, last)`` (inclusive) of the one range *header* asks of a *size*-byte file.

    None means "send the whole file" (invalid syntax, another unit, several
    ranges); raises :class:`Unsatisfiable` for a range past the end.
    """
    unit, equals, spec = header.partition(b"=")
    if not equals or unit.strip().lower() != b"bytes":
        return None
    specs = [part.strip() for part in spec.split(b",") if part.strip()]
    if len(specs) != 1:
        return None
    first_text, dash, last_text = specs[0].partition(b"-")
    if not dash or not (first_text.isdigit() or first_text == b"") or not (last_text.isdigit() or last_text == b""):
        return None
    if not first_text:
        if not last_text:
            return None
        suffix = int(last_text)
        if suffix == 0 or size == 0:
            raise Unsatisfiable
        return max(0, size - suffix), size - 1
    first = int(first_text)
    if last_text and int(last_text) < first:
        return None
    if first >= size:
        raise Unsatisfiable
    last = int(last_text) if last_text else size - 1
    return first, min(last, size - 1)
