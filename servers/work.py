"""work: a request/response server whose handler does a chosen amount of work, for the lab.

The client sends a line ending in ``\\n`` (its content is not read); the
server does the work, then answers ``ok\\n``.  A connection carries any
number of such exchanges.  The work is ``--work SPEC``:

``cpu:MS``
    pure-Python computation holding the GIL for about MS milliseconds of
    one core's CPU time (calibrated once at start-up in iterations per
    millisecond of *thread CPU time*, so a busy machine stretches the wall
    time, not the amount of work);
``sleep:MS``
    ``time.sleep``: a blocking wait, as a database call would be;
``cpu:MS,sleep:MS``
    both, computation first.

The same work runs in two handler styles (``--style``): a sans-I/O
:class:`~framework.Protocol` (``protocol``, every model) and a blocking
``socketserver.StreamRequestHandler`` (``handler``, the models that can
carry a handler that blocks).  :class:`Work` is the one place the work is
defined; the lab's peer servers use it too.

A line longer than :data:`MAX_LINE` bytes gets ``error: ...`` and the
connection is closed.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import socketserver
import time
from typing import Any

from framework import Protocol, Server
from framework.cli import positive_int

#: The longest request line accepted, newline included.
MAX_LINE = 1024
#: The most milliseconds one kind of work may ask for (a request is bounded).
MAX_MS = 60_000
#: What every request is answered with.
ANSWER = b"ok\n"
TOO_LONG = f"error: request line longer than {MAX_LINE} bytes\n".encode("ascii")
USAGE = "expected --work cpu:MS, sleep:MS or cpu:MS,sleep:MS (MS a number of milliseconds, 0 to 60000)"
STYLES = ("protocol", "handler")

_PART = re.compile(r"(cpu|sleep):([0-9]{1,5}(?:\.[0-9]{1,3})?)\Z", re.ASCII)


@dataclasses.dataclass(frozen=True)
class WorkSpec:
    """How much work one request costs: CPU milliseconds and sleeping milliseconds."""

    cpu_ms: float = 0.0
    sleep_ms: float = 0.0

    def __str__(self) -> str:
        parts = [f"{name}:{value:g}" for name, value in (("cpu", self.cpu_ms), ("sleep", self.sleep_ms)) if value]
        return ",".join(parts) or "cpu:0"

    @property
    def kind(self) -> str:
        """``cpu``, ``sleep``, ``cpu+sleep`` or ``none``: what the work is made of."""
        return "+".join(name for name, value in (("cpu", self.cpu_ms), ("sleep", self.sleep_ms)) if value) or "none"


def parse_spec(text: str) -> WorkSpec:
    """``cpu:2,sleep:20`` -> ``WorkSpec(2.0, 20.0)``; anything else raises ValueError with :data:`USAGE`."""
    values: dict[str, float] = {}
    for part in text.split(","):
        match = _PART.match(part.strip())
        if match is None or match.group(1) in values:
            raise ValueError(f"bad work spec {text[:80]!r}: {USAGE}")
        values[match.group(1)] = float(match.group(2))
    if any(value > MAX_MS for value in values.values()):
        raise ValueError(f"bad work spec {text[:80]!r}: {USAGE}")
    return WorkSpec(cpu_ms=values.get("cpu", 0.0), sleep_ms=values.get("sleep", 0.0))


def spin(iterations: int) -> int:
    """Pure-Python computation: *iterations* steps of an integer recurrence, holding the GIL throughout."""
    value = 0
    for step in range(iterations):
        value = (value * 31 + step) & 0xFFFF
    return value


def calibrate(rounds: int = 3, target_seconds: float = 0.01) -> int:
    """Iterations of :func:`spin` per millisecond of this thread's CPU time (the best of *rounds*).

    Thread CPU time, not wall time: another process taking the core while
    we calibrate does not make the work smaller.
    """
    iterations, best = 10_000, 0.0
    for _ in range(rounds):
        while True:
            begin = time.thread_time()
            spin(iterations)
            used = time.thread_time() - begin
            if used >= target_seconds:
                break
            iterations *= 2
        best = max(best, iterations / (used * 1000.0))
    return max(1, int(best))


class Work:
    """One request's work, calibrated once: :meth:`do` it, or its :meth:`cpu` and :meth:`sleep` parts."""

    def __init__(self, spec: WorkSpec, per_ms: int | None = None) -> None:
        self.spec = spec
        #: Iterations of :func:`spin` per millisecond of CPU (measured now when not given).
        self.per_ms = per_ms if per_ms is not None else (calibrate() if spec.cpu_ms else 1)
        self._iterations = int(spec.cpu_ms * self.per_ms)
        self._sleep = spec.sleep_ms / 1000.0

    def cpu(self) -> None:
        """The computing part: about ``cpu_ms`` of one core, GIL held."""
        if self._iterations:
            spin(self._iterations)

    def sleep(self) -> None:
        """The waiting part: ``sleep_ms`` of blocking sleep."""
        if self._sleep:
            time.sleep(self._sleep)

    def do(self) -> None:
        """All of it, computation first."""
        self.cpu()
        self.sleep()


