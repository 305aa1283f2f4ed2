"""What makes a lab report trustworthy to a newcomer (issue 24 item 6), on fixed figures: no run needed."""

from __future__ import annotations

from pathlib import Path

import pytest

from framework.bench.config import QUICK, BenchConfig
from framework.bench.report import Column, Results, Row, WorkloadReport, recommendation
from framework.bench.workloads.stevens import add_process_control


def stevens_row(target: str, strategy: str, per_conn: float, low: float | None = None,
                high: float | None = None) -> Row:
    spread = {"cpu_us_per_conn": {"median": per_conn, "min": low, "max": high}} if low is not None else {}
    return Row("stevens", target, "forkthread", strategy, {}, {"cpu_us_per_conn": per_conn, "connections": 1000.0},
               spread=spread)


def test_process_control_below_zero_is_clamped_to_zero_and_the_noise_floor_is_named():
    report = WorkloadReport("stevens", "stevens", "", [], "conn_per_s")
    report.rows = [stevens_row("iterative", "iterative", 100.0, 95.0, 130.0), stevens_row("poll", "poll", 88.0),
                   stevens_row("forking", "forking", 900.0)]
    add_process_control(report)
    metrics = {row.target: row.metrics for row in report.rows}
    assert metrics["poll"]["process_control_us_per_conn"] == 0.0 and metrics["poll"]["process_control_cpu_s"] == 0.0
    assert metrics["forking"]["process_control_us_per_conn"] == 800.0
    (note,) = report.notes
    assert note.startswith("process-control CPU below zero shown as 0 for poll: below the noise floor of 35 µs")


def test_with_an_exact_clock_the_noise_floor_is_the_spread_alone():
    report = WorkloadReport("stevens", "stevens", "", [], "conn_per_s")
    report.rows = [stevens_row("iterative", "iterative", 100.0, 99.0, 101.0), stevens_row("poll", "poll", 98.0)]
    add_process_control(report, exact_clock=True)
    (note,) = report.notes
    assert "noise floor of 2 µs per connection (iterative's spread)" in note  # not one 10 ms tick: 10 µs


def results(quick: bool, repeat: int, load: str, rows_load: float = 0.1) -> Results:
    report = WorkloadReport("echo-rr", "echo-rr", "", [Column("rt_per_s", "rt/s")], "rt_per_s", params=["connections"])
    report.rows = [Row("echo-rr", "poll", "forkthread", "poll", {"connections": 10},
                       {"rt_per_s": 100.0, "load_avg": rows_load})]
    machine = {"cpus": 2, "cpu_model": "test", "memory_gib": 1, "kernel": "Linux", "python": "CPython",
               "load_average": load}
    return Results(machine=machine, settings={"quick": quick, "repeat": repeat},
                   workloads=[report])


@pytest.mark.parametrize(("run", "said"), [
    (results(True, 1, "0.10 0.10"), ["A --quick run"]),
    (results(False, 1, "0.10 0.10"), ["One repeat per point"]),
    (results(False, 3, "6.00 2.00"), ["The machine was loaded: load average up to 6.0 on 2 CPUs"]),
    (results(False, 3, "0.10 0.10", rows_load=2.5), ["The machine was loaded: load average up to 2.5"]),
    (results(False, 3, "0.10 0.10"), []),
])
def test_a_weak_run_says_so_above_its_tables(run, said):
    caveats = run.caveats()
    assert len(caveats) == len(said)
    assert all(caveat.startswith(text) for caveat, text in zip(caveats, said, strict=True))
    markdown = run.markdown()
    above = markdown.split("## ")[0]
    assert all(text in above for text in said)
    assert all(text in run.text().split("== ")[0] for text in said)


def test_the_recommendation_names_the_best_model_at_the_top_concurrency_against_the_best_peer():
    report = WorkloadReport("http", "http", "", [Column("req_per_s", "req/s")], "req_per_s",
                            params=["size", "connections"])
    for target, kind, rate in (("poll", "forkthread", 900.0), ("threading", "forkthread", 600.0),
                               ("nginx", "peer", 1800.0)):
        for connections, scale in ((1, 0.5), (10, 1.0)):
            report.rows.append(Row("http", target, kind, None, {"size": "1 KiB", "connections": connections},
                                   {"req_per_s": rate * scale}))
    text = recommendation(report)
    assert text.splitlines()[-1] == "- size 1 KiB, 10 connections: use poll (900 req/s), 0.50x the best peer (nginx)."


def test_a_throughput_plot_at_one_concurrency_is_bars(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    pytest.importorskip("matplotlib")
    from framework.bench import plots
    from framework.bench.plots import lines

    panels: list[list[str]] = []
    draw = plots._bar_panel
    monkeypatch.setattr(plots, "_bar_panel", lambda axis, rows, *rest: (panels.append([row.target for row in rows]),
                                                                      draw(axis, rows, *rest)))

    config = BenchConfig(workloads=["work"], out=tmp_path, scale=QUICK)
    report = WorkloadReport("work", "work", "", [], "req_per_s", params=["work", "connections"])
    report.rows = [Row("work", name, "forkthread", None, {"work": work, "connections": 10}, {"req_per_s": rate})
                   for work in ("cpu:2", "sleep:20") for name, rate in (("poll", 400.0), ("forking", 900.0))]
    lines(config, report, report.rows, "connections", "req_per_s", "work", "work.png", "work", "req/s")
    assert report.plots == ["work.png"] and (tmp_path / "work.png").stat().st_size > 0
    assert panels == [["poll", "forking"], ["poll", "forking"]]  # a bar panel per work kind, in one file
