"""Results of a lab run: rows, notes, ratios to peers; written as JSON, CSV, Markdown and a terminal table."""

from __future__ import annotations

import csv
import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from framework.bench.machine import machine_summary


@dataclasses.dataclass(frozen=True)
class Column:
    """One metric column: the key in :attr:`Row.metrics`, its header, and how to print it."""

    key: str
    header: str
    digits: int = 0


@dataclasses.dataclass
class Row:
    """One measured server at one load point: medians over the repeats, and their spread."""

    workload: str
    target: str
    kind: str
    strategy: str | None
    params: dict[str, Any]
    metrics: dict[str, float | None]
    spread: dict[str, dict[str, float | None]] = dataclasses.field(default_factory=dict)
    repeats: int = 1
    notes: list[str] = dataclasses.field(default_factory=list)
    #: How the model is built (``threads``, ``processes``, ``loop``, ``one-at-a-time``), for the verdict.
    traits: list[str] = dataclasses.field(default_factory=list)

    def point(self) -> tuple[tuple[str, Any], ...]:
        """The load point (params) as a hashable key."""
        return tuple(sorted(self.params.items()))


@dataclasses.dataclass
class WorkloadReport:
    """Everything one workload produced, and how to present it."""

    name: str
    title: str
    description: str
    columns: list[Column]
    #: The metric peers are compared on (higher is better).
    ratio_metric: str
    rows: list[Row] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    plots: list[str] = dataclasses.field(default_factory=list)
    params: list[str] = dataclasses.field(default_factory=list)
    #: Markdown computed from the rows (the work verdict), shown after the table.
    summary: str = ""

    def ratios(self) -> list[dict[str, Any]]:
        """Each forkthread row's *ratio_metric* divided by each peer's at the same load point."""
        peers = [row for row in self.rows if row.kind == "peer"]
        out = []
        for row in self.rows:
            if row.kind != "forkthread":
                continue
            entry: dict[str, Any] = {"target": row.target, "params": row.params, "ratios": {}}
            mine = row.metrics.get(self.ratio_metric)
            for peer in peers:
                theirs = peer.metrics.get(self.ratio_metric)
                if peer.point() == row.point() and mine is not None and theirs:
                    entry["ratios"][peer.target] = mine / theirs
            out.append(entry)
        return out


def recommendation(report: WorkloadReport) -> str:
    """Markdown: at the highest concurrency of each load point, the model that did best on the ratio metric.

    For workloads whose verdict is their ratio metric alone (echo-rr,
    http, idle): the best forkthread row, and how it compares with the
    best peer at the same point.
    """
    header = next((column.header for column in report.columns if column.key == report.ratio_metric),
                  report.ratio_metric)
    fixed = [param for param in report.params if param != "connections"]
    top = max((int(row.params["connections"]) for row in report.rows if "connections" in row.params), default=None)
    lines = []
    for point in dict.fromkeys(tuple(row.params.get(param) for param in fixed) for row in report.rows):
        rows = [row for row in report.rows if tuple(row.params.get(param) for param in fixed) == point
                and row.params.get("connections", top) == top and row.metrics.get(report.ratio_metric)]
        ours = [row for row in rows if row.kind == "forkthread"]
        if not ours:
            continue
        best = max(ours, key=lambda row: row.metrics[report.ratio_metric] or 0.0)
        value = best.metrics[report.ratio_metric] or 0.0
        where = ", ".join(f"{param} {value}" for param, value in zip(fixed, point, strict=True) if value is not None)
        where += (", " if where else "") + (f"{top} connections" if top is not None else "")
        text = f"- {where or 'this load'}: use {best.target} ({value:,.0f} {header})"
        peers = [row for row in rows if row.kind == "peer"]
        if peers:
            peer = max(peers, key=lambda row: row.metrics[report.ratio_metric] or 0.0)
            text += f", {value / (peer.metrics[report.ratio_metric] or 1.0):.2f}x the best peer ({peer.target})"
        lines.append(text + ".")
    if not lines:
        return ""
    return "\n".join([f"**Recommendation** (the forkthread model with the most {header}):", "", *lines])


