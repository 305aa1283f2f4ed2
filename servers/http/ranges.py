"""Byte ranges (RFC 9110 section 14): which parts of a file a ``Range`` header asks for.

:func:`parse_ranges` turns the header into the spans to send, sorted, with
overlapping and adjacent ones coalesced (so no byte is sent twice however the
ranges are written).  A syntactically invalid header is ignored, as the RFC
asks; so is one with more than :data:`MAX_RANGES` ranges (section 14.2 lets a
server ignore what looks like a denial of service: CVE-2011-3192 asked Apache
for the same file hundreds of times over in one request).  A valid header that
no byte satisfies is 416.  Numbers of any length are read without ``int()``
on thousands of digits (which raises beyond 4,300).
"""

from __future__ import annotations

#: Most ranges one ``Range`` header may list; more and the header is ignored (200 with the whole file).
MAX_RANGES = 32

# Positions are at most 18 digits here (no file is an exabyte); a longer number is past any end.
_MAX_DIGITS = 18
_HUGE: int = 10 ** _MAX_DIGITS


class Unsatisfiable(Exception):
    """No byte of the file is in the requested ranges: answer 416 with ``Content-Range: bytes */SIZE``."""


def _position(text: bytes) -> int | None:
    """A decimal position of any length (None when not all ASCII digits); past :data:`_HUGE` reads as it."""
    if not text.isdigit():
        return None
    significant = text.lstrip(b"0")
    if len(significant) > _MAX_DIGITS:
        return _HUGE
    return int(significant.decode("ascii") or "0")


def parse_ranges(header: bytes, size: int) -> list[tuple[int, int]] | None:
    """The ``(first, last)`` spans (inclusive, sorted, coalesced) that *header* asks of a *size*-byte file.

    None means "send the whole file": another unit, invalid syntax, too many
    ranges.  Raises :class:`Unsatisfiable` when the header is valid but no
    range overlaps the file.
    """
    unit, equals, spec = header.partition(b"=")
    if not equals or unit.strip(b" \t").lower() != b"bytes":
        return None
    if spec.count(b",") >= MAX_RANGES * 2:
        return None  # far too many items, empty ones included: not worth splitting
    items = [item.strip(b" \t") for item in spec.split(b",")]
    specs = [item for item in items if item]
    if not specs or len(specs) > MAX_RANGES:
        return None
    spans = []
    for item in specs:
        first_text, dash, last_text = item.partition(b"-")
        if not dash:
            return None
        first = _position(first_text) if first_text else -1
        last = _position(last_text) if last_text else -1
        if first is None or last is None or (first < 0 and last < 0):
            return None
        if first < 0:  # a suffix: the last *last* bytes
            if last > 0 and size > 0:
                spans.append((max(0, size - last), size - 1))
        elif last >= 0 and last < first:
            return None  # an invalid range-spec makes the whole header invalid
        elif first < size:
            spans.append((first, size - 1 if last < 0 else min(last, size - 1)))
    if not spans:
        raise Unsatisfiable
    return _coalesce(spans)


def _coalesce(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted *spans* with those that overlap or touch merged (RFC 9110 section 14.6 allows it)."""
    spans.sort()
    merged = [spans[0]]
    for first, last in spans[1:]:
        previous_first, previous_last = merged[-1]
        if first <= previous_last + 1:
            merged[-1] = (previous_first, max(previous_last, last))
        else:
            merged.append((first, last))
    return merged
