"""``forkthread bench MODULE:CLASS``, black-box: servers written into a temporary folder, run as a user would.

What is checked is the structure of the run and what the verdict is made
of (every model that carries the server, the reasons for those that do
not, failures counted), never the speed: a loaded CI machine decides no
throughput ratio here.  The rule that picks the model is tested on fixed
figures in ``tests/test_lab_verdict.py``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from framework.strategies import STRATEGIES, available_strategies
from tests.support import child_env, reap_adopted

CPU_SERVER = '''
import time
from framework import Protocol, Server

def compute(ms):
    end = time.thread_time() + ms / 1000
    while time.thread_time() < end:
        pass

class Computing(Protocol):
    def connection_made(self, transport):
        super().connection_made(transport)
        self.pending = b""

    def data_received(self, data):
        self.pending += data
        while b"\\n" in self.pending:
            _, self.pending = self.pending.split(b"\\n", 1)
            compute(2)
            self.transport.write(b"done\\n")

class CpuServer(Server):
    protocol = Computing
'''

SLEEP_SERVER = '''
import socketserver
import time
from framework import Server

class Waiting(socketserver.StreamRequestHandler):
    def handle(self):
        for line in self.rfile:
            time.sleep(0.02)
            self.wfile.write(b"ok\\n")

class SleepServer(Server):
    handler = Waiting

class OneAnswer(socketserver.StreamRequestHandler):
    def handle(self):
        self.rfile.readline()
        self.wfile.write(b"ok\\n")  # then the connection closes: persistent clients find it closed early

class ClosingServer(Server):
    handler = OneAnswer

class NoForking(SleepServer):
    def __init__(self, address, strategy, **options):
        if strategy.name == "forking":
            raise ValueError("this server refuses to fork")
        super().__init__(address, strategy, **options)
'''

CLIENT = '''
count = 0

def every_tenth_fails(sock):
    global count
    count += 1
    if count % 10 == 0:
        raise RuntimeError("the tenth exchange")
    sock.sendall(b"hello\\n")
    answer = b""
    while not answer.endswith(b"\\n"):
        data = sock.recv(100)
        if not data:
            raise ConnectionError("closed")
        answer += data

not_a_function = 42
'''


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A user's folder: their servers and client function, and nothing else."""
    (tmp_path / "cpuserver.py").write_text(textwrap.dedent(CPU_SERVER))
    (tmp_path / "sleepserver.py").write_text(textwrap.dedent(SLEEP_SERVER))
    (tmp_path / "myclient.py").write_text(textwrap.dedent(CLIENT))
    return tmp_path


def bench(folder: Path, *args: str, timeout: float = 240.0) -> subprocess.CompletedProcess[str]:
    """``forkthread bench ARGS`` from *folder* (which is first on the import path, as for ``serve``)."""
    done = subprocess.run([sys.executable, "-m", "framework", "bench", *args], capture_output=True, text=True,
                          timeout=timeout, env=child_env(), cwd=folder, stdin=subprocess.DEVNULL)
    assert not reap_adopted(), "the lab left processes behind"
    return done


def report_of(out: Path, name: str = "server") -> dict:
    results = json.loads((out / "results.json").read_text())
    (report,) = results["workloads"]
    assert report["name"] == name
    return report


def measured(report: dict) -> dict[str, dict]:
    return {row["target"]: row for row in report["rows"] if row["metrics"].get("req_per_s")}


@pytest.mark.slow
def test_a_computing_protocol_server_is_measured_under_every_strategy(folder):
    out = folder / "out"
    done = bench(folder, "cpuserver:CpuServer", "--send", "go\\n", "--expect-line", "--quick", "--out", str(out))
    assert done.returncode == 0, done.stderr
    for name in ("results.json", "results.csv", "results.md"):
        assert (out / name).stat().st_size > 0
    assert list(out.glob("*.png"))
    report = report_of(out)
    rows = measured(report)
    assert {row["strategy"] for row in rows.values()} == set(available_strategies())
    for row in rows.values():
        metrics = row["metrics"]
        for key in ("p50_ms", "p99_ms", "cores_used", "cpu_ms_per_req", "pss_mib", "processes", "failed_exchanges",
                    "starved", "load_avg", "alone_ms"):
            assert metrics[key] is not None, (row["target"], key)
        assert metrics["errors"] == 0
    summary = report["summary"]
    assert summary.startswith("Your exchange, measured: ") and "computing" in summary.splitlines()[0]
    assert "waiting" not in summary.splitlines()[0]  # the kernel's accounting tells a busy machine from a wait
    assert summary.splitlines()[-1].startswith("- at 10 connections: use ")
    markdown = (out / "results.md").read_text()
    assert "A --quick run" in markdown.split("## ")[0]  # said above the tables
    assert "**Recommendation**" in markdown