def format_value(value: float | None, digits: int) -> str:
    """A metric for a table cell (``-`` for missing)."""
    if value is None:
        return "-"
    if digits == 0:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


def _cell(row: Row, column: Column) -> str:
    text = format_value(row.metrics.get(column.key), column.digits)
    spread = row.spread.get(column.key)
    if row.repeats > 1 and spread and spread.get("min") is not None and spread.get("max") is not None:
        low = format_value(spread["min"], column.digits)
        high = format_value(spread["max"], column.digits)
        if low != high:
            text += f" ({low}-{high})"
    return text


def table(report: WorkloadReport, markdown: bool) -> str:
    """The workload's rows as a Markdown table or fixed-width text."""
    headers = ["server", "kind", *report.params, *[column.header for column in report.columns], "notes"]
    lines = [
        [row.target, row.kind, *[str(row.params.get(param, "")) for param in report.params],
         *[_cell(row, column) for column in report.columns], "; ".join(row.notes)]
        for row in report.rows
    ]
    if markdown:
        out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
        out += ["| " + " | ".join(cells) + " |" for cells in lines]
        return "\n".join(out)
    widths = [max(len(headers[i]), *(len(cells[i]) for cells in lines)) if lines else len(headers[i])
              for i in range(len(headers))]
    render = ["  ".join(text.ljust(width) for text, width in zip(cells, widths, strict=True)).rstrip()
              for cells in [headers, *lines]]
    return "\n".join(render)


def ratio_table(report: WorkloadReport) -> str:
    """Markdown: forkthread rows against each peer on the ratio metric (x, higher is better)."""
    ratios = report.ratios()
    peers = sorted({peer for entry in ratios for peer in entry["ratios"]})
    if not peers:
        return ""
    headers = ["server", *report.params, *[f"vs {peer}" for peer in peers]]
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for entry in ratios:
        cells = [entry["target"], *[str(entry["params"].get(param, "")) for param in report.params]]
        cells += [f"{entry['ratios'][peer]:.2f}" if peer in entry["ratios"] else "-" for peer in peers]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


