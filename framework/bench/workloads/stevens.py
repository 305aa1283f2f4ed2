"""``stevens``: UNP ch. 30 — K client processes x N short connections, each asking for B bytes.

Figure of merit, as in Stevens' Figure 30.1: the server's CPU time for the
whole run (user + system of the whole process tree, reaped children
included), and "process-control CPU" = that minus the iterative server's,
i.e. what the concurrency model itself costs.  Each repeat starts a fresh
server: CPU is sampled just before the load, just after it, and once the
server is reaped after a graceful stop (from the server's own cgroup, or
``/proc`` and ``wait4``: :mod:`framework.bench.cgroup`), so the total
splits into the load's share per connection and the stop's.  Minor page faults per connection,
counted the same way, say where a fork's cost goes: each page a child (or
its parent, while children share its pages) writes first is copied.  The
main process's own CPU and faults over the load (``/proc``, its threads but
not its children) split the tree's: what is left is its children's or
workers' part.
"""

from __future__ import annotations

import socket

from framework.bench import procfs, session
from framework.bench.clients import latency_ms, run_clients
from framework.bench.config import BenchConfig
from framework.bench.processes import RunningServer
from framework.bench.report import Column, Row, WorkloadReport
from framework.bench.socketserver_peer import CARRY_ENV, carried_modules
from framework.bench.targets import Context

COLUMNS = [
    Column("cpu_s", "server CPU s", 3),
    Column("cpu_us_per_conn", "CPU µs/conn", 0),
    Column("load_us_per_conn", "over the load µs/conn", 1),
    Column("stop_ms", "stop CPU ms", 1),
    Column("faults_per_conn", "minor faults/conn", 1),
    Column("main_us_per_conn", "main process µs/conn", 0),
    Column("main_faults_per_conn", "main process faults/conn", 1),
    Column("process_control_cpu_s", "process-control CPU s", 3),
    Column("process_control_us_per_conn", "process-control µs/conn", 0),
    Column("conn_per_s", "conn/s", 0),
    Column("p99_ms", "p99 ms", 2),
    Column("errors", "errors", 0),
]


def warm_up(server: RunningServer, nbytes: int, count: int = 20) -> None:
    """A few connections from the lab itself, so first-use costs (imports, caches) are not measured."""
    for _ in range(count):
        with socket.create_connection((server.host, server.port), 10) as sock:
            sock.sendall(b"%d\n" % nbytes)
            while sock.recv(65536):
                pass


def measure_once(config: BenchConfig, server: RunningServer) -> dict[str, float | None]:
    """One repeat: warm-up, baseline, load, graceful stop; the server's CPU and the clients' rate."""
    scale = config.scale
    warm_up(server, scale.nbytes)
    specs = [{"kind": "nbytes", "host": server.host, "port": server.port, "connections": scale.connections,
              "bytes": scale.nbytes, "duration": 60.0}
             for _ in range(scale.clients)]
    baseline = server.cpu_seconds()
    faults_before = server.minor_faults()
    main_before = server.main_process_usage()
    load = run_clients(specs, time_limit=90.0)
    main_after = server.main_process_usage()
    loaded = server.cpu_seconds()
    stopped = server.stop()
    cpu = max(0.0, stopped.cpu_seconds - baseline)
    faults = max(0, stopped.minor_faults - faults_before)
    done = load.done
    return {
        "cpu_s": cpu, "cpu_us_per_conn": cpu / done * 1e6 if done else None,
        "load_us_per_conn": max(0.0, loaded - baseline) / done * 1e6 if done else None,
        "stop_ms": max(0.0, stopped.cpu_seconds - loaded) * 1e3,
        "faults_per_conn": faults / done if done else None,
        **main_process_share(main_before, main_after, done),
        "conn_per_s": done / load.wall_seconds if load.wall_seconds > 0 else None,
        **latency_ms(load.latencies), "errors": float(load.errors), "connections": float(done),
        "killed": 1.0 if stopped.killed else 0.0,
    }


def main_process_share(before: tuple[float, int] | None, after: tuple[float, int] | None,
                       done: int) -> dict[str, float | None]:
    """The main process's CPU µs and faults per connection between two samples (None if it was gone)."""
    if before is None or after is None or not done:
        return {"main_us_per_conn": None, "main_faults_per_conn": None}
    return {"main_us_per_conn": (after[0] - before[0]) / done * 1e6,
            "main_faults_per_conn": (after[1] - before[1]) / done}


def noise_floor_us(row: Row, exact_clock: bool = False) -> float:
    """The smallest per-connection CPU difference a row can show: its spread, or (read from ``/proc``)
    one clock tick over its connections if that is more."""
    done = row.metrics.get("connections") or 1.0
    spread = row.spread.get("cpu_us_per_conn", {})
    low, high = spread.get("min"), spread.get("max")
    tick = 0.0 if exact_clock else 1e6 / procfs.CLOCK_TICKS / done
    return max(tick, (high - low) if low is not None and high is not None else 0.0)