def test_a_waiting_handler_server_is_not_measured_under_poll_and_says_why(folder):
    out = folder / "out"
    done = bench(folder, "sleepserver:SleepServer", "--send", "x\\n", "--expect-bytes", "3", "--quick",
                 "--strategies", "iterative,threading,poll", "--out", str(out))
    assert done.returncode == 0, done.stderr
    report = report_of(out)
    assert set(measured(report)) == {"iterative", "threading"}
    assert not [row for row in report["rows"] if row["strategy"] == "poll"]
    (note,) = [note for note in report["notes"] if note.startswith("poll:")]
    assert "blocking handler" in note and "cannot carry" in note
    first = report["summary"].splitlines()[0]
    assert "waiting" in first and "computing" not in first
    assert "Not measured:" in report["summary"] and "- poll: " in report["summary"]


def test_a_client_function_that_raises_is_counted_and_the_run_completes(folder):
    out = folder / "out"
    # 1.5 s: each load-generator process (the counter is its own) does well over ten exchanges, even on a busy machine
    done = bench(folder, "sleepserver:SleepServer", "--client", "myclient:every_tenth_fails", "--quick",
                 "--duration", "1.5", "--strategies", "threading", "--threads", "4", "--out", str(out))
    assert done.returncode == 0, done.stderr
    row = measured(report_of(out))["threading"]
    assert row["metrics"]["failed_exchanges"] > 0
    assert any("RuntimeError: the tenth exchange" in note for note in row["notes"])
    results = json.loads((out / "results.json").read_text())
    assert results["settings"]["serve_options"] == "--threads 4"


def test_a_server_that_closes_early_and_a_model_that_does_not_start_are_findings(folder):
    out = folder / "out"
    done = bench(folder, "sleepserver:ClosingServer", "--send", "x\\n", "--expect-line", "--quick",
                 "--strategies", "threading", "--out", str(out))
    assert done.returncode == 0, done.stderr
    row = measured(report_of(out))["threading"]
    assert row["metrics"]["errors"] > 0
    assert any("closed the connection mid-exchange" in note for note in row["notes"])

    done = bench(folder, "sleepserver:NoForking", "--send", "x\\n", "--expect-line", "--quick",
                 "--strategies", "forking,threading", "--out", str(out))
    assert done.returncode == 0, done.stderr
    report = report_of(out)
    (forking,) = [row for row in report["rows"] if row["target"] == "forking"]
    assert forking["metrics"] == {} and "did not start" in forking["notes"][0]
    assert "this server refuses to fork" in forking["notes"][0]
    assert "threading" in measured(report)
    assert "- forking at 10 connections: the server did not start" in report["summary"]


@pytest.mark.parametrize("args", [
    ["nosuchmodule:Server", "--send", "x", "--expect-line"],
    ["cpuserver:NoSuchClass", "--send", "x", "--expect-line"],
    ["cpuserver:compute", "--send", "x", "--expect-line"],
    ["cpuserver", "--send", "x", "--expect-line"],
    ["cpuserver:CpuServer", "--client", "myclient:nosuch"],
    ["cpuserver:CpuServer", "--client", "myclient:not_a_function"],
    ["cpuserver:CpuServer", "--client", "nomodule:exchange"],
    ["cpuserver:CpuServer"],
    ["cpuserver:CpuServer", "--send", "x"],
    ["cpuserver:CpuServer", "--send", "x", "--expect-line", "--http", "/"],
    ["cpuserver:CpuServer", "--http", "no-slash"],
    ["cpuserver:CpuServer", "--send", "x", "--expect-line", "--servers", "nosuchpeer"],
    ["cpuserver:CpuServer", "--send", "x", "--expect-line", "--servers", "upper:UpperServer"],
    ["stevens", "--servers", "nosuchpeer"],
    ["cpuserver:CpuServer", "--send", "x", "--expect-line", "--no-such-option"],
    ["cpuserver:CpuServer", "--send", "x", "--expect-line", "--bind", "127.0.0.1:0"],
    ["cpuserver:CpuServer", "--send", "x", "--expect-line", "--workers", "none"],
    ["cpuserver:CpuServer", "--send", "@/nonexistent/file", "--expect-line"],
    ["stevens", "--send", "x", "--expect-line"],
    ["stevens", "--workers", "2"],
])
def test_misuse_is_one_line_and_status_2(folder, args):
    done = bench(folder, *args, "--out", str(folder / "out"), timeout=60.0)
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert not (folder / "out").exists()


@pytest.mark.needs_tool("wrk")
def test_an_http_server_with_serve_options_passed_through(folder):
    (folder / "root").mkdir()
    (folder / "root" / "a.txt").write_text("a" * 100)
    (folder / "root" / "b.txt").write_text("b" * 200)
    out = folder / "out"
    common = ["servers.http.server:HttpServer", "--http", "/a.txt", "--http", "/b.txt", "--root", str(folder / "root"),
              "--quick", "--strategies", "poll", "--out", str(out)]
    done = bench(folder, *common)
    assert done.returncode == 0, done.stderr
    report = report_of(out)
    assert measured(report)["poll"]["metrics"]["errors"] == 0
    assert "from wrk" in report["description"]
    done = bench(folder, *common, "--client", "builtin", "--connection-per-exchange")
    assert done.returncode == 0, done.stderr
    report = report_of(out)
    assert measured(report)["poll"]["metrics"]["errors"] == 0
    assert "one connection per exchange" in report["description"]
    assert any("built-in client" in note for note in report["notes"])