@dataclasses.dataclass
class Results:
    """A whole lab run."""

    machine: dict[str, object]
    settings: dict[str, Any]
    workloads: list[WorkloadReport] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """Everything, JSON-ready."""
        return {
            "machine": self.machine, "settings": self.settings, "seconds": round(self.seconds, 1),
            "notes": self.notes,
            "workloads": [
                {"name": report.name, "title": report.title, "description": report.description,
                 "summary": report.summary, "notes": report.notes, "plots": report.plots,
                 "ratio_metric": report.ratio_metric,
                 "columns": [dataclasses.asdict(column) for column in report.columns],
                 "rows": [dataclasses.asdict(row) for row in report.rows], "ratios": report.ratios()}
                for report in self.workloads
            ],
        }

    def write(self, out: Path) -> list[Path]:
        """Write results.json, results.csv and results.md into *out*; return their paths."""
        out.mkdir(parents=True, exist_ok=True)
        paths = [out / "results.json", out / "results.csv", out / "results.md"]
        paths[0].write_text(json.dumps(self.to_json(), indent=2) + "\n")
        self._write_csv(paths[1])
        paths[2].write_text(self.markdown())
        return paths

    def _write_csv(self, path: Path) -> None:
        params = sorted({key for report in self.workloads for row in report.rows for key in row.params})
        metrics = sorted({key for report in self.workloads for row in report.rows for key in row.metrics})
        with path.open("w", newline="") as file:
            writer = csv.writer(file)
            writer.writerow(["workload", "server", "kind", "strategy", "repeats", *params, *metrics,
                             *[f"{key}_min" for key in metrics], *[f"{key}_max" for key in metrics], "notes"])
            for report in self.workloads:
                for row in report.rows:
                    spread = [row.spread.get(key, {}) for key in metrics]
                    writer.writerow([
                        row.workload, row.target, row.kind, row.strategy or "", row.repeats,
                        *[row.params.get(key, "") for key in params],
                        *[_csv_number(row.metrics.get(key)) for key in metrics],
                        *[_csv_number(item.get("min")) for item in spread],
                        *[_csv_number(item.get("max")) for item in spread],
                        "; ".join(row.notes),
                    ])

    def caveats(self) -> list[str]:
        """What makes this run weak evidence, said above its tables: quick, one repeat, a loaded machine."""
        out = []
        if self.settings.get("quick"):
            out.append("A --quick run: short points and one repeat each.  It shows that everything runs and roughly"
                       " where; differences of less than about 2x between models may be noise.  Decide on a full run.")
        elif self.settings.get("repeat") == 1:
            out.append("One repeat per point: no spread to tell a difference from noise.  Decide on --repeat 3"
                       " or more.")
        cpus = int(str(self.machine.get("cpus") or 1))
        loads = [float(str(value).split()[0]) for value in (self.machine.get("load_average"),
                                                             self.machine.get("load_average_end")) if value]
        loads += [load for report in self.workloads for row in report.rows
                  if (load := row.metrics.get("load_avg")) is not None]
        if loads and max(loads) > cpus:
            out.append(f"The machine was loaded: load average up to {max(loads):.1f} on {cpus} CPUs.  Other"
                       " processes took CPU time from the servers and the load generators, so figures are lower and"
                       " noisier than on a quiet machine, and models that need more cores suffer most.")
        return out

    def markdown(self) -> str:
        """The report as Markdown: machine, settings, caveats, then per workload its table, ratios and notes."""
        lines = ["# forkthread bench results", "",
                 f"Machine: {machine_summary(self.machine)}.  ",
                 f"Run: {self.machine.get('date_utc')} UTC, {self.seconds:.0f} s; settings: "
                 + ", ".join(f"{key}={_setting(value)}" for key, value in self.settings.items()) + ".", ""]
        lines += [f"> **Caveat:** {caveat}" + "\n" for caveat in self.caveats()]
        lines += [f"- {note}" for note in self.notes]
        for report in self.workloads:
            lines += ["", f"## {report.title}", "", report.description, "", table(report, markdown=True)]
            ratios = ratio_table(report)
            if ratios:
                lines += ["", f"Ratio of each forkthread row's {_header(report, report.ratio_metric)} to each peer's"
                          " at the same load point (> 1: forkthread is faster):", "", ratios]
            if report.summary:
                lines += ["", "### Verdict", "", report.summary]
            if report.notes:
                lines += ["", *[f"- {note}" for note in report.notes]]
            for name in report.plots:
                lines += ["", f"![{report.name}: {name}]({name})"]
        return "\n".join(lines) + "\n"

    def text(self) -> str:
        """The final tables for the terminal."""
        parts = [f"machine: {machine_summary(self.machine)}"]
        parts += [f"CAVEAT: {caveat}" for caveat in self.caveats()]
        for report in self.workloads:
            parts += ["", f"== {report.title}", table(report, markdown=False)]
            parts += [f"  note: {note}" for note in report.notes]
            if report.summary:
                parts += ["", f"== {report.name}: verdict", report.summary]
        return "\n".join(parts)


def _setting(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)


def _header(report: WorkloadReport, key: str) -> str:
    return next((column.header for column in report.columns if column.key == key), key)


def _csv_number(value: float | None) -> str:
    return "" if value is None else f"{value:.6g}"


def combine(
    samples: Sequence[dict[str, float | None]],
) -> tuple[dict[str, float | None], dict[str, dict[str, float | None]]]:
    """Medians of each metric over repeat *samples*, and their min/max spread."""
    from framework.bench.clients import summarize

    keys = sorted({key for sample in samples for key in sample})
    summaries = {key: summarize([sample.get(key) for sample in samples]) for key in keys}
    return {key: summary["median"] for key, summary in summaries.items()}, summaries
