"""Servers for the ``interpreters`` strategy's own tests, importable by path (each worker imports them).

``serve tests.interpreter_servers:CLASS``:

:class:`LineHandlerServer`
    A ``socketserver`` handler echoing lines; the line ``end-thread`` makes it
    raise :class:`SystemExit`, which ends the thread it runs in (under
    ``--worker iterative``: the worker's own, in its sub-interpreter).
:class:`FailingInitServer`
    Echo whose ``worker_init`` raises: every worker fails to boot.

The line ``hold`` makes :class:`LineHandler` answer ``holding``, compute in C
for a while without ever letting go of its GIL (a regular expression that
backtracks: ``re`` offers no thread switch inside a match), then answer
``done START CPU``: ``time.monotonic_ns()`` when the match began and the CPU
time it took (ns).  The line ``stamp`` is answered with ``time.monotonic_ns()``.
"""

from __future__ import annotations

import re
import socketserver
import time

from framework import Server
from servers.echo import EchoProtocol

#: ``hold``: one match of HOLD_PATTERN on HOLD_TEXT, holding the GIL (about 1.5 s of CPU).
HOLD_PATTERN = re.compile(rb"(a+)+b")
HOLD_TEXT = b"a" * 24


class LineHandler(socketserver.StreamRequestHandler):
    """Echo lines; ``end-thread`` ends the serving thread."""

    def handle(self) -> None:
        """Echo each line until the client closes."""
        while True:
            line = self.rfile.readline(1024)
            if not line:
                return
            if line.strip() == b"end-thread":
                raise SystemExit("the handler ended its thread")
            if line.strip() == b"hold":
                self.wfile.write(b"holding\n")
                start, cpu = time.monotonic_ns(), time.thread_time_ns()
                HOLD_PATTERN.match(HOLD_TEXT)
                self.wfile.write(b"done %d %d\n" % (start, time.thread_time_ns() - cpu))
                continue
            if line.strip() == b"stamp":
                self.wfile.write(b"%d\n" % time.monotonic_ns())
                continue
            self.wfile.write(line)


class LineHandlerServer(Server):
    """Echo lines with a blocking handler (tests only)."""

    name = "line-handler"
    handler = LineHandler


class FailingInitServer(Server):
    """Echo whose workers cannot boot (tests only)."""

    name = "failing-init"
    protocol = EchoProtocol

    def worker_init(self) -> None:
        """Fail, as a worker whose resources cannot be opened."""
        raise RuntimeError("worker_init failed on purpose")
