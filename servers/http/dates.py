"""HTTP dates (RFC 9110 section 5.6.7): formatting, a per-second cache, and lenient parsing.

Written out by hand rather than through ``email.utils``: formatting is on
every response, and parsing must accept the three historical forms and
refuse anything else without raising.
"""

from __future__ import annotations

import calendar
import time

_WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MONTH_NUMBERS = {name.lower(): number for number, name in enumerate(_MONTHS, 1)}
# The longest date form (RFC 850 with the longest weekday) with room for extra spaces.
_LONGEST_DATE = 64


def http_date(timestamp: float) -> str:
    """``Sun, 06 Nov 1994 08:49:37 GMT`` (IMF-fixdate) for a Unix *timestamp*."""
    t = time.gmtime(timestamp)
    return (f"{_WEEKDAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year}"
            f" {t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT")


class DateCache:
    """The ``Date`` value for now, formatted at most once a second."""

    __slots__ = ("_second", "_value")

    def __init__(self) -> None:
        self._second = -1
        self._value = ""

    def now(self) -> str:
        """Today's ``Date`` value."""
        second = int(time.time())
        if second != self._second:
            # Two threads may both refresh it: harmless, they compute the same text.
            self._value = http_date(second)
            self._second = second
        return self._value


def _number(text: str, digits: tuple[int, int]) -> int:
    """*text* as a number of *digits* (min, max) ASCII digits; ValueError otherwise.

    Stricter than ``int()``, which takes signs, spaces, underscores and
    thousands of digits (raising beyond 4,300 of them).
    """
    if not (digits[0] <= len(text) <= digits[1]) or not text.isascii() or not text.isdigit():
        raise ValueError(text)
    return int(text)


def parse_http_date(text: str) -> int | None:
    """Seconds since the epoch for an HTTP date in any of its three forms; None when invalid.

    IMF-fixdate ``Sun, 06 Nov 1994 08:49:37 GMT``, RFC 850
    ``Sunday, 06-Nov-94 08:49:37 GMT`` and asctime ``Sun Nov  6 08:49:37 1994``.
    Whatever the client sent (year 0 or 99999, thousands of digits, bytes
    over 127) gives a number or None, never an exception.
    """
    if len(text) > _LONGEST_DATE:
        return None
    parts = text.split()
    try:
        if len(parts) == 6 and parts[5] == "GMT":  # IMF-fixdate
            day, month, year_text, clock = parts[1], parts[2], parts[3], parts[4]
        elif len(parts) == 4 and parts[3] == "GMT":  # RFC 850
            day, month, year_text = parts[1].split("-")
            clock = parts[2]
        elif len(parts) == 5:  # asctime
            month, day, clock, year_text = parts[1], parts[2], parts[3], parts[4]
        else:
            return None
        year = _number(year_text, (2, 4))
        if len(year_text) == 2:
            year += 2000 if year < 70 else 1900
        elif len(year_text) != 4:
            return None
        hour, minute, second = (_number(field, (1, 2)) for field in clock.split(":"))
        fields = (year, _MONTH_NUMBERS[month.lower()], _number(day, (1, 2)), hour, minute, second)
    except (ValueError, KeyError):
        return None
    if not (1 <= fields[2] <= 31 and 0 <= hour < 24 and 0 <= minute < 60 and 0 <= second < 61):
        return None
    try:
        # Year 0 and beyond 9999 are out of the calendar's range: not a date, so ignored.
        return calendar.timegm(fields)
    except (ValueError, OverflowError):
        return None
