"""argparse types shared by the ``forkthread`` command line and the servers' own options.

One rule for every count and every number of seconds given on a command
line: a bad value is a usage error with one line (exit status 2), never a
value the server trips over later (a negative buffer, a ``nan`` deadline).
"""

from __future__ import annotations

import argparse
import math


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0 (``nan`` and ``inf`` are refused: no deadline can be built from them)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, not {text!r}") from None
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, not {text}")
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