def test_the_worked_example_of_the_docs_runs_as_written():
    examples = Path(__file__).resolve().parent.parent / "docs" / "examples"
    out = examples.parent / "_build" / "lab-example-test"
    try:
        done = bench(examples, "primes:PrimeServer", "--client", "primes:ask", "--quick", "--strategies",
                     "threading,poll", "--out", str(out))
        assert done.returncode == 0, done.stderr
        report = report_of(out)
        assert measured(report)["threading"]["metrics"]["errors"] == 0
        skipped = "poll: skipped: server 'primes' runs a blocking handler"
        assert any(note.startswith(skipped) for note in report["notes"])
    finally:
        shutil.rmtree(out, ignore_errors=True)


WSGI_APP = '''
def app(environ, start_response):
    body = environ["PATH_INFO"].encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
'''


def test_bench_wsgi_measures_the_four_bundled_apps_beside_a_wsgi_peer(folder):
    out = folder / "out"
    done = bench(folder, "wsgi", "--quick", "--strategies", "threading", "--servers", "waitress", "--out", str(out))
    assert done.returncode == 0, done.stderr
    results = json.loads((out / "results.json").read_text())
    reports = {report["name"]: report for report in results["workloads"]}
    assert list(reports) == ["wsgi hello", "wsgi json", "wsgi sleep", "wsgi cpu"]
    for report in reports.values():
        rows = measured(report)
        assert rows["waitress"]["kind"] == "peer" and rows["waitress"]["metrics"]["errors"] == 0
        assert rows["threading"]["kind"] == "forkthread" and rows["threading"]["metrics"]["errors"] == 0
        assert report["summary"].splitlines()[-1].startswith("- at 10 connections: use ")
    plots = [plot for report in reports.values() for plot in report["plots"]]
    assert len(plots) == len(set(plots)) == 8 and all((out / plot).exists() for plot in plots)  # none overwritten
    assert "waiting" in reports["wsgi sleep"]["summary"].splitlines()[0]
    assert "computing" in reports["wsgi cpu"]["summary"].splitlines()[0]


def test_bench_wsgi_with_your_app_and_a_bad_app(folder):
    (folder / "myapp.py").write_text(textwrap.dedent(WSGI_APP))
    out = folder / "out"
    done = bench(folder, "wsgi", "--app", "myapp:app", "--http", "/hello", "--quick", "--strategies", "threading",
                 "--servers", "gunicorn-gthread", "--client", "builtin", "--out", str(out))
    assert done.returncode == 0, done.stderr
    report = report_of(out, "wsgi")
    rows = measured(report)
    assert rows["gunicorn gthread"]["metrics"]["errors"] == 0 and rows["threading"]["metrics"]["errors"] == 0
    done = bench(folder, "wsgi", "--app", "myapp:nosuch", "--quick", "--out", str(out / "bad"), timeout=60.0)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_only_exchanges_done_by_the_deadline_count_and_unserved_connections_are_starved(folder):
    # iterative serves the first connection for as long as it stays open: the other two wait in the backlog
    out = folder / "out"
    done = bench(folder, "sleepserver:SleepServer", "--send", "x\\n", "--expect-line", "--quick", "--concurrency", "3",
                 "--strategies", "iterative", "--out", str(out))
    assert done.returncode == 0, done.stderr
    metrics = measured(report_of(out))["iterative"]["metrics"]
    assert metrics["starved"] == 2 and metrics["failed_exchanges"] == 0
    assert metrics["p99_ms"] < 1000.0  # no exchange answered after the deadline, when the first connection closed


class Unbuildable:
    """A strategy this interpreter cannot build (as ``interpreters`` before Python 3.13)."""

    @classmethod
    def from_options(cls, options: object) -> None:
        raise ValueError("needs a newer Python")


def test_a_strategy_that_cannot_be_built_here_is_a_note_not_a_crash(monkeypatch, tmp_path):
    from framework.bench.config import QUICK, BenchConfig, OwnServer
    from framework.bench.exchange import ExchangeSpec
    from framework.bench.targets import Context
    from framework.bench.workloads import own
    from servers.echo import EchoServer

    monkeypatch.setattr(own, "STRATEGIES", {"iterative": STRATEGIES["iterative"],
                                            "unbuildable": f"{__name__}:Unbuildable"})
    monkeypatch.setattr("framework.strategies.STRATEGIES", {**own.STRATEGIES})
    server = OwnServer("servers.echo:EchoServer", ExchangeSpec(kind="send", send="x", expect_bytes=1))
    config = BenchConfig(workloads=["server"], out=tmp_path, scale=QUICK, own=server)
    found = {target.name: target.skip for target in own.own_targets(config, EchoServer, server, Context("", ""))}
    assert found == {"iterative": None, "unbuildable": "cannot be built here: needs a newer Python"}
