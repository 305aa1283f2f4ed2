"""Running load: K client processes (:mod:`framework.bench.loadgen`) started together, bounded in time.

Also the statistics the workloads share: medians, spreads and percentiles.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import selectors
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import IO, Any

from framework.bench.targets import child_env


class LoadError(RuntimeError):
    """The client processes did not start, or did not report a result."""


@dataclasses.dataclass
class LoadResult:
    """What K client processes did together."""

    done: int
    errors: int
    wall_seconds: float
    latencies: list[float]
    per_client: list[dict[str, Any]]

    def total(self, key: str) -> int:
        """Sum of an integer field over the clients (``starved``, ...)."""
        return sum(int(client.get(key, 0)) for client in self.per_client)


def _loadgen_argv(spec: dict[str, Any]) -> list[str]:
    return [sys.executable, "-m", "framework.bench.loadgen", json.dumps(spec)]


def readline(stream: IO[str], timeout: float) -> str:
    """One line from *stream* (a client's stdout), waiting at most *timeout* seconds."""
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        if not selector.select(timeout):
            raise LoadError(f"no answer from a client process within {timeout:.0f}s")
    return stream.readline()


@contextlib.contextmanager
def client_processes(
    specs: Sequence[dict[str, Any]], start_timeout: float = 20.0,
) -> Iterator[list[subprocess.Popen[str]]]:
    """Start one loadgen process per spec and wait until all are ready; kill leftovers on exit."""
    procs: list[subprocess.Popen[str]] = []
    try:
        for spec in specs:
            procs.append(subprocess.Popen(_loadgen_argv(spec), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                          text=True, env=child_env()))
        for proc in procs:
            assert proc.stdout is not None
            if readline(proc.stdout, start_timeout).strip() != "ready":
                raise LoadError(f"client process failed to start (status {proc.poll()})")
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()


def run_clients(specs: Sequence[dict[str, Any]], time_limit: float,
                on_go: Callable[[], object] | None = None) -> LoadResult:
    """Run the clients together; *time_limit* bounds the whole run (the specs bound themselves too).

    *on_go* is called once every client has been told to start (to sample the server during the load).
    """
    with client_processes(specs) as procs:
        started = time.monotonic()
        for proc in procs:
            assert proc.stdin is not None
            # The start time goes along (CLOCK_MONOTONIC is one clock for every process on Linux), so
            # generators that keep a deadline all keep the same one, however late their "go" arrives.
            proc.stdin.write(f"go {started!r}\n")
            proc.stdin.flush()
        if on_go is not None:
            on_go()
        results = []
        deadline = started + time_limit
        for proc in procs:
            assert proc.stdout is not None
            line = readline(proc.stdout, max(0.1, deadline - time.monotonic()))
            if not line:
                raise LoadError(f"client process ended without a result (status {proc.wait()})")
            results.append(json.loads(line))
        wall = time.monotonic() - started
    latencies = [value for result in results for value in result.get("latencies", [])]
    return LoadResult(
        done=sum(int(result.get("done", 0)) for result in results),
        errors=sum(int(result.get("errors", 0)) for result in results),
        wall_seconds=wall, latencies=latencies, per_client=results,
    )


def split(total: int, parts: int) -> list[int]:
    """*total* spread over *parts* as evenly as possible (no part is 0 unless total < parts)."""
    base, extra = divmod(total, parts)
    return [base + (1 if index < extra else 0) for index in range(parts) if base or index < extra]


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """The *fraction* (0..1) percentile by nearest rank; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))
    return ordered[rank]


def latency_ms(latencies: Sequence[float]) -> dict[str, float | None]:
    """``{"p50_ms": ..., "p99_ms": ...}`` of latencies given in seconds (None when there are none)."""
    out: dict[str, float | None] = {}
    for name, fraction in (("p50_ms", 0.50), ("p99_ms", 0.99)):
        value = percentile(latencies, fraction)
        out[name] = None if value is None else value * 1e3
    return out


def summarize(samples: Sequence[float | None]) -> dict[str, float | None]:
    """Median, min and max of repeat measurements (None entries ignored)."""
    values = [value for value in samples if value is not None]
    if not values:
        return {"median": None, "min": None, "max": None}
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}
