"""argparse types shared by the ``forkthread`` command line and the servers' own options.

One rule for every count and every number of seconds given on a command
line: a bad value is a usage error with one line (exit status 2), never a
value the server trips over later (a negative buffer, a ``nan`` deadline, a
wait longer than ``poll(2)`` can count, a thousand thousand workers).  The
bounds themselves are :mod:`framework.limits`; each message says what is
accepted.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from framework import limits


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0 (``nan`` and ``inf`` are refused: no deadline can be built from them)."""
    value = _number(text)
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, not {text}")
    return value


def duration(text: str) -> float:
    """argparse type: seconds > 0 that every strategy can wait (at most :data:`~framework.limits.MAX_WAIT_SECONDS`)."""
    value = _number(text)
    if not limits.duration_fits(value):
        raise argparse.ArgumentTypeError(f"must be {limits.duration_rule()}, not {text}")
    return value


def optional_duration(text: str) -> float | None:
    """argparse type: like :func:`duration`, or 0 / ``none`` / ``off`` for no limit (None)."""
    if text.strip().lower() in ("none", "off"):
        return None
    value = _number(text)
    if not limits.duration_fits(value, zero_allowed=True):
        raise argparse.ArgumentTypeError(f"must be {limits.duration_rule(zero_means='never')}, not {text}")
    return value or None


def count_up_to(cap: int) -> Callable[[str], int]:
    """argparse type: a whole number from 1 to *cap*, and no more than ``RLIMIT_NPROC`` allows.

    For counts of processes or threads (:func:`framework.limits.check_count`).
    """

    def count(text: str) -> int:
        value = _whole_number(text)
        most, why = limits.count_bound(cap)
        if not 1 <= value <= most:
            raise argparse.ArgumentTypeError(f"must be between 1 and {most}{why}, not {text}")
        return value

    return count


def backlog(text: str) -> int:
    """argparse type: a listen backlog, 1 to :data:`~framework.limits.MAX_BACKLOG` (``listen(2)`` takes an int)."""
    value = _whole_number(text)
    if not 1 <= value <= limits.MAX_BACKLOG:
        cap = limits.somaxconn()
        kernel = f" (the kernel caps it further at net.core.somaxconn, here {cap})" if cap else ""
        raise argparse.ArgumentTypeError(f"must be between 1 and {limits.MAX_BACKLOG}{kernel}, not {text}")
    return value


def positive_int(text: str) -> int:
    """argparse type: a whole number > 0."""
    value = _whole_number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, not {text}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: a whole number >= 0 (0 usually meaning "no limit")."""
    value = _whole_number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, not {text}")
    return value


def _whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, not {text!r}") from None


def file_mode(text: str) -> int:
    """argparse type: permission bits in octal, as chmod takes them (``600``, ``0660``, ``0o660``)."""
    digits = text.strip().lower().removeprefix("0o")
    if not digits or any(char not in "01234567" for char in digits) or int(digits, 8) > 0o777:
        raise argparse.ArgumentTypeError(f"must be octal permission bits from 0 to 777 (e.g. 600), not {text!r}")
    return int(digits, 8)
