"""What every workload shares: choosing targets, starting servers on the right CPUs, recording rows."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator, Sequence

from framework.bench.clients import LoadError
from framework.bench.config import BenchConfig
from framework.bench.peers import peer_targets
from framework.bench.processes import RunningServer, ServerStartError
from framework.bench.report import Row, WorkloadReport, combine
from framework.bench.targets import Context, Target, strategy_targets

__all__ = ["MEASUREMENT_ERRORS", "ServerStartError", "Target", "add_row", "fresh_repeats", "overloaded", "runnable",
           "skip", "start", "targets"]

#: Failures of one server that end its row with a note instead of ending the run.
MEASUREMENT_ERRORS = (ServerStartError, LoadError, OSError, ValueError, TimeoutError, subprocess.SubprocessError)


def targets(config: BenchConfig, context: Context, variants: bool = False) -> list[Target]:
    """The forkthread strategies (filtered by ``--strategies``) then the peers (by ``--servers``)."""
    chosen_peers = config.servers
    if chosen_peers is not None and [name.lower() for name in chosen_peers] == ["none"]:
        peers: list[Target] = []
    else:
        peers = peer_targets(context.protocol, chosen_peers, tls=bool(context.tls_cert))
    return strategy_targets(variants, config.strategies) + peers


def runnable(config: BenchConfig, report: WorkloadReport, context: Context, variants: bool = False) -> Iterator[Target]:
    """The targets that can run; each one that cannot gets its note in *report* instead."""
    for target in targets(config, context, variants):
        if target.skip:
            skip(config, report, target, target.skip)
        else:
            yield target


def start(config: BenchConfig, target: Target, context: Context) -> RunningServer:
    """Start *target*'s server for *context*, on the server CPUs when pinning."""
    assert target.command is not None
    return RunningServer(target.command(context), cpus=config.server_cpus, own_cgroup=config.cgroups)


def add_row(report: WorkloadReport, target: Target, params: dict[str, object],
            samples: Sequence[dict[str, float | None]], notes: Sequence[str] = ()) -> Row:
    """Record *target*'s repeat *samples* at one load point as a row (median and spread)."""
    metrics, spread = combine(samples)
    row = Row(workload=report.name, target=target.name, kind=target.kind, strategy=target.strategy,
              params=dict(params), metrics=metrics, spread=spread, repeats=len(samples), notes=list(notes),
              traits=sorted(target.traits))
    report.rows.append(row)
    return row


def skip(config: BenchConfig, report: WorkloadReport, target: Target, reason: str) -> None:
    """Record that *target* has no row in *report*, and why."""
    report.notes.append(f"{target.name}: skipped: {reason}")
    config.progress(f"{report.name}: {target.name}: skipped: {reason}")


def overloaded(load: float, cpus: int) -> bool:
    """The rule for re-running a point: the machine's 1-minute load average was above its CPU count."""
    return load > cpus


def fresh_repeats(config: BenchConfig, target: Target, context: Context, label: str, repeats: int,
                  measure: Callable[[RunningServer], dict[str, float | None]],
                  warm_up: Callable[[RunningServer], object] | None = None) -> list[dict[str, float | None]]:
    """*repeats* repeats of one load point, each on a fresh server process: see :func:`fresh_sample`."""
    return [fresh_sample(config, target, context, f"{label} run {repeat + 1}/{repeats}", measure, warm_up)
            for repeat in range(repeats)]


def fresh_sample(config: BenchConfig, target: Target, context: Context, label: str,
                 measure: Callable[[RunningServer], dict[str, float | None]],
                 warm_up: Callable[[RunningServer], object] | None = None) -> dict[str, float | None]:
    """One repeat of one load point on a fresh server process (started, warmed up, measured, stopped).

    The 1-minute load average before the repeat is kept in its sample
    (``load_avg``); when it was above the CPU count (:func:`overloaded`),
    the repeat is measured once more and the second try kept (``reruns``
    says so).  ``--quick`` does not re-run (its time is bounded).
    """
    cpus = os.cpu_count() or 1
    for attempt in range(2):
        load = os.getloadavg()[0]
        with start(config, target, context) as server:
            if warm_up is not None:
                warm_up(server)
            sample = measure(server)
        sample["load_avg"] = load
        sample["reruns"] = float(attempt)
        if not overloaded(load, cpus) or attempt or config.quick:
            break
        config.progress(f"{label}: load average {load:.2f} above {cpus} CPUs: measuring again")
    config.progress(f"{label}: " + ", ".join(f"{key} {value:.4g}" for key, value in sample.items()
                                             if value is not None and key in PROGRESS_KEYS))
    return sample


#: The metrics a progress line shows, when a sample has them.
PROGRESS_KEYS = ("rt_per_s", "req_per_s", "cpu_us_per_rt", "cpu_us_per_req", "cores_used", "p99_ms", "starved",
                 "load_avg")
