"""Content coding (RFC 9110 sections 8.4 and 12.5.3): precompressed siblings, chosen by ``Accept-Encoding``.

A file ``style.css`` may have siblings ``style.css.br`` and ``style.css.gz``
prepared in advance; :class:`Siblings` finds them (and remembers for a
while which a file has, so that a file without any costs no ``stat`` per
request), and :func:`choose_coding` picks the one the client prefers.  The
server never compresses anything itself.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from servers.http.files import ENTRY_TTL, MAX_ENTRIES

#: The codings served from a sibling file, with its suffix, in order of preference on equal weights.
CODINGS: tuple[tuple[str, str], ...] = (("br", ".br"), ("gzip", ".gz"))

# Names that stand for the same coding (RFC 9110 section 8.4.1.3: x-gzip is gzip).
_ALIASES = {"x-gzip": "gzip"}
# A weight is kept in thousandths (q=0.5 -> 500), as the grammar has three decimals at most.
_FULL = 1000


def _weight(parameters: list[str]) -> int | None:
    """The ``q`` parameter among *parameters* in thousandths (1000 when absent); None when malformed."""
    for parameter in parameters:
        name, equals, value = parameter.partition("=")
        if name.strip().lower() != "q":
            continue
        value = value.strip()
        whole, _, decimals = value.partition(".")
        if not equals or whole not in ("0", "1") or len(decimals) > 3 \
                or (decimals and not (decimals.isascii() and decimals.isdigit())):
            return None
        weight = int(whole) * _FULL + int(decimals.ljust(3, "0"))
        return weight if weight <= _FULL else None
    return _FULL


def weights(header: bytes) -> dict[str, int]:
    """Each coding the ``Accept-Encoding`` *header* names (lower-cased, ``*`` included) with its weight.

    A member whose weight is malformed is left out; a coding named twice keeps its first weight.
    """
    found: dict[str, int] = {}
    for member in header.decode("latin-1").split(","):
        coding, *parameters = member.split(";")
        coding = coding.strip().lower()
        if not coding:
            continue
        weight = _weight(parameters)
        if weight is not None:
            found.setdefault(_ALIASES.get(coding, coding), weight)
    return found


def choose_coding(header: bytes | None, offered: list[str]) -> str | None:
    """The coding among *offered* (in preference order) to send; None for the file as it is (identity).

    Without the header, identity (a client that says nothing gets the plain
    file).  A coding is chosen when its weight is above zero and no lower than
    identity's; when nothing at all is acceptable, identity is sent anyway
    (RFC 9110 allows ignoring the header rather than answering 406).
    """
    if header is None or not offered:
        return None
    found = weights(header)
    star = found.get("*")
    identity = found.get("identity", _FULL if star is None else star)
    best, best_weight = None, 0
    for coding in offered:
        weight = found.get(coding, 0 if star is None else star)
        if weight > best_weight:
            best, best_weight = coding, weight
    return best if best is not None and best_weight >= identity else None


class Siblings:
    """Which precompressed siblings each file has, remembered for *ttl* seconds.

    *find* maps a sibling's path to the path to open (None when there is no
    regular file there that may be served).
    """

    def __init__(self, find: Callable[[str], str | None], *, ttl: float = ENTRY_TTL,
                 max_entries: int = MAX_ENTRIES) -> None:
        self.find = find
        self.ttl = ttl
        self.max_entries = max_entries
        self._known: dict[str, tuple[float, tuple[tuple[str, str], ...]]] = {}
        self._lock = threading.Lock()

    def of(self, path: str) -> tuple[tuple[str, str], ...]:
        """``(coding, sibling path)`` for each sibling of the file at *path*, in preference order."""
        now = time.monotonic()
        known = self._known.get(path)
        if known is not None and now - known[0] <= self.ttl:
            return known[1]
        found = []
        for coding, suffix in CODINGS:
            sibling = self.find(path + suffix)
            if sibling is not None:
                found.append((coding, sibling))
        siblings = tuple(found)
        with self._lock:
            while len(self._known) >= self.max_entries:
                self._known.pop(next(iter(self._known)), None)
            self._known[path] = (now, siblings)
        return siblings
