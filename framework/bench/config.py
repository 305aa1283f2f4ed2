"""The settings of one lab run: full-run defaults, ``--quick`` defaults, and CPU placement.

Full-run defaults are chosen so that ``forkthread bench all`` finishes in
about ten minutes on a 2-core machine; ``--quick`` in under a minute per
workload.  Every count can be overridden on the command line.
"""

from __future__ import annotations

import dataclasses
import os
import resource
import sys
import time
from pathlib import Path

from framework.bench.exchange import ExchangeSpec

KIB = 1024
MIB = 1024 * 1024


@dataclasses.dataclass
class Scale:
    """How much load each workload makes."""

    #: stevens: client processes (K), connections per client (N), bytes per connection (B).
    clients: int = 5
    connections: int = 500
    nbytes: int = 4000
    #: echo-rr and http: seconds per measured load point (wrk rounds up to whole seconds).
    duration: float = 0.5
    #: echo-rr and http: concurrent connections per point.
    concurrency: tuple[int, ...] = (1, 10, 100)
    #: http: file sizes.
    sizes: tuple[int, ...] = (KIB, 64 * KIB, MIB)
    #: idle: most connections to open, and the time limit per server.
    max_idle: int = 10000
    idle_seconds: float = 30.0
    #: work: what each request costs (``forkthread serve work --work SPEC``), and seconds per load point.
    work: tuple[str, ...] = ("cpu:2", "sleep:20", "cpu:2,sleep:20")
    work_duration: float = 2.0
    #: repeats of every measurement (median and spread are reported) ...
    repeat: int = 3
    #: ... except http's, whose wrk points last a whole second each (``--repeat`` sets both).
    http_repeat: int = 2


FULL = Scale()
QUICK = Scale(clients=2, connections=100, duration=0.5, concurrency=(10,), sizes=(KIB,), max_idle=200,
              idle_seconds=5.0, repeat=1, http_repeat=1, work=("cpu:2", "sleep:20"), work_duration=0.5)


@dataclasses.dataclass(frozen=True)
class OwnServer:
    """``forkthread bench MODULE:CLASS``: the user's server, its serve options, and one exchange with it."""

    #: What ``forkthread serve`` is given: ``MODULE:CLASS`` (or a bundled server name).
    target: str
    exchange: ExchangeSpec
    #: ``forkthread serve`` options passed through (``--workers 4``, ``--timeout 0``, the server's own).
    serve_options: tuple[str, ...] = ()
    #: Stevens' style: connect, one exchange, close (default: persistent connections).
    per_exchange: bool = False
    #: ``bench wsgi``: the WSGI application (``MODULE:CALLABLE``) every server serves, forkthread's and the peers'.
    app: str = ""
    #: ``bench wsgi`` without ``--app``: which bundled app (:data:`framework.bench.wsgi_apps.APPS`), for the report.
    label: str = ""


@dataclasses.dataclass
class BenchConfig:
    """Everything one ``forkthread bench`` run needs to know."""

    workloads: list[str]
    out: Path
    scale: Scale
    quick: bool = False
    pin: bool = False
    strategies: list[str] | None = None
    servers: list[str] | None = None
    client: str = "auto"
    #: http: measure over TLS (every strategy beside nginx on the same certificate).
    tls: bool = False
    #: ``forkthread bench MODULE:CLASS``: the user's own server (the ``server`` workload).
    own: OwnServer | None = None
    server_cpus: set[int] | None = None
    client_cpus: set[int] | None = None
    #: Each server in a cgroup of its own, which reads its CPU (``--cpu-clock``); False: from ``/proc``.
    cgroups: bool = True
    notes: list[str] = dataclasses.field(default_factory=list)
    started: float = dataclasses.field(default_factory=time.monotonic)

    def place_cpus(self) -> None:
        """With ``--pin``: servers on one half of the usable CPUs, clients (and the lab) on the other."""
        if not self.pin:
            return
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            self.notes.append("--pin: only one CPU usable, client and server share it")
            return
        half = len(cpus) // 2
        self.client_cpus, self.server_cpus = set(cpus[:half]), set(cpus[half:])
        os.sched_setaffinity(0, self.client_cpus)  # load generators inherit it

    def raise_fd_limit(self) -> int:
        """Raise RLIMIT_NOFILE to its hard limit (servers and clients inherit it); return the soft limit."""
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or hard > soft:
            target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
                soft = target
            except (ValueError, OSError):
                pass
        return soft

    def progress(self, message: str) -> None:
        """One live progress line on standard error, with the elapsed time."""
        print(f"[{time.monotonic() - self.started:6.1f}s] {message}", file=sys.stderr, flush=True)
