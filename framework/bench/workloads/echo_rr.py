"""``echo-rr``: C persistent connections doing request/response against an echo server.

Per concurrency C: round trips per second, latency p50/p99, and server CPU
per round trip (from ``/proc`` samples of the server's tree before and
after each point; every repeat of every point on a fresh server process).  A model that
cannot serve C connections at once (iterative, a small pool) shows it:
the connections it never answered are counted as *starved*.
"""

from __future__ import annotations

import functools
import time

from framework.bench import session
from framework.bench.clients import latency_ms, run_clients, split
from framework.bench.config import BenchConfig
from framework.bench.processes import RunningServer
from framework.bench.report import Column, WorkloadReport, recommendation
from framework.bench.targets import Context

COLUMNS = [
    Column("rt_per_s", "round trips/s", 0),
    Column("p50_ms", "p50 ms", 3),
    Column("p99_ms", "p99 ms", 3),
    Column("cpu_us_per_rt", "CPU µs/rt", 1),
    Column("starved", "starved conns", 0),
    Column("errors", "errors", 0),
]
#: The request: 64 bytes, like a small RPC.
MESSAGE = "x" * 63 + "\n"
#: At most this many client processes share the connections.
MAX_CLIENT_PROCESSES = 4


def measure_point(
    config: BenchConfig, server: RunningServer, connections: int, duration: float,
) -> dict[str, float | None]:
    """One load point: C connections for *duration* seconds; rate, latency and server CPU per round trip."""
    processes = min(connections, MAX_CLIENT_PROCESSES)
    specs = [{"kind": "rr", "host": server.host, "port": server.port, "connections": share, "protocol": "echo",
              "request": MESSAGE, "duration": duration, "max_requests": 5_000_000}
             for share in split(connections, processes)]
    before = server.cpu_seconds()
    load = run_clients(specs, time_limit=duration + 30.0)
    time.sleep(0.05)  # let the server finish with the connections just closed
    cpu = server.cpu_seconds() - before
    elapsed = max((client.get("elapsed", 0.0) for client in load.per_client), default=0.0)
    return {
        "rt_per_s": load.done / elapsed if elapsed > 0 else None, **latency_ms(load.latencies),
        "cpu_us_per_rt": cpu / load.done * 1e6 if load.done else None, "cpu_s": cpu,
        "starved": float(load.total("starved")), "errors": float(load.errors),
    }


def run(config: BenchConfig) -> WorkloadReport:
    """Measure every strategy and the stdlib/asyncio echo peers at each concurrency."""
    scale = config.scale
    report = WorkloadReport(
        name="echo-rr", title="echo-rr: request/response on persistent connections",
        description=(f"C persistent connections (C = {', '.join(map(str, scale.concurrency))}) each sending a"
                     f" {len(MESSAGE)}-byte message and waiting for its echo, for {scale.duration:g} s per point,"
                     f" from up to {MAX_CLIENT_PROCESSES} client processes.  CPU per round trip is the server tree's"
                     " CPU (from /proc) over the point divided by round trips.  Starved connections never got an"
                     f" answer (the model serves fewer at once).  Every run on a fresh server; median of"
                     f" {scale.repeat} runs, (min-max)."),
        columns=COLUMNS, ratio_metric="rt_per_s", params=["connections"])
    context = Context(server="echo", protocol="echo")
    for target in session.runnable(config, report, context):
        try:
            for connections in scale.concurrency:
                samples = session.fresh_repeats(
                    config, target, context, f"echo-rr: {target.name:<24} C={connections:<4}", scale.repeat,
                    functools.partial(measure_point, config, connections=connections, duration=scale.duration),
                    warm_up=functools.partial(measure_point, config, connections=1, duration=0.1))
                session.add_row(report, target, {"connections": connections}, samples)
        except session.MEASUREMENT_ERRORS as exc:
            session.skip(config, report, target, f"failed: {exc}")
    from framework.bench.plots import plot_echo_rr

    plot_echo_rr(config, report)
    report.summary = recommendation(report)
    return report
