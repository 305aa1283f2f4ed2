"""``work``: which model for *my* handler?  Every model under handlers that compute, wait, or both.

The server is ``forkthread serve work --work SPEC`` (:mod:`servers.work`):
each request line costs ``cpu:MS`` of pure-Python computation (GIL held),
``sleep:MS`` of blocking wait, or both.  Every strategy (and the
pre-forked worker kinds) is measured in both handler styles where the
model carries them (a sans-I/O protocol, a blocking socketserver handler),
beside peers doing the same work: socketserver's Threading and Forking
servers with the same handler, and asyncio and uvloop computing inline and
sleeping through ``run_in_executor`` or inline (the blocked loop).

Per work kind and concurrency C (closed loop: C connections each sending a
line and waiting for the answer): requests/s, p50/p99 latency, cores used
(server tree CPU / wall time, sampled over the load window), CPU per
request, memory of the server tree (anonymous PSS, and the process count)
sampled mid-point, starved connections, and the load average before the
point.  Every repeat runs on a fresh server process.  The verdict
(:mod:`framework.bench.verdict`) ranks the models per work kind.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import socket
import threading
import time
from typing import Any

from framework.bench import procfs, session
from framework.bench.clients import LoadResult, latency_ms, run_clients, split
from framework.bench.config import BenchConfig
from framework.bench.processes import RunningServer, ServerCommand
from framework.bench.report import Column, WorkloadReport
from framework.bench.targets import Context, Target, serve_command
from framework.strategies import STRATEGIES, strategy_class
from servers.work import STYLES, calibrate, handler_supported, parse_spec

COLUMNS = [
    Column("req_per_s", "req/s", 0),
    Column("p50_ms", "p50 ms", 2),
    Column("p99_ms", "p99 ms", 2),
    Column("cores_used", "cores used", 2),
    Column("cpu_ms_per_req", "CPU ms/req", 2),
    Column("pss_mib", "anon PSS MiB", 1),
    Column("processes", "procs", 0),
    Column("starved", "starved conns", 0),
    Column("errors", "errors", 0),
    Column("client_cores", "client cores", 2),
    Column("other_cores", "other load cores", 2),
    Column("load_avg", "load avg before", 2),
]
#: The request line (its content is not read by the server).
REQUEST = "work\n"
MAX_CLIENT_PROCESSES = 4

#: strategy -> [(row label, serve options, traits)]; a strategy not listed has one form, its own name.
FORMS: dict[str, list[tuple[str, list[str], frozenset[str]]]] = {
    "iterative": [("iterative", [], frozenset({"one-at-a-time"}))],
    "forking": [("forking", [], frozenset({"processes"}))],
    "threading": [("threading", [], frozenset({"threads"}))],
    "prethreaded": [("prethreaded", [], frozenset({"threads"}))],
    "preforked": [
        ("preforked worker=iterative", ["--worker", "iterative"], frozenset({"processes", "one-at-a-time"})),
        ("preforked worker=threads", ["--worker", "threads"], frozenset({"processes", "threads"})),
        ("preforked worker=poll", ["--worker", "poll"], frozenset({"processes", "loop"})),
    ],
    "poll": [("poll", [], frozenset({"loop"}))],
    "interpreters": [
        ("interpreters worker=iterative", ["--worker", "iterative"], frozenset({"interpreters", "one-at-a-time"})),
        ("interpreters worker=threads", ["--worker", "threads"], frozenset({"interpreters", "threads"})),
        ("interpreters worker=poll", ["--worker", "poll"], frozenset({"interpreters", "loop"})),
    ],
}
#: Peer name -> traits (how each is built; see :mod:`framework.bench.verdict`).
PEER_TRAITS: dict[str, frozenset[str]] = {
    "socketserver threading": frozenset({"threads"}),
    "socketserver forking": frozenset({"processes"}),
    "asyncio executor": frozenset({"loop", "threads"}),
    "asyncio inline": frozenset({"loop"}),
    "uvloop executor": frozenset({"loop", "threads"}),
    "uvloop inline": frozenset({"loop"}),
}
HANDLER_MISSING = "this forkthread has no socketserver handler support (Server.handler)"


def _command(strategy: str, options: list[str], context: Context) -> ServerCommand:
    return serve_command(context.server, strategy, options, context.server_options)


def work_targets(config: BenchConfig, context: Context) -> list[Target]:
    """Every strategy form in each handler style (filtered by ``--strategies``), then the work peers."""
    targets = []
    for strategy in STRATEGIES:
        if config.strategies is not None and strategy not in config.strategies:
            continue
        for label, options, traits in FORMS.get(strategy, [(strategy, [], frozenset())]):
            for style in STYLES:
                name = label if style == "protocol" else f"{label} {style}"
                skip = strategy_class(strategy).unavailable()  # interpreters before Python 3.13
                if style == "handler" and not handler_supported():
                    skip = HANDLER_MISSING
                command = functools.partial(_command, strategy, [*options, "--style", style])
                targets.append(Target(name=name, kind="forkthread", command=command, strategy=strategy, skip=skip,
                                      traits=traits))
    peers = [dataclasses.replace(target, traits=PEER_TRAITS.get(target.name, frozenset()))
             for target in session.targets(config, context) if target.kind == "peer"]
    return targets + peers


class Probe:
    """Samples the server during the load window: CPU at its start and end, memory in its middle."""

    def __init__(self, server: RunningServer, duration: float) -> None:
        self.server = server
        self.duration = duration
        self.values: dict[str, float | None] = {}
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        """Begin sampling (called when the clients are told to go)."""
        self._thread.start()

    def _ticks(self) -> tuple[dict[int, int], dict[int, int], int]:
        stats = procfs.all_stats()
        server = {stat.pid: stat.cpu_ticks for stat in procfs.tree(self.server.pid, stats)}
        lab = {stat.pid: stat.cpu_ticks for stat in procfs.tree(os.getpid(), stats)}
        return server, lab, procfs.machine_busy_ticks()

    def _run(self) -> None:
        began, (server0, lab0, busy0) = time.monotonic(), self._ticks()
        time.sleep(self.duration / 2)
        memory = self.server.memory()
        time.sleep(max(0.0, began + self.duration - time.monotonic()))
        server1, lab1, busy1 = self._ticks()
        wall = time.monotonic() - began
        used, server = _used(server0, server1)
        _, lab = _used(lab0, lab1)  # the lab's tree: itself, its client processes, and the server's tree
        cores = server / procfs.CLOCK_TICKS / wall
        self.values = {"cores_used": cores,
                       "busiest_share": max(used.values()) / server if server > 0 else None,
                       "client_cores": max(0, lab - server) / procfs.CLOCK_TICKS / wall,
                       "other_cores": max(0, busy1 - busy0 - lab) / procfs.CLOCK_TICKS / wall,
                       "pss_mib": memory.pss_kib / 1024, "rss_mib": memory.rss_kib / 1024,
                       "processes": float(memory.processes), "threads": float(memory.threads)}

    def join(self) -> dict[str, float | None]:
        """The samples (empty when the load never started)."""
        if self._thread.is_alive() or self._thread.ident is not None:
            self._thread.join(self.duration + 30.0)
        return self.values


def _used(first: dict[int, int], last: dict[int, int]) -> tuple[dict[int, int], int]:
    """Ticks each process used between two samples of a tree, and the tree's total.

    A process gone by the second sample was reaped: its ticks moved into
    its parent's (``cutime``), so what it had at the first is taken off.
    """
    used = {pid: ticks - first.get(pid, 0) for pid, ticks in last.items()}
    total = sum(used.values()) - sum(ticks for pid, ticks in first.items() if pid not in last)
    return used, max(0, total)


def warm_up(server: RunningServer) -> None:
    """One exchange on one connection: the server (and a pre-forked worker) is up and has run the work once."""
    with socket.create_connection((server.host, server.port), 30.0) as sock:
        sock.sendall(REQUEST.encode("ascii"))
        answer = b""
        while not answer.endswith(b"\n"):
            data = sock.recv(64)
            if not data:
                raise ConnectionError(f"warm-up: the server closed after {answer!r}")
            answer += data


def measure_point(config: BenchConfig, server: RunningServer, connections: int,
                  duration: float) -> dict[str, float | None]:
    """C closed-loop connections for *duration* seconds: rate, latency, cores, memory, starved."""
    specs = [{"kind": "rr", "host": server.host, "port": server.port, "connections": share, "protocol": "line",
              "request": REQUEST, "duration": duration, "max_requests": 5_000_000, "timeout": 30.0}
             for share in split(connections, min(connections, MAX_CLIENT_PROCESSES))]
    return measure_load(server, specs, duration)[0]


def measure_load(server: RunningServer, specs: list[dict[str, object]],
                 duration: float) -> tuple[dict[str, float | None], LoadResult]:
    """Run the load generators of *specs* against *server*, sampling it meanwhile: the point's figures, and the load."""
    probe = Probe(server, duration)
    load = run_clients(specs, time_limit=duration + 60.0, on_go=probe.start)
    return point_figures(probe.join(), load.done, load.per_client, load.latencies,
                         float(load.total("starved")), float(load.errors)), load


