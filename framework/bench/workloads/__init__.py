"""The workloads of ``forkthread bench``: each module's ``run(config)`` returns a WorkloadReport."""

from __future__ import annotations

from collections.abc import Callable

from framework.bench.config import BenchConfig
from framework.bench.report import WorkloadReport
from framework.bench.workloads import echo_rr, http, idle, own, stevens, work

WORKLOADS: dict[str, Callable[[BenchConfig], WorkloadReport]] = {
    "stevens": stevens.run,
    "echo-rr": echo_rr.run,
    "http": http.run,
    "idle": idle.run,
    "work": work.run,
    #: ``forkthread bench MODULE:CLASS``: the user's own server (:attr:`BenchConfig.own`).
    "server": own.run,
}