def add_process_control(report: WorkloadReport, exact_clock: bool = False) -> None:
    """Server CPU minus the iterative server's: Stevens' Figure 30.1 column.

    A model cannot cost less than doing nothing: a difference below zero is
    noise, shown as 0 with a note naming the noise floor (the spread of
    iterative's repeats, or with CPU read from ``/proc`` (*exact_clock*
    false) one clock tick over the connections if that is more).
    """
    baseline = next((row for row in report.rows if row.strategy == "iterative"), None)
    base = baseline.metrics.get("cpu_us_per_conn") if baseline else None
    if baseline is None or base is None:
        report.notes.append("no iterative row, so no process-control CPU (it is measured against iterative)")
        return
    clamped = []
    for row in report.rows:
        per_conn = row.metrics.get("cpu_us_per_conn")
        done = row.metrics.get("connections")
        if per_conn is None or not done:
            continue
        extra = per_conn - base
        if extra < 0:
            clamped.append(row.target)
            extra = 0.0
        row.metrics["process_control_us_per_conn"] = extra
        row.metrics["process_control_cpu_s"] = extra * done / 1e6
    if clamped:
        floor = ("iterative's spread" if exact_clock else
                 f"one {1000 / procfs.CLOCK_TICKS:.0f} ms clock tick over the connections, or iterative's spread")
        report.notes.append(
            f"process-control CPU below zero shown as 0 for {', '.join(clamped)}: below the noise floor of"
            f" {noise_floor_us(baseline, exact_clock):.0f} µs per connection ({floor})")


def recommend(report: WorkloadReport) -> str:
    """The model that serves short connections at least cost, and what forking one process per connection adds."""
    rows = [row for row in report.rows if row.kind == "forkthread" and row.strategy != "iterative"
            and row.metrics.get("cpu_us_per_conn") is not None]
    if not rows:
        return ""
    cheapest = min(rows, key=lambda row: row.metrics["cpu_us_per_conn"] or 0.0)
    fastest = max(rows, key=lambda row: row.metrics.get("conn_per_s") or 0.0)
    forking = next((row for row in rows if row.target == "forking"), None)
    text = (f"**Recommendation** for short connections (one request each): {cheapest.target} costs the server least"
            f" per connection ({cheapest.metrics['cpu_us_per_conn']:,.0f} µs); {fastest.target} served the most"
            f" per second ({fastest.metrics.get('conn_per_s') or 0:,.0f}).")
    if forking is not None and forking is not cheapest:
        extra = (forking.metrics["cpu_us_per_conn"] or 0.0) - (cheapest.metrics["cpu_us_per_conn"] or 0.0)
        text += f"  A process per connection (forking) adds {extra:,.0f} µs per connection: the fork."
    return text


def run(config: BenchConfig) -> WorkloadReport:
    """Measure every strategy (with variants) and the socketserver peers."""
    scale = config.scale
    report = WorkloadReport(
        name="stevens", title="stevens: UNP ch. 30, short connections",
        description=(f"{scale.clients} client processes x {scale.connections} connections each, every connection"
                     f" asking for {scale.nbytes} bytes (UNP ch. 30: K=5, N=500, B=4000).  Server CPU is user +"
                     " system of the whole server process tree, reaped children included; process-control CPU is"
                     " that minus the iterative server's (Stevens' Figure 30.1 measure).  Minor faults are the"
                     " tree's too: a forked child's are mostly pages of its parent's copied on first write."
                     "  The main process's share (its own threads, over the load) leaves the rest of the tree's"
                     " to its children or workers."
                     f"  Servers take turns within each repeat; median of {scale.repeat} runs, (min-max)."),
        columns=COLUMNS, ratio_metric="conn_per_s")
    context = Context(server="nbytes", protocol="nbytes")
    total = scale.clients * scale.connections
    targets = list(session.runnable(config, report, context, variants=True))
    samples: dict[str, list[dict[str, float | None]]] = {target.name: [] for target in targets}
    notes: dict[str, list[str]] = {target.name: [] for target in targets}
    failed: set[str] = set()
    # Servers take turns within each repeat (as in http): a burst of other work on the
    # machine lands on one repeat of every server, not on every repeat of one.
    for repeat in range(scale.repeat):
        for target in targets:
            if target.name in failed:
                continue
            try:
                with session.start(config, target, context) as server:
                    sample = measure_once(config, server)
            except session.MEASUREMENT_ERRORS as exc:
                notes[target.name].append(f"run {repeat + 1} failed: {exc}")
                if isinstance(exc, session.ServerStartError):
                    failed.add(target.name)  # it will not start next time either
                config.progress(f"stevens: {target.name}: run {repeat + 1} failed: {exc}")
                continue
            samples[target.name].append(sample)
            config.progress(
                f"stevens: {target.name:<26} run {repeat + 1}/{scale.repeat}: {sample['connections']:.0f}/{total}"
                f" connections, {sample['conn_per_s']:.0f}/s, server CPU {sample['cpu_s']:.3f}s")
    for target in targets:  # rows in the usual order
        taken = samples[target.name]
        if taken:
            row: Row = session.add_row(report, target, {}, taken, notes[target.name])
            if row.metrics.get("errors"):
                row.notes.append(f"{row.metrics['errors']:.0f} failed connections (median)")
            if any(sample["killed"] for sample in taken):
                row.notes.append("did not stop gracefully: killed, so its children's CPU may be missing")
        else:
            session.skip(config, report, target, "; ".join(notes[target.name]))
    carried = carried_modules()
    if carried:
        report.notes.append(f"the socketserver peers carried {', '.join(carried)}, unused ({CARRY_ENV}):"
                            " a measurement of what loaded modules cost, not the lean peers")
    add_process_control(report, exact_clock=config.cgroups)
    report.summary = recommend(report)
    from framework.bench.plots import plot_stevens

    plot_stevens(config, report)
    return report
