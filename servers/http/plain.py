"""Reused responses: a plain GET or HEAD of a cached file is answered with bytes built once a second.

A *plain* request asks for a file as it is: no ``Range``, no precondition,
no ``Accept-Encoding`` (which may select another representation).  Its
response depends only on the file (its :class:`~servers.http.files.FileEntry`),
the method, keep-alive, the ``Date`` (one value per second) and whether a
precompressed sibling exists (the ``Vary`` line; like the file itself, seen
at most a second late).  So the
response the site builds for the first such request is kept on the entry
and handed out again, unchanged, until the second turns (or the entry is
replaced, when the file changes): no header is formatted per request.

A request with any field of :data:`SELECTING_FIELDS` is never answered from
here: it goes through the full conditional, range and content-coding logic.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Protocol

#: Request fields that can change what a file's response is (status, headers or body).
SELECTING_FIELDS = frozenset({
    b"range", b"if-range", b"if-match", b"if-none-match", b"if-modified-since", b"if-unmodified-since",
    b"accept-encoding",
})


class HasResponses(Protocol):
    """What keeps reusable responses: a file entry's ``responses`` dict."""

    responses: dict[int, tuple[int, Any]]


def is_plain(fields: Mapping[bytes, bytes]) -> bool:
    """True when no field of the request can select another response than the plain one."""
    return fields.keys().isdisjoint(SELECTING_FIELDS)


def variant(keep_alive: bool, with_body: bool) -> int:
    """The small number that tells the responses of one entry apart (no tuple made per request)."""
    return (2 if keep_alive else 0) + (1 if with_body else 0)


def kept(owner: HasResponses, which: int) -> Any:
    """The response kept on *owner* for variant *which* during this second, or None."""
    pair = owner.responses.get(which)
    if pair is not None and pair[0] == int(time.time()):
        return pair[1]
    return None


def keep(owner: HasResponses, which: int, response: object) -> None:
    """Keep *response* on *owner* for variant *which* until the second turns.

    Threads may build the same response at once: both are right, one is kept.
    One assignment of a fresh tuple: a reader sees the old pair or the new one, never a mix.
    """
    owner.responses[which] = (int(time.time()), response)
