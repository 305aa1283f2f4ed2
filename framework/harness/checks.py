"""What a server must not do, checked when a test ends: each check returns its failures as sentences.

A server stops on SIGTERM within its deadline with exit status 0; nothing
of its process tree outlives it (this process being a subreaper, see
:mod:`~framework.harness.reaper`); its log has no traceback or error; a
Unix socket file it created is gone.  Each check names the cause, so a
failing test says what the server did, not only that it failed.
"""

from __future__ import annotations

import os
import re
import signal

from framework.harness.process import ServerProcess
from framework.harness.reaper import kill_leftovers, reap_adopted

#: A log line that reports an error: the framework's log format puts the level after the pid
#: (``... [123] ERROR forkthread: ...``), and an uncaught exception prints a traceback.
ERROR_LINE = re.compile(r"\] (?:ERROR|CRITICAL) |^Traceback \(most recent call last\):", re.MULTILINE)

#: The last resort's line (framework.lifecycle.LastResort): the non-daemon threads it found.
LAST_RESORT_THREADS = re.compile(r"has not ended: still running: .*; non-daemon threads: (.*); exiting now")


def stop_problems(process: ServerProcess, timeout: float) -> list[str]:
    """Stop *process* with SIGTERM (unless it ended already) and say what went wrong, if anything.

    A server that ended before this is a failure unless it ended with
    ``process.expected_status``; one still running must exit with status 0
    within *timeout* seconds (else it is killed, and the failure says what
    kept it alive).
    """
    try:
        if process.proc.poll() is None:
            status = process.stop(signal.SIGTERM, timeout=timeout)
            if status != 0:
                log = process.log()
                threads = LAST_RESORT_THREADS.search(log)
                if threads is not None and threads.group(1) != "none":
                    return [f"{process.argv}: a non-daemon thread keeps the server alive after SIGTERM"
                            f" ({threads.group(1)}; the server's last resort ended it with exit status {status}):"
                            f" make it a daemon thread or end it when the server stops\n{log}"]
                return [f"{process.argv}: exit status {status} after SIGTERM, not 0\n{log}"]
        elif process.proc.returncode != process.expected_status:
            # It ended before the test did, and not the way the test said it would: a crash.
            return [f"{process.argv}: ended during the test with status {process.proc.returncode}\n{process.log()}"]
    except AssertionError as exc:
        return [str(exc)]
    return []


def leftover_problems(keep: frozenset[int] | set[int] = frozenset(), timeout: float = 5.0) -> list[str]:
    """Orphans adopted here that outlive *timeout* (children in *keep* aside): each named, then killed."""
    survivors = reap_adopted(timeout, keep)
    if not survivors:
        return []
    named = "; ".join(kill_leftovers(survivors))
    return [f"processes outlived their server (killed now): {named}"]


def log_problems(log: str) -> list[str]:
    """A traceback or an ERROR/CRITICAL line in *log*: the log itself, to read it in context."""
    if ERROR_LINE.search(log) is None:
        return []
    return [f"the server logged an error or a traceback (declare it expected if the test provokes it):\n{log}"]


def socket_file_problems(path: str) -> list[str]:
    """A Unix socket file still at *path* after the server stopped."""
    if os.path.lexists(path):
        return [f"the server left its Unix socket file behind: {path}"]
    return []
