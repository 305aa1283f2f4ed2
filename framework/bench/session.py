"""What every workload shares: choosing targets, starting servers on the right CPUs, recording rows."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator, Sequence

from framework.bench.clients import LoadError
from framework.bench.config import BenchConfig
from framework.bench.peers import peer_targets
from framework.bench.processes import RunningServer, ServerStartError
from framework.bench.report import Row, WorkloadReport, combine
from framework.bench.targets import Context, Target, strategy_targets

__all__ = ["MEASUREMENT_ERRORS", "ServerStartError", "Target", "add_row", "runnable", "skip", "start", "targets"]

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
    return RunningServer(target.command(context), cpus=config.server_cpus)


def add_row(report: WorkloadReport, target: Target, params: dict[str, object],
            samples: Sequence[dict[str, float | None]], notes: Sequence[str] = ()) -> Row:
    """Record *target*'s repeat *samples* at one load point as a row (median and spread)."""
    metrics, spread = combine(samples)
    row = Row(workload=report.name, target=target.name, kind=target.kind, strategy=target.strategy,
              params=dict(params), metrics=metrics, spread=spread, repeats=len(samples), notes=list(notes))
    report.rows.append(row)
    return row


def skip(config: BenchConfig, report: WorkloadReport, target: Target, reason: str) -> None:
    """Record that *target* has no row in *report*, and why."""
    report.notes.append(f"{target.name}: skipped: {reason}")
    config.progress(f"{report.name}: {target.name}: skipped: {reason}")
