"""``forkthread bench MODULE:CLASS``: which model for *your* server?  Your own code under every model that carries it.

The user's server is a new *target* of what the ``work`` workload does
(issue 24): the same closed-loop load from up to four load-generator
processes, the same samples of the server (:class:`~framework.bench.workloads.work.Probe`),
the same figures per point, and the same verdict rules
(:mod:`framework.bench.verdict`).  What differs is the exchange, described by
the user (:mod:`framework.bench.exchange`), and what it costs, which the lab
does not know beforehand: it is measured.  Before each point the exchange is
done alone a few times (its own time, *alone ms*); the least CPU per exchange
of any model is its computing part, the rest of its own time its waiting
part.  That split is what the verdict rules read as the work kind.

Every strategy form is offered; one the server class refuses (a blocking
handler under an event loop: :meth:`framework.server.Server.refusal`, the
rule ``serve`` applies) gets a note saying why instead of a row.  A failed
exchange is counted by its reason, a model under which the server does not
start becomes a row with the reason: the run goes on.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import math
import os
import tempfile
from typing import Any

from framework.bench import session, wrk
from framework.bench.clients import split
from framework.bench.config import BenchConfig, OwnServer
from framework.bench.exchange import ExchangeFunction, ExchangeSpec, alone, make_exchange
from framework.bench.peers import WSGI_TRAITS
from framework.bench.processes import RunningServer
from framework.bench.report import Column, Row, WorkloadReport
from framework.bench.targets import Context, Target, serve_command
from framework.bench.workloads.work import FORMS, MAX_CLIENT_PROCESSES, Probe, measure_load, point_figures
from framework.bench.wsgi_apps import APPS as WSGI_APPS
from framework.cli import strategy_refusal
from framework.server import Server
from framework.strategies import STRATEGIES
from servers.work import WorkSpec, calibrate

COLUMNS = [
    Column("req_per_s", "exchanges/s", 0),
    Column("p50_ms", "p50 ms", 2),
    Column("p99_ms", "p99 ms", 2),
    Column("alone_ms", "alone ms", 2),
    Column("cores_used", "cores used", 2),
    Column("cpu_us_per_req", "CPU µs/exchange", 1),
    Column("pss_mib", "anon PSS MiB", 1),
    Column("processes", "procs", 0),
    Column("failed_exchanges", "failed exchanges", 0),
    Column("starved", "starved conns", 0),
    Column("load_avg", "load avg before", 2),
]
#: A computing or waiting part below this share of the exchange's own time is left out of its kind.
MINOR_SHARE = 0.25


#: Why the forkthread rows of ``bench wsgi`` are missing when this checkout has no WSGI server.
NO_WSGI = "this forkthread has no `serve wsgi` server (forkthread serve wsgi --app MODULE:CALLABLE)"


def own_targets(config: BenchConfig, cls: type[Server] | None, own: OwnServer, context: Context) -> list[Target]:
    """Every strategy form (filtered by ``--strategies``), each with the class's refusal as its skip reason.

    Then, for a WSGI app, the WSGI peers (by ``--servers``) serving the same app.
    """
    targets = []
    for strategy in STRATEGIES:
        if config.strategies is not None and strategy not in config.strategies:
            continue
        for label, options, traits in FORMS.get(strategy, [(strategy, [], frozenset())]):
            def command(context: Context, strategy: str = strategy, options: list[str] = options) -> Any:
                return serve_command(context.server, strategy, options, context.server_options, context.env)

            try:
                skip = NO_WSGI if cls is None else strategy_refusal(cls, strategy, [*options, *own.serve_options])
            except ValueError as exc:  # a strategy this interpreter cannot build (or options it refuses)
                skip = f"cannot be built here: {exc}"
            targets.append(Target(name=label, kind="forkthread", command=command, strategy=strategy, traits=traits,
                                  skip=skip))
    if own.app:
        targets += [dataclasses.replace(target, traits=WSGI_TRAITS.get(target.name, frozenset()))
                    for target in session.targets(config, context) if target.kind == "peer"]
    return targets


def _lua_string(text: str) -> str:
    return '"' + "".join(char if 32 <= ord(char) < 127 and char not in '"\\' else f"\\{ord(char)}"
                         for char in text) + '"'


def wrk_script(spec: ExchangeSpec, directory: str) -> str:
    """A wrk Lua script taking the paths in turn with the method and body (one file in *directory*)."""
    path = os.path.join(directory, "exchange.lua")
    paths = ", ".join(_lua_string(item) for item in spec.paths)
    with open(path, "w") as file:
        file.write(f"local paths = {{{paths}}}\nlocal turn = 0\n"
                   f"request = function()\n  turn = turn % #paths + 1\n"
                   f"  return wrk.format({_lua_string(spec.method)}, paths[turn], nil,"
                   f" {_lua_string(spec.body) if spec.body else 'nil'})\nend\n")
    return path


def _wrk_point(config: BenchConfig, server: RunningServer, script: str, connections: int, duration: float,
               failures: collections.Counter[str]) -> dict[str, float | None]:
    seconds = max(1, math.ceil(duration))
    argv = wrk.wrk_argv(f"http://{server.host}:{server.port}/", connections, seconds)
    argv[-1:-1] = ["-s", script]
    probe = Probe(server, float(seconds))
    probe.start()
    result = wrk.run_wrk(argv, config.client_cpus, time_limit=seconds + 30.0)
    sample = point_figures(probe.join(), result.requests, [{"elapsed": result.seconds}], [], None,
                           float(result.socket_errors + result.non_2xx))
    for key in ("p50", "p99"):
        value = result.latency.get(key)
        sample[f"{key}_ms"] = None if value is None else value * 1e3
    failures.update({name: count for name, count in (("answered neither 2xx nor 3xx", result.non_2xx),
                                                      ("socket errors (wrk)", result.socket_errors)) if count})
    return sample


def measure(config: BenchConfig, own: OwnServer, exchange: ExchangeFunction, script: str | None,
            failures: collections.Counter[str], server: RunningServer, connections: int,
            duration: float) -> dict[str, float | None]:
    """One point: the exchange alone (its own time, and the warm-up), then C connections for *duration* seconds."""
    by_itself = alone(server.host, server.port, exchange, server.pid, per_exchange=own.per_exchange)
    if script is not None:
        sample = _wrk_point(config, server, script, connections, duration, failures)
    else:
        specs: list[dict[str, object]] = [
            {"kind": "exchange", "host": server.host, "port": server.port, "connections": share,
             "duration": duration, "max_requests": 5_000_000, "timeout": 30.0,
             "exchange": dataclasses.asdict(own.exchange), "per_exchange": own.per_exchange}
            for share in split(connections, min(connections, MAX_CLIENT_PROCESSES))]
        sample, load = measure_load(server, specs, duration)
        for client in load.per_client:
            failures.update(client.get("failures", {}))
    cpu_ms = sample.get("cpu_ms_per_req")
    sample.update(cpu_us_per_req=None if cpu_ms is None else cpu_ms * 1e3, failed_exchanges=sample.get("errors"),
                  alone_ms=by_itself.wall_ms, alone_cpu_ms=by_itself.cpu_ms,
                  alone_wait_ms=by_itself.wait_ms)
    return sample


def exchange_cost(rows: list[Row]) -> WorkSpec:
    """What one exchange is made of, from the exchange done alone under each model: computing, and waiting.

    Computing is the server's time on a CPU per exchange, waiting the rest
    of its own time less any wait for a CPU, each the least over the models:
    the leanest server shows what the exchange itself costs.  ``forking``
    counts for computing only when alone: a child that ended took its CPU
    time with it, so its exchanges would look cheaper than they are.  A part under
    :data:`MINOR_SHARE` of the whole is left out, so the verdict reads the
    exchange as computing, as waiting, or as both.
    """
    kept = [row for row in rows if row.strategy != "forking"] or rows  # its ended children took their CPU along
    cpus = [value for row in kept if (value := row.metrics.get("alone_cpu_ms")) is not None]
    waits = [value for row in rows if (value := row.metrics.get("alone_wait_ms")) is not None]
    if not cpus or not waits:
        return WorkSpec()
    cpu, wait = min(cpus), min(waits)
    whole = cpu + wait
    if wait < MINOR_SHARE * whole:
        wait = 0.0
    elif cpu < MINOR_SHARE * whole:
        cpu = 0.0
    return WorkSpec(cpu_ms=round(cpu, 3), sleep_ms=round(wait, 3))


def _failure_note(failures: collections.Counter[str]) -> str:
    listed = "; ".join(f"{reason} ({count})" for reason, count in failures.most_common(3))
    more = f"; {len(failures) - 3} other reasons" if len(failures) > 3 else ""
    return f"{sum(failures.values())} failed exchanges over all runs: {listed}{more}"


def run(config: BenchConfig) -> WorkloadReport:
    """Measure the user's server under every model that carries it, at each concurrency; recommend one."""
    from framework.bench import verdict
    from framework.bench.plots import plot_own

    own = config.own
    assert own is not None
    cls = own_class(own.target)
    scale = config.scale
    use_wrk = (own.exchange.kind == "http" and not own.per_exchange
               and (config.client == "wrk" or (config.client == "auto" and wrk.available())))
    style = "one connection per exchange (connect, exchange, close)" if own.per_exchange else "persistent connections"
    client = ("wrk (1 thread)" if use_wrk
              else f"up to {MAX_CLIENT_PROCESSES} load-generator processes, a thread per connection")
    name, title = ((f"wsgi {own.label}", f"wsgi {own.label}: {WSGI_APPS[own.label]}") if own.label else
                   ("wsgi", f"wsgi {own.app}: your WSGI app") if own.app else
                   ("server", f"{own.target}: your server"))
    env = {"FORKTHREAD_BENCH_CALIBRATION": str(calibrate())} if own.label == "cpu" else {}
    peers = ("  Beside the WSGI peers serving the same app, one process each: gunicorn sync, gunicorn gthread"
             " (8 threads), waitress (4 threads), uWSGI (pyuwsgi, HTTP/1.1 socket), granian (its default threads),"
             " where installed." if own.app else "")
    report = WorkloadReport(
        name=name, title=f"{title} under every model",
        description=(
            f"Load: {own.exchange.describe()}, on {style}; C closed-loop connections"
            f" (C = {', '.join(map(str, scale.concurrency))}) for {scale.work_duration:g} s per point, from {client}."
            f"  Serve options: {' '.join(own.serve_options) or 'none'}.  Alone ms is the exchange done alone, one"
            " after another, before each point (the median of at least 5, over at least 0.2 s); what it is made"
            " of (computing, waiting) comes from the kernel's per-thread accounting (schedstat) meanwhile."
            "  Cores used = server tree CPU / wall time over the load window; anon PSS the server tree's anonymous"
            " memory mid-point; starved connections got no exchange done in the point's time.  Every run on a"
            " fresh server process."
            f"  Median of {scale.repeat} runs, (min-max).{peers}"),
        columns=COLUMNS, ratio_metric="req_per_s", params=["connections"])
    if own.exchange.kind == "http" and not use_wrk:
        why = ("--connection-per-exchange" if own.per_exchange else
               "--client builtin" if config.client == "builtin" else "wrk is not installed")
        report.notes.append(f"{why}: HTTP load from the built-in client (slower than wrk; it may be the bottleneck)")
    exchange = make_exchange(own.exchange, own.per_exchange)
    context = Context(server=own.target, protocol="wsgi" if own.app else "own", server_options=list(own.serve_options),
                      app=own.app, env=env)
    with tempfile.TemporaryDirectory(prefix="forkthread-bench-own-") as scratch:
        script = wrk_script(own.exchange, scratch) if use_wrk else None
        for target in own_targets(config, cls, own, context):
            if target.skip:
                session.skip(config, report, target, target.skip)
                continue
            _measure_target(config, report, target, context, own, exchange, script)
    cost = exchange_cost(report.rows)
    cpus = os.cpu_count() or 1
    found = verdict.verdicts(report.rows, cpus, spec_of=lambda row: cost, every_concurrency=True)
    report.summary = render_verdict(found, cost, cpus, report)
    plot_own(config, report)
    return report


