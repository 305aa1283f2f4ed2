"""Reused responses: a plain GET or HEAD of a cached file is answered with bytes built once a second.

A *plain* request asks for a file as it is: no ``Range``, no precondition,
no ``Accept-Encoding`` (which may select another representation).  Its
response depends only on the file (its :class:`~servers.http.files.FileEntry`),
the method, keep-alive, and the ``Date`` (one value per second).  So the
response the site builds for the first such request is kept on the entry
and handed out again, unchanged, until the second turns (or the entry is
replaced, when the file changes): no header is formatted per request.

A request with any field of :data:`SELECTING_FIELDS` is never answered from
here: it goes through the full conditional, range and content-coding logic.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Mapping
from typing import Protocol, TypeVar, cast

#: Request fields that can change what a file's response is (status, headers or body).
SELECTING_FIELDS = frozenset({
    b"range", b"if-range", b"if-match", b"if-none-match", b"if-modified-since", b"if-unmodified-since",
    b"accept-encoding",
})

T = TypeVar("T")


class HasResponses(Protocol):
    """What keeps reusable responses: a file entry's ``responses`` dict."""

    responses: dict[Hashable, tuple[int, object]]


def is_plain(fields: Mapping[bytes, bytes]) -> bool:
    """True when no field of the request can select another response than the plain one."""
    return fields.keys().isdisjoint(SELECTING_FIELDS)


def reuse(owner: HasResponses, variant: Hashable, build: Callable[[], T]) -> T:
    """The response kept on *owner* for *variant* during this second, or a new one from *build* (then kept).

    Threads may build the same response at once: both are right, one is kept.
    """
    second = int(time.time())
    kept = owner.responses.get(variant)
    if kept is not None:
        made, response = kept
        if made == second:
            return cast(T, response)
    built = build()
    # One assignment of a fresh tuple: a thread reading it sees the old pair or the new one, never a mix.
    owner.responses[variant] = (second, built)
    return built
