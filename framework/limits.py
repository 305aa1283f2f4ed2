"""The largest durations and counts a server can honour: one place for the rule, checked at start.

A value that passes here is one every strategy can wait or start, so a
bad one is refused before the server binds (a usage error), never
tripped over later by a connection (issue 25 items 4 and 10):

* **Durations** (``--timeout``, ``--graceful-timeout``, a server's own
  time limits) are at most :data:`MAX_WAIT_SECONDS`: ``poll(2)`` takes its
  timeout as a C ``int`` of milliseconds (``OverflowError`` above 2**31 - 1),
  ``threading`` waits as ``threading.TIMEOUT_MAX``, socket timeouts as a
  ``timeval``; the smallest of these bounds every strategy.
* **Counts of processes and threads** (``--workers``, ``--threads``) are
  at most a documented cap (:data:`MAX_WORKERS`, :data:`MAX_THREADS`) and
  at most what ``RLIMIT_NPROC`` lets this user start, so a typo does not
  fork until ``fork`` fails.
* **The listen backlog** is a C ``int``; the kernel caps it further at
  ``net.core.somaxconn`` itself, silently.
"""

from __future__ import annotations

import threading

#: poll(2)'s timeout is an int of milliseconds: the longest wait every strategy can ask for.
_POLL_MAX_SECONDS = (2**31 - 1) // 1000

#: The longest duration any option may have, in whole seconds (24 days, 20 hours and a bit).
MAX_WAIT_SECONDS: int = int(min(_POLL_MAX_SECONDS, threading.TIMEOUT_MAX))

#: listen(2) takes an int; the kernel then caps the backlog at net.core.somaxconn.
MAX_BACKLOG = 2**31 - 1

#: Pre-forked workers: more than this many processes is a misconfiguration (gunicorn advises 2-4 per core).
MAX_WORKERS = 1024

#: Threads in one process (a pool, or a worker's): each costs a stack; beyond this a poll loop serves better.
MAX_THREADS = 4096

#: Where the kernel's cap on the backlog is written.
SOMAXCONN_PATH = "/proc/sys/net/core/somaxconn"


def duration_rule(zero_means: str | None = None) -> str:
    """What a duration option accepts, as the end of "--timeout must be ..." (true to what is accepted)."""
    rule = f"a number of seconds {'>= 0' if zero_means else '> 0'} and at most {MAX_WAIT_SECONDS} (about 24 days)"
    return f"{rule}; 0 means {zero_means}" if zero_means else rule


def duration_fits(seconds: float, *, zero_allowed: bool = False) -> bool:
    """True when every strategy can wait *seconds* (``nan``, ``inf`` and negatives cannot be waited)."""
    low_enough = seconds <= MAX_WAIT_SECONDS  # False for nan
    return low_enough and (seconds >= 0 if zero_allowed else seconds > 0)


def check_duration(seconds: float | None, what: str, *, zero_means: str | None = None) -> None:
    """Raise :class:`ValueError` (one line naming *what*) unless every strategy can wait *seconds*.

    None is "no limit" and always fits.  *zero_means* says what 0 stands
    for where it is accepted (``"never"``).
    """
    if seconds is not None and not duration_fits(seconds, zero_allowed=zero_means is not None):
        raise ValueError(f"{what} must be {duration_rule(zero_means)}, not {seconds!r}")


def process_limit() -> int | None:
    """How many processes (threads included) this user may run: the soft ``RLIMIT_NPROC`` (None: unlimited)."""
    # Here, not at the top: only an option naming a count asks, and a module loaded is five
    # more mappings that every fork copies and every forked child's exit tears down.
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NPROC)
    return None if soft == resource.RLIM_INFINITY else soft


def count_bound(cap: int) -> tuple[int, str]:
    """The most processes or threads an option may ask for: *cap*, or less under ``RLIMIT_NPROC``; and why."""
    nproc = process_limit()
    if nproc is not None and nproc < cap:
        return nproc, " (RLIMIT_NPROC, see `ulimit -u`)"
    return cap, ""


def check_count(value: int, what: str, cap: int) -> None:
    """Raise :class:`ValueError` unless 1 <= *value* <= :func:`count_bound` of *cap*."""
    most, why = count_bound(cap)
    if not 1 <= value <= most:
        raise ValueError(f"{what} must be between 1 and {most}{why}, not {value}")


def somaxconn() -> int | None:
    """The kernel's cap on a listen backlog (None where it cannot be read)."""
    try:
        with open(SOMAXCONN_PATH, encoding="ascii") as file:
            return int(file.read())
    except (OSError, ValueError):
        return None