def own_class(target: str) -> type[Server] | None:
    """The server class ``serve TARGET`` would run: ``MODULE:CLASS``, or a registered name (None when it is not)."""
    from framework.cli import load_server_target
    from framework.registry import server_class, server_targets

    if ":" in target:
        return load_server_target(target)
    return server_class(target) if target in server_targets() else None


def _measure_target(config: BenchConfig, report: WorkloadReport, target: Target, context: Context, own: OwnServer,
                    exchange: ExchangeFunction, script: str | None) -> None:
    scale = config.scale
    for connections in scale.concurrency:
        failures: collections.Counter[str] = collections.Counter()
        params: dict[str, object] = {"connections": connections}
        try:
            samples = session.fresh_repeats(
                config, target, context, f"server: {target.name:<28} C={connections:<4}", scale.repeat,
                functools.partial(measure, config, own, exchange, script, failures, connections=connections,
                                  duration=scale.work_duration))
        except session.ServerStartError as exc:
            session.add_row(report, target, params, [], [f"the server did not start: {_one_line(exc)}"])
            config.progress(f"server: {target.name}: did not start: {_one_line(exc)}")
            return  # it will not start at another concurrency either
        except session.MEASUREMENT_ERRORS as exc:
            session.add_row(report, target, params, [], [f"failed: {_one_line(exc)}"])
            config.progress(f"server: {target.name}: C={connections}: failed: {_one_line(exc)}")
            continue
        session.add_row(report, target, params, samples, [_failure_note(failures)] if failures else [])


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] + ("..." if len(text) > 300 else "")


