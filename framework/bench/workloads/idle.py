"""``idle``: how many concurrent idle connections each model holds, and what each costs in memory.

One client process opens echo connections in batches of 64; each counts as
held only once the server has echoed a byte on it (a connection waiting in
the listen backlog is not *served*).  After every step the lab samples the
server tree's RSS and PSS.  It stops at ``--max-idle``, when a connection
is not served in time (the probe timeout plus 50 ms per connection of its
batch), at the time limit, or when free
memory runs low (a fork per connection is expensive).  RLIMIT_NOFILE is
raised to its hard limit first, and ``--max-idle`` is capped below it.
"""

from __future__ import annotations

import json
import time

from framework.bench import procfs, session
from framework.bench.clients import LoadError, client_processes, readline
from framework.bench.config import BenchConfig
from framework.bench.processes import RunningServer
from framework.bench.report import Column, WorkloadReport, recommendation
from framework.bench.targets import Context

COLUMNS = [
    Column("held", "connections held", 0),
    Column("rss_kib_per_conn", "RSS KiB/conn", 1),
    Column("pss_kib_per_conn", "anon PSS KiB/conn", 1),
    Column("rss_mib", "tree RSS MiB", 1),
    Column("processes", "processes", 0),
    Column("threads", "threads", 0),
]
#: Stop opening connections when the machine's available memory falls below this share of it
#: (a fork per connection costs about a megabyte each; the machine is shared).
MEMORY_RESERVE_FRACTION = 0.4
#: Descriptors kept back from RLIMIT_NOFILE for everything else a process opens.
FD_MARGIN = 200


def hold(config: BenchConfig, server: RunningServer, most: int) -> tuple[dict[str, float | None], str]:
    """Open up to *most* served idle connections; return the metrics at the peak and why it stopped."""
    scale = config.scale
    step = max(1, most // 20)
    spec = {"kind": "idle", "host": server.host, "port": server.port, "max": most, "step": step,
            "duration": scale.idle_seconds + 30.0, "probe_timeout": 0.5 if config.quick else 1.0}
    held = 0
    reason = ""
    reserve = int(procfs.mem_total_kib() * MEMORY_RESERVE_FRACTION)
    with client_processes([spec]) as procs:
        # Measured with the client running: PSS splits the pages python processes share (libpython)
        # between all of them, so a process starting between two samples would skew the difference.
        empty = peak = server.memory()
        deadline = time.monotonic() + scale.idle_seconds
        proc = procs[0]
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
        while True:
            line = readline(proc.stdout, scale.idle_seconds + 60.0)
            if not line.startswith("held "):
                result = json.loads(line) if line.strip() else {}
                reason = reason or str(result.get("reason", "client ended"))
                break
            held = int(line.split()[1])
            peak = server.memory()
            available = procfs.mem_available_kib()
            if held >= most:
                answer = "more"  # the client stops by itself, with its own reason
            elif available is not None and available < reserve:
                reason = f"stopped: less than {reserve >> 20} GiB of memory left"
                answer = "stop"
            elif time.monotonic() >= deadline:
                reason = f"stopped: time limit {scale.idle_seconds:g}s"
                answer = "stop"
            else:
                answer = "more"
            proc.stdin.write(answer + "\n")
            proc.stdin.flush()
        proc.wait(30)
    if held == 0:
        raise LoadError(f"no connection held ({reason})")
    return {
        "held": float(held),
        "rss_kib_per_conn": (peak.rss_kib - empty.rss_kib) / held,
        "pss_kib_per_conn": (peak.pss_kib - empty.pss_kib) / held if peak.pss_kib else None,
        "rss_mib": peak.rss_kib / 1024, "processes": float(peak.processes), "threads": float(peak.threads),
    }, reason


def run(config: BenchConfig) -> WorkloadReport:
    """Measure every strategy and the echo peers, one run each (memory does not need repeats)."""
    import resource

    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    most = min(config.scale.max_idle, max(1, soft - FD_MARGIN))
    report = WorkloadReport(
        name="idle", title="idle: concurrent idle connections and memory",
        description=(f"Up to {most} echo connections opened in batches of 64, each proven served by a one-byte echo"
                     " (a batch has 1 s + 50 ms per connection),"
                     " then held idle.  RSS counts pages shared between forked processes once per process;"
                     " anon PSS is anonymous memory (heap, stacks) with shared pages divided between their sharers"
                     " (the real footprint).  Per-connection figures are"
                     " (tree at peak - tree before) / connections held.  One run per server."),
        columns=COLUMNS, ratio_metric="held")
    if most < config.scale.max_idle:
        report.notes.append(f"--max-idle {config.scale.max_idle} capped to {most} by RLIMIT_NOFILE ({soft})")
    context = Context(server="echo", protocol="echo", server_options=["--timeout", "0"])
    for target in session.runnable(config, report, context):
        try:
            with session.start(config, target, context) as server:
                metrics, reason = hold(config, server, most)
        except session.MEASUREMENT_ERRORS as exc:
            session.skip(config, report, target, f"failed: {exc}")
            continue
        config.progress(f"idle: {target.name:<24} held {metrics['held']:.0f}"
                        f" ({reason}), PSS {metrics['pss_kib_per_conn'] or 0:.1f} KiB/conn")
        session.add_row(report, target, {}, [metrics], [reason])
    from framework.bench.plots import plot_idle

    plot_idle(config, report)
    report.summary = recommendation(report)
    return report