class WorkProtocol(Protocol):
    """Sans-I/O style: split the input into lines; for each, do the work and answer ``ok``."""

    def __init__(self, work: Work) -> None:
        self.work = work
        self._buffer = bytearray()

    def data_received(self, data: bytes) -> None:
        """Answer every complete line; refuse a line longer than :data:`MAX_LINE`."""
        self._buffer += data
        while not self.transport.is_closing():
            newline = self._buffer.find(b"\n", 0, MAX_LINE)
            if newline < 0:
                if len(self._buffer) >= MAX_LINE:
                    self.transport.write(TOO_LONG)
                    self.transport.close(linger=1.0)
                return
            del self._buffer[:newline + 1]
            self.work.do()
            self.transport.write(ANSWER)

    def between_messages(self) -> bool:
        """No line half sent."""
        return not self._buffer


class WorkRequestHandler(socketserver.StreamRequestHandler):
    """Blocking style, as a socketserver user writes it: ``readline``, work, ``wfile.write``, repeat.

    The work comes from ``self.server.work``: a forkthread :class:`WorkServer`
    and the lab's socketserver peers both carry one.
    """

    def handle(self) -> None:
        """Serve lines until the client closes (or sends a line that is too long)."""
        work: Work = self.server.work  # type: ignore[attr-defined]
        while True:
            line = self.rfile.readline(MAX_LINE)
            if not line.endswith(b"\n"):
                if len(line) >= MAX_LINE:
                    self.wfile.write(TOO_LONG)
                return  # end of input (perhaps mid-line): the client is gone
            work.do()
            self.wfile.write(ANSWER)


def handler_supported() -> bool:
    """True when this framework runs ``socketserver`` handlers (``Server.handler``)."""
    return hasattr(Server, "handler")


class WorkServer(Server):
    """The ``work`` server; ``style`` picks the handler style (:data:`STYLES`) and with it the class.

    ``WorkServer(..., style="handler")`` is a :class:`WorkHandlerServer`,
    otherwise a :class:`WorkProtocolServer`: the command line constructs
    the registered class, so the choice is made here.
    """

    name = "work"
    description = "lab workload: each line costs --work cpu:MS and/or sleep:MS, then 'ok'"
    default_port = 8040

    def __new__(cls, *args: Any, style: str = "protocol", **kwargs: Any) -> WorkServer:
        """Construct the subclass for *style* when the registered class itself is asked for."""
        if cls is WorkServer:
            if style not in STYLES:
                raise ValueError(f"unknown style {style!r} (choose from {', '.join(STYLES)})")
            cls = WorkHandlerServer if style == "handler" else WorkProtocolServer
        # The arguments go on: Server.__new__ notes them (Server.construction).
        return super().__new__(cls, *args, style=style, **kwargs)

    def __init__(self, *args: Any, work: WorkSpec | str = WorkSpec(cpu_ms=1.0), calibration: int | None = None,
                 style: str = "protocol", **kwargs: Any) -> None:
        spec = parse_spec(work) if isinstance(work, str) else work
        #: The calibrated work every request does (forked children and workers inherit it).
        self.work = Work(spec, calibration)
        self.style = style
        super().__init__(*args, **kwargs)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """``--work``, ``--style`` and ``--calibration``."""
        parser.add_argument("--work", default="cpu:1", metavar="SPEC",
                            help="per request: cpu:MS, sleep:MS or cpu:MS,sleep:MS (default: cpu:1)")
        parser.add_argument("--style", choices=STYLES, default="protocol",
                            help="a sans-I/O protocol, or a blocking socketserver handler (default: %(default)s)")
        parser.add_argument("--calibration", type=positive_int, default=None, metavar="N",
                            help="spin iterations per CPU millisecond (default: measured at start-up;"
                                 " the lab passes one figure to every server it compares)")

    @classmethod
    def options_from_arguments(cls, args: argparse.Namespace) -> dict[str, object]:
        """Pass the options on (a bad ``--work`` is a ValueError: one line, exit status 2)."""
        return {"work": parse_spec(args.work), "style": args.style, "calibration": args.calibration}


class WorkProtocolServer(WorkServer):
    """``--style protocol``: the work is done in :class:`WorkProtocol`."""

    def protocol_factory(self) -> WorkProtocol:
        """A protocol doing this server's work."""
        return WorkProtocol(self.work)


class WorkHandlerServer(WorkServer):
    """``--style handler``: the work is done in :class:`WorkRequestHandler`, a socketserver handler.

    It needs the framework's support for ``socketserver`` handlers; without
    it the server refuses to start (``ValueError``: exit status 2 from the
    command line) rather than failing on the first connection.
    """

    protocol = None
    handler = WorkRequestHandler

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if not handler_supported():
            raise ValueError("--style handler needs socketserver handler support, which this forkthread lacks")
        super().__init__(*args, **kwargs)

