"""PNG plots of the results (needs matplotlib: the ``bench`` extra).

Without matplotlib every function adds one note saying how to get plots,
and the tables still come out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from framework.bench.config import BenchConfig
from framework.bench.peers import BENCH_EXTRA
from framework.bench.report import Row, WorkloadReport

MISSING = f"plots need matplotlib: {BENCH_EXTRA}"


def _pyplot(report: WorkloadReport) -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display needed
        import matplotlib.pyplot as pyplot
    except ImportError:
        if MISSING not in report.notes:
            report.notes.append(MISSING)
        return None
    return pyplot


def _save(config: BenchConfig, report: WorkloadReport, figure: Any, name: str) -> None:
    config.out.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(config.out / name, dpi=100, bbox_inches="tight")  # keeps a legend placed outside
    report.plots.append(name)
    figure.clf()
    import matplotlib.pyplot as pyplot

    pyplot.close(figure)


def _colour(row: Row) -> str:
    return "tab:blue" if row.kind == "forkthread" else "tab:gray"


def _short(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 10 else f"{value:.1f}"


def _bar_panel(axis: Any, rows: Sequence[Row], key: str, label: str) -> None:
    """One horizontal bar per row of *key*, with its spread as error bars and its value written beside it."""
    labels = [row.target for row in rows]
    values = [row.metrics.get(key) or 0.0 for row in rows]
    lows = [row.spread.get(key, {}).get("min") or 0.0 for row in rows]
    highs = [row.spread.get(key, {}).get("max") or 0.0 for row in rows]
    errors = [[max(0.0, value - low) for value, low in zip(values, lows, strict=True)],
              [max(0.0, high - value) for value, high in zip(values, highs, strict=True)]]
    bars_drawn = axis.barh(labels, values, color=[_colour(row) for row in rows], xerr=errors, capsize=2)
    axis.bar_label(bars_drawn, labels=[_short(value) for value in values], padding=3, fontsize="small")
    axis.margins(x=0.15)  # room for the labels
    axis.invert_yaxis()
    axis.set_xlabel(label)
    axis.grid(axis="x", alpha=0.3)


def bars(config: BenchConfig, report: WorkloadReport, rows: Sequence[Row], metrics: Sequence[tuple[str, str]],
         name: str, title: str) -> None:
    """Horizontal bar charts (one panel per metric) of *rows*; forkthread blue, peers grey."""
    pyplot = _pyplot(report)
    if pyplot is None or not rows:
        return
    figure, axes = pyplot.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 0.45 * len(rows) + 1.8),
                                   squeeze=False)
    for axis, (key, label) in zip(axes[0], metrics, strict=True):
        _bar_panel(axis, rows, key, label)
    axes[0][0].set_title(title, loc="left", fontsize="medium")
    _save(config, report, figure, name)


def lines(config: BenchConfig, report: WorkloadReport, rows: Sequence[Row], x: str, y: str, panel: str | None,
          name: str, title: str, ylabel: str) -> None:
    """Lines of *y* against *x* (log scale), one per server, one panel per value of *panel*.

    At one value of *x* (a ``--quick`` run) a line is a dot: bars instead, one panel per value of *panel*.
    """
    pyplot = _pyplot(report)
    if pyplot is None or not rows:
        return
    panels = list(dict.fromkeys(row.params.get(panel) for row in rows)) if panel else [None]  # in run order
    if len({row.params.get(x) for row in rows}) == 1:
        most = max(sum(1 for row in rows if panel is None or row.params.get(panel) == value) for value in panels)
        figure, axes = pyplot.subplots(1, len(panels), figsize=(5.5 * len(panels), 0.45 * most + 1.8), squeeze=False)
        for axis, value in zip(axes[0], panels, strict=True):
            _bar_panel(axis, [row for row in rows if panel is None or row.params.get(panel) == value], y, ylabel)
            at = f"{x} {rows[0].params.get(x)}" + ("" if value is None else f", {value}")
            axis.set_title(f"{title} ({at})", loc="left", fontsize="medium")
        _save(config, report, figure, name)
        return
    figure, axes = pyplot.subplots(1, len(panels), figsize=(5.5 * len(panels) + 1.5, 4.5), squeeze=False)
    for axis, value in zip(axes[0], panels, strict=True):
        chosen = [row for row in rows if panel is None or row.params.get(panel) == value]
        palette = pyplot.get_cmap("tab20").colors  # 20 colours: a line per model stays distinct
        for index, target in enumerate(dict.fromkeys(row.target for row in rows)):
            points = sorted((row.params[x], row.metrics.get(y)) for row in chosen if row.target == target
                            and row.metrics.get(y) is not None)
            if not points:
                continue
            kind = next(row.kind for row in chosen if row.target == target)
            axis.plot([p[0] for p in points], [p[1] for p in points], marker="os^Dv"[index // 20 % 5],
                      color=palette[index % len(palette)], linestyle="-" if kind == "forkthread" else "--",
                      label=target)
        axis.set_xscale("log")
        axis.set_yscale("log")
        ticks = sorted({row.params[x] for row in chosen})
        axis.set_xticks(ticks, [str(tick) for tick in ticks])
        axis.set_xlabel(x)
        axis.set_ylabel(ylabel)
        axis.grid(alpha=0.3)
        axis.set_title(f"{title}{'' if value is None else f' — {value}'}", fontsize="medium")
    axes[0][-1].legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0))
    _save(config, report, figure, name)


def plot_stevens(config: BenchConfig, report: WorkloadReport) -> None:
    """The Stevens table as a picture: CPU per connection and connections/s per row."""
    bars(config, report, report.rows, [("cpu_us_per_conn", "server CPU µs per connection"),
                                       ("conn_per_s", "connections per second")],
         "stevens.png", "UNP ch. 30: server CPU per connection (whole process tree)")


def plot_echo_rr(config: BenchConfig, report: WorkloadReport) -> None:
    """Round trips per second, and server CPU per round trip, against concurrency; one line per server."""
    lines(config, report, report.rows, "connections", "rt_per_s", None, "echo_rr.png",
          "echo-rr: throughput vs concurrency", "round trips per second")
    lines(config, report, report.rows, "connections", "cpu_us_per_rt", None, "echo_rr_cpu.png",
          "echo-rr: server CPU per round trip", "server CPU µs per round trip")


def plot_http(config: BenchConfig, report: WorkloadReport) -> None:
    """Requests per second against concurrency, one panel per file size."""
    lines(config, report, report.rows, "connections", "req_per_s", "size", "http.png",
          "http", "requests per second")
    lines(config, report, report.rows, "connections", "cpu_us_per_req", "size", "http_cpu.png",
          "http CPU", "server CPU µs per request")


def plot_idle(config: BenchConfig, report: WorkloadReport) -> None:
    """Idle connections held and memory per connection, per server."""
    bars(config, report, report.rows, [("held", "idle connections held"),
                                       ("pss_kib_per_conn", "anonymous PSS KiB per connection")],
         "idle.png", "idle: connections held and memory per connection")


def plot_own(config: BenchConfig, report: WorkloadReport) -> None:
    """Exchanges per second against concurrency (bars at one concurrency); cores used per model at the highest.

    Files are named after the report (``server.png``, ``wsgi_hello.png``): one run may hold several.
    """
    stem = report.name.replace(" ", "_")
    measured = [row for row in report.rows if row.metrics.get("req_per_s") is not None]
    lines(config, report, measured, "connections", "req_per_s", None, f"{stem}.png",
          f"{report.name}: throughput", "exchanges per second")
    top = max((int(row.params["connections"]) for row in measured), default=0)
    bars(config, report, [row for row in measured if row.params["connections"] == top],
         [("cores_used", "cores used"), ("cpu_us_per_req", "server CPU µs per exchange")],
         f"{stem}_cores.png", f"{report.name}, {top} connections: cores used and CPU per exchange")


def plot_work(config: BenchConfig, report: WorkloadReport) -> None:
    """Requests per second against concurrency (a panel per work kind); cores used per model per work kind."""
    lines(config, report, report.rows, "connections", "req_per_s", "work", "work.png",
          "work: throughput vs concurrency", "requests per second")
    top = max((int(row.params["connections"]) for row in report.rows), default=0)
    for work in dict.fromkeys(str(row.params["work"]) for row in report.rows):
        rows = [row for row in report.rows if row.params["work"] == work and row.params["connections"] == top]
        bars(config, report, rows, [("cores_used", "cores used (server CPU / wall time)")],
             f"work_cores_{work.replace(':', '').replace(',', '_')}.png",
             f"work {work}, {top} connections: cores used per model")
