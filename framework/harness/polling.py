"""Waiting for an event, with a deadline only a hang misses: the harness's one polling loop."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_for(predicate: Callable[[], object], timeout: float = 5.0, interval: float = 0.02) -> bool:
    """Poll *predicate* until it is true or *timeout* passes; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return bool(value)
        time.sleep(interval)


def settled(measure: Callable[[], float], interval: float = 0.1, timeout: float = 3.0) -> int:
    """``measure()`` once it reads the same twice *interval* apart (or when *timeout* passes)."""
    deadline = time.monotonic() + timeout
    value = measure()
    while time.monotonic() < deadline:
        time.sleep(interval)
        previous, value = value, measure()
        if value == previous:
            break
    return int(value)