def render_verdict(found: list[Any], cost: WorkSpec, cpus: int, report: WorkloadReport) -> str:
    """Markdown: what an exchange is made of, the best model at each concurrency, and the recommendation last."""
    from framework.bench import verdict

    parts = [f"{cost.cpu_ms:.3g} ms" + " computing" if cost.cpu_ms else "",
             f"{cost.sleep_ms:.3g} ms" + " waiting" if cost.sleep_ms else ""]
    lines = [f"Your exchange, measured: {' and '.join(part for part in parts if part) or 'too quick to split'}"
             " (done alone before each point: the server's time on a CPU, and the rest of the time less any"
             " wait for a CPU)."]
    absent = [note for note in report.notes if ": skipped: " in note]
    if absent:
        lines += ["", "Not measured:", "", *[f"- {note.replace(': skipped: ', ': ', 1)}" for note in absent]]
    failed = [row for row in report.rows if row.metrics.get("req_per_s") is None]
    if failed:
        lines += ["", "Failed:", "", *[f"- {row.target} at {row.params['connections']} connections: "
                                       f"{'; '.join(row.notes)}" for row in failed]]
    for item in found:
        lines += ["", f"#### at {item.connections} connections", ""]
        lines += [f"{rank}. {fig.target}: {fig.req_per_s:,.0f} exchanges/s, p99 {verdict.format_ms(fig.p99_ms)}"
                  f" — {item.reasons[fig.target]}" for rank, fig in enumerate(item.by_throughput, 1)]
    advice = verdict.recommendations(found, cpus, lambda item: f"at {item.connections} connections")
    if advice:
        lines += ["", f"**Recommendation** for {report.title.split(':')[0]} (of the models within"
                  f" {1 - verdict.TIE:.0%} of the best rate, none starving, the one with the least memory):", "",
                  *advice]
    else:
        lines += ["", "**Recommendation**: none — no model completed an exchange under load."]
    return "\n".join(lines)
