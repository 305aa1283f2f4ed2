"""``forkthread bench`` end to end, as a subprocess: the structure of its output, never its speed."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from framework.bench.peers import PEERS, nginx_binary
from framework.bench.targets import strategy_targets, variant_keys
from framework.strategies import STRATEGIES, available_strategies
from tests.support import child_env, reap_adopted

PEERS_BY_PROTOCOL = {protocol: [peer.name for peer in PEERS if protocol in peer.protocols]
                     for protocol in ("nbytes", "echo", "http")}


def bench(*args: str, timeout: float = 110.0, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "framework", "bench", *args], capture_output=True, text=True,
                          timeout=timeout, env=env or child_env(), stdin=subprocess.DEVNULL)
    assert not reap_adopted(), "the lab left processes behind"
    return done


def load(out: Path) -> dict:
    for name in ("results.json", "results.csv", "results.md"):
        assert (out / name).stat().st_size > 0, name
    return json.loads((out / "results.json").read_text())


def workload(results: dict, name: str) -> dict:
    (found,) = [item for item in results["workloads"] if item["name"] == name]
    return found


def assert_rows_or_notes(report: dict, names: list[str]) -> None:
    """Every name has a row, or a note saying why not."""
    targets = {row["target"] for row in report["rows"]}
    for name in names:
        assert name in targets or any(note.startswith(f"{name}:") for note in report["notes"]), (name, report["notes"])


def assert_strategy_rows(report: dict) -> None:
    for strategy in STRATEGIES:
        rows = [row for row in report["rows"] if row["strategy"] == strategy]
        assert rows or any(note.startswith(strategy) for note in report["notes"]), strategy


@pytest.mark.slow
def test_stevens_quick_writes_every_file_and_a_row_per_strategy(tmp_path):
    out = tmp_path / "out"
    done = bench("stevens", "--quick", "--out", str(out))
    assert done.returncode == 0, done.stderr
    results = load(out)
    assert list(out.glob("*.png"))
    report = workload(results, "stevens")
    assert_strategy_rows(report)  # interpreters before Python 3.13: a note with the version it needs
    for strategy in available_strategies():
        rows = [row for row in report["rows"] if row["strategy"] == strategy]
        assert rows, f"no row for {strategy}: {report['notes']}"
        for row in rows:
            assert row["metrics"]["cpu_s"] is not None and row["metrics"]["conn_per_s"] > 0
            assert row["metrics"]["process_control_us_per_conn"] is not None
            assert row["metrics"]["main_faults_per_conn"] is not None
            # The total splits into the load's share and the stop's (one repeat: no medians to mix).
            metrics = row["metrics"]
            split = metrics["load_us_per_conn"] * metrics["connections"] / 1e6 + metrics["stop_ms"] / 1e3
            assert metrics["stop_ms"] > 0 and split == pytest.approx(metrics["cpu_s"], abs=1e-3)
            if strategy == "forking":  # the children's faults are not the parent's
                assert row["metrics"]["main_faults_per_conn"] < row["metrics"]["faults_per_conn"]
    if "preforked" in STRATEGIES:
        labels = {row["target"] for row in report["rows"]}
        assert {"preforked shared", "preforked lock", "preforked reuseport", "preforked passfd"} <= labels
    assert_rows_or_notes(report, PEERS_BY_PROTOCOL["nbytes"])
    assert "stevens: " in done.stderr  # live progress
    assert "server CPU s" in done.stdout  # the final table
    markdown = (out / "results.md").read_text()
    assert "## stevens" in markdown and "| iterative |" in markdown


@pytest.mark.slow
def test_http_quick_writes_every_file_with_peers(tmp_path):
    out = tmp_path / "out"
    done = bench("http", "--quick", "--out", str(out))
    assert done.returncode == 0, done.stderr
    results = load(out)
    assert list(out.glob("*.png"))
    report = workload(results, "http")
    assert_strategy_rows(report)
    assert_rows_or_notes(report, PEERS_BY_PROTOCOL["http"])
    assert any(row["kind"] == "peer" for row in report["rows"])
    for row in report["rows"]:
        assert row["params"] == {"size": "1 KiB", "connections": 10}
        assert row["metrics"]["req_per_s"] > 0


def test_small_stevens_run_structure(tmp_path):
    out = tmp_path / "out"
    done = bench("stevens", "--quick", "--clients", "2", "--connections", "5", "--repeat", "2", "--pin",
                 "--strategies", "iterative", "--servers", "socketserver-threading", "--out", str(out))
    assert done.returncode == 0, done.stderr
    results = load(out)
    assert results["settings"]["pin"] is True and results["settings"]["repeat"] == 2
    assert results["machine"]["cpus"] == os.cpu_count() and results["machine"]["kernel"].startswith("Linux")
    report = workload(results, "stevens")
    assert [row["target"] for row in report["rows"]] == ["iterative", "socketserver threading"]
    # The servers take turns within each repeat (a burst of other load lands on one repeat of each).
    turns = re.findall(r"stevens: (iterative|socketserver threading) +run (\d)/2", done.stderr)
    assert turns == [("iterative", "1"), ("socketserver threading", "1"), ("iterative", "2"),
                     ("socketserver threading", "2")]
    iterative = report["rows"][0]
    assert iterative["repeats"] == 2 and iterative["metrics"]["connections"] == 10
    assert set(iterative["spread"]["cpu_s"]) == {"median", "min", "max"}
    assert iterative["metrics"]["process_control_us_per_conn"] == 0
    with (out / "results.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert [row["server"] for row in rows] == ["iterative", "socketserver threading"]
    assert rows[0]["conn_per_s"] and rows[0]["cpu_s_min"]


def test_small_echo_rr_and_idle_runs(tmp_path):
    out = tmp_path / "out"
    done = bench("echo-rr", "--quick", "--concurrency", "1,3", "--duration", "0.3", "--strategies", "iterative",
                 "--servers", "asyncio", "--out", str(out))
    assert done.returncode == 0, done.stderr
    report = workload(load(out), "echo-rr")
    points = [(row["target"], row["params"]["connections"]) for row in report["rows"]]
    assert points == [("iterative", 1), ("iterative", 3), ("asyncio", 1), ("asyncio", 3), ("asyncio protocol", 1),
                      ("asyncio protocol", 3)]
    assert all(row["metrics"]["rt_per_s"] > 0 for row in report["rows"])
    # every repeat on a fresh server, with the machine's load average before it
    assert all(row["metrics"]["load_avg"] is not None for row in report["rows"])
    assert report["ratios"][0]["ratios"].keys() == {"asyncio", "asyncio protocol"}
    assert (out / "echo_rr.png").exists()

    done = bench("idle", "--quick", "--max-idle", "20", "--strategies", "iterative", "--servers", "asyncio",
                 "--out", str(out))
    assert done.returncode == 0, done.stderr
    rows = {row["target"]: row for row in workload(load(out), "idle")["rows"]}
    assert rows["iterative"]["metrics"]["held"] == 1  # one at a time: the second waits in the backlog
    assert "not served" in rows["iterative"]["notes"][0]
    assert rows["asyncio"]["metrics"]["held"] == 20
    assert (out / "idle.png").exists()


def test_without_matplotlib_tables_still_come_out_with_a_note(tmp_path):
    fake = tmp_path / "fake"
    (fake / "matplotlib").mkdir(parents=True)
    (fake / "matplotlib" / "__init__.py").write_text("raise ImportError('hidden by the test')\n")
    env = child_env()
    env["PYTHONPATH"] = f"{fake}:{env['PYTHONPATH']}"
    out = tmp_path / "out"
    done = bench("stevens", "--quick", "--clients", "1", "--connections", "3", "--strategies", "iterative",
                 "--servers", "none", "--out", str(out), env=env)
    assert done.returncode == 0, done.stderr
    report = workload(load(out), "stevens")
    assert not list(out.glob("*.png"))
    assert any("pip install '.[bench]'" in note for note in report["notes"])
    assert "pip install '.[bench]'" in (out / "results.md").read_text()


@pytest.mark.parametrize("args", [
    ["stevens", "--strategies", "nope"],
    ["http", "--sizes", "1x"],
    ["echo-rr", "--concurrency", "0"],
    ["nonsense"],
    ["stevens", "--out", "/dev/null"],
    ["work", "--work", "cpu:x"],
    ["work", "--work", "cpu:2", "--work", "sleep:" + "9" * 400],
])
def test_misuse_is_one_line_and_status_2(args, tmp_path):
    done = bench(*args) if "--out" in args else bench(*args, "--out", str(tmp_path / "out"))
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()


def test_http_with_the_built_in_client(tmp_path):
    out = tmp_path / "out"
    done = bench("http", "--quick", "--client", "builtin", "--sizes", "1k,64k", "--concurrency", "2",
                 "--duration", "0.3", "--strategies", "iterative", "--servers", "http.server", "--out", str(out))
    assert done.returncode == 0, done.stderr
    report = workload(load(out), "http")
    assert any("--client builtin" in note for note in report["notes"])
    rows = {(row["target"], row["params"]["size"]): row for row in report["rows"]}
    assert set(rows) == {(target, size) for target in ("iterative", "http.server") for size in ("1 KiB", "64 KiB")}
    for row in rows.values():
        assert row["metrics"]["req_per_s"] > 0 and row["metrics"]["errors"] == 0  # keep-alive and HTTP/1.0 close
        assert row["metrics"]["p99_ms"] is not None


@pytest.mark.needs_tool("wrk")
@pytest.mark.skipif(shutil.which("wrk") is None or shutil.which("openssl") is None,
                    reason="bench http --tls needs wrk and openssl")
def test_http_over_tls_beside_nginx(tmp_path):
    out = tmp_path / "out"
    done = bench("http", "--tls", "--quick", "--sizes", "1k", "--concurrency", "2", "--duration", "0.3",
                 "--strategies", "poll,threading", "--servers", "nginx,http.server", "--out", str(out))
    assert done.returncode == 0, done.stderr
    report = workload(load(out), "http-tls")
    assert any("http.server: skipped" in note for note in report["notes"])  # the lab runs it without TLS
    targets = {row["target"] for row in report["rows"]}
    assert {"poll", "threading"} <= targets
    if nginx_binary() is not None:
        assert "nginx" in targets
    for row in report["rows"]:
        assert row["metrics"]["req_per_s"] > 0 and row["metrics"]["errors"] == 0


def test_strategies_may_name_single_variants():
    names = [target.name for target in strategy_targets(False, ["poll", "preforked:worker=poll"])]
    assert names == ["preforked worker=poll", "poll"]
    both = strategy_targets(False, ["preforked", "preforked:worker=poll"])
    assert [(target.name, target.strategy) for target in both] == [
        ("preforked", "preforked"), ("preforked worker=poll", "preforked")]
    assert "preforked:worker=poll" in variant_keys()


def test_http_interleaves_servers_and_takes_a_variant(tmp_path):
    out = tmp_path / "out"
    done = bench("http", "--quick", "--client", "builtin", "--repeat", "2", "--duration", "0.2",
                 "--strategies", "iterative,preforked:worker=poll", "--servers", "none", "--out", str(out))
    assert done.returncode == 0, done.stderr
    runs = re.findall(r"http: (.+?) +1 KiB C=\d+ +run", done.stderr)
    assert runs == ["iterative", "preforked worker=poll"] * 2  # the servers take turns within each repeat
    report = workload(load(out), "http")
    assert [row["target"] for row in report["rows"]] == ["iterative", "preforked worker=poll"]
    assert all(row["repeats"] == 2 for row in report["rows"])


def test_sigterm_ends_a_run_as_ctrl_c_does_stopping_its_server(tmp_path):
    # Was: a SIGTERM ended the lab at once and left the server it was measuring running.
    from tests.support import command_line, descendants, proc_children, process_state, wait_for

    lab = subprocess.Popen([sys.executable, "-m", "framework", "bench", "echo-rr", "--quick", "--duration", "30",
                            "--concurrency", "1", "--strategies", "poll", "--servers", "none",
                            "--out", str(tmp_path / "out")],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env(),
                           stdin=subprocess.DEVNULL)
    try:
        def serving() -> list[int]:
            # "serve" as a word: a child forked for "wrk --version" shows the lab's own command line,
            # "--servers none" included, until it execs (CI once took one for the server).
            return [pid for pid in proc_children(lab.pid) if "serve" in command_line(pid).split()]

        assert wait_for(lambda: serving(), timeout=30), "the lab started no server"
        (server,) = serving()
        lab.terminate()
        _, err = lab.communicate(timeout=60)
    finally:
        if lab.poll() is None:  # the test failed before the SIGTERM: end the lab's whole tree, not the lab alone
            for pid in descendants(lab.pid) | {lab.pid}:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            lab.communicate()
            reap_adopted()
    left_running = os.path.exists(f"/proc/{server}") and process_state(server) != "Z"
    if left_running:  # the failure below is the finding; the server itself must not outlive the test
        os.kill(server, signal.SIGKILL)
    reap_adopted()
    assert not left_running, "the lab left its server running"
    assert lab.returncode == 0, err
    assert "interrupted: writing partial results" in err