def point_figures(sampled: dict[str, float | None], done: int, per_client: list[dict[str, Any]],
                  latencies: list[float], starved: float | None, errors: float) -> dict[str, float | None]:
    """The figures of one point from the server's samples and what the load generators reported."""
    elapsed = max((client.get("elapsed", 0.0) for client in per_client), default=0.0)
    rate = done / elapsed if elapsed > 0 else None
    cores = sampled.get("cores_used")
    return {
        "req_per_s": rate, **latency_ms(latencies), **sampled,
        "cpu_ms_per_req": cores * 1e3 / rate if cores is not None and rate else None,
        "starved": starved, "errors": errors,
    }


def run(config: BenchConfig) -> WorkloadReport:
    """Measure every model and peer under each work kind at each concurrency; rank them."""
    from framework.bench import verdict
    from framework.bench.plots import plot_work

    scale = config.scale
    per_ms = calibrate()
    report = WorkloadReport(
        name="work", title="work: handlers that compute, wait, or both",
        description=(
            f"Work kinds {', '.join(scale.work)} per request (cpu: pure-Python computation holding the GIL, "
            f"calibrated once for every server at {per_ms:,} iterations per CPU ms; sleep: a blocking wait)."
            f"  C closed-loop connections (C = {', '.join(map(str, scale.concurrency))}) each send a line and"
            f" wait for the answer, for {scale.work_duration:g} s per point, from up to {MAX_CLIENT_PROCESSES}"
            " client processes.  Cores used = server tree CPU / wall time over the load window (client cores:"
            " the lab and its load generators; other load cores: every other process on the machine, from"
            " /proc/stat); anon PSS is"
            " the server tree's anonymous memory mid-point; starved connections got no answer in the point's"
            " time.  Every run on a fresh server process; the load average before it is recorded"
            + ("" if config.quick else ", and a run started above the CPU count is measured again")
            + f".  Median of {scale.repeat} runs, (min-max)."),
        columns=COLUMNS, ratio_metric="req_per_s", params=["work", "connections"])
    failed: set[str] = set()
    for spec in scale.work:
        options = ["--work", spec, "--calibration", str(per_ms)]
        context = Context(server="work", protocol="work", server_options=options, peer_options=options)
        for target in work_targets(config, context):
            if target.name in failed:
                continue
            if target.skip:
                session.skip(config, report, target, target.skip)
                failed.add(target.name)
                continue
            try:
                for connections in scale.concurrency:
                    samples = session.fresh_repeats(
                        config, target, context, f"work: {spec:<15} {target.name:<30} C={connections:<4}",
                        scale.repeat,
                        functools.partial(measure_point, config, connections=connections,
                                          duration=scale.work_duration),
                        warm_up=warm_up)
                    session.add_row(report, target, {"work": spec, "connections": connections}, samples)
            except session.MEASUREMENT_ERRORS as exc:
                session.skip(config, report, target, f"{spec}: failed: {exc}")
                if isinstance(exc, session.ServerStartError):
                    failed.add(target.name)  # a server that cannot start (a refused style) is not retried
    cpus = os.cpu_count() or 1
    report.summary = verdict.render(verdict.verdicts(report.rows, cpus), cpus)
    plot_work(config, report)
    return report


def check_specs(specs: tuple[str, ...]) -> None:
    """Raise ValueError naming the first bad ``--work`` spec."""
    for spec in specs:
        parse_spec(spec)
