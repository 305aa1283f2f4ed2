"""The pytest plugin, used as a user uses it: a fresh project of its own, pytest run on it in a subprocess.

The project (written into a temporary folder) has its own servers and test
files; the plugin is loaded as the installed entry point loads it
(``-p framework.pytest_plugin`` is the same plugin, also where the package
is not installed).  Outcomes are read from pytest's JUnit XML report.  The
fixture itself is also used here directly, under this suite's strategy.
"""

from __future__ import annotations

import configparser
import os
import signal
import socket
import ssl
import subprocess
import sys
import textwrap
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from framework.strategies import available_strategies
from tests.support import ROOT, child_env, recv_all
from tests.tls_support import make_tls_files

SERVERS = '''
"""A user's servers: two good ones, and four planted bugs."""

import logging
import socketserver
import subprocess
import threading
import time

from framework import Protocol, Server


class Echo(Protocol):
    def connection_made(self, transport):
        super().connection_made(transport)
        logging.getLogger("myservers").warning("hello from %s", transport.peer)

    def data_received(self, data):
        self.transport.write(data)


class EchoServer(Server):
    protocol = Echo


class LineHandler(socketserver.StreamRequestHandler):
    def handle(self):
        for line in self.rfile:
            self.wfile.write(line)


class HandlerServer(Server):
    handler = LineHandler


class LeakyServer(Server):
    """Starts a grandchild nobody waits for."""

    protocol = Echo

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        subprocess.Popen(["sleep", "1000"], start_new_session=True)


class Raises(Protocol):
    def data_received(self, data):
        raise RuntimeError("planted bug in data_received")


class RaisingServer(Server):
    protocol = Raises


class ThreadedServer(Server):
    """Starts a non-daemon thread that never ends: the interpreter waits for it forever."""

    protocol = Echo

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        threading.Thread(target=lambda: time.sleep(10**6), name="never-ends").start()


class BrokenServer(Server):
    protocol = Echo

    def __init__(self, *args, **kwargs):
        raise RuntimeError("planted bug in the constructor")
'''

GOOD_TESTS = '''
import time

from myservers import EchoServer


def test_echo(forkthread_server):
    server = forkthread_server(EchoServer)
    with server.connect() as sock:
        sock.sendall(b"ping\\n")
        assert sock.recv(64) == b"ping\\n"
    deadline = time.monotonic() + 30
    while "hello from" not in server.log and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "WARNING myservers: hello from" in server.log


def test_handler(forkthread_server):
    server = forkthread_server("myservers:HandlerServer", max_connections=3)
    with server.connect() as sock:
        sock.sendall(b"line\\n")
        assert sock.recv(64) == b"line\\n"


def test_unix(forkthread_server, forkthread_strategy):
    server = forkthread_server(EchoServer, bind="unix")
    assert server.address.startswith("unix:") and server.strategy == forkthread_strategy
    with server.connect() as sock:
        sock.sendall(b"ping")
        assert sock.recv(64) == b"ping"
'''

BUG_TESTS = '''
import pytest


def test_leaks_a_grandchild(forkthread_server):
    forkthread_server("myservers:LeakyServer")


def test_raises_in_data_received(forkthread_server):
    server = forkthread_server("myservers:RaisingServer")
    with server.connect() as sock:
        sock.sendall(b"x")
        sock.recv(64)


@pytest.mark.forkthread_expect_errors
def test_raises_but_expected(forkthread_server):
    server = forkthread_server("myservers:RaisingServer")
    with server.connect() as sock:
        sock.sendall(b"x")
        sock.recv(64)


def test_never_exits(forkthread_server):
    forkthread_server("myservers:ThreadedServer", graceful_timeout=1)


def test_constructor_raises(forkthread_server):
    forkthread_server("myservers:BrokenServer")
'''

PLAIN_TEST = '''
import ctypes
import sys

PR_GET_CHILD_SUBREAPER = 37


def test_plain():
    flag = ctypes.c_int(0)
    assert ctypes.CDLL(None).prctl(PR_GET_CHILD_SUBREAPER, ctypes.byref(flag), 0, 0, 0) == 0
    assert flag.value == 0, "a test without the fixture runs in a subreaper"
    heavy = [name for name in ("framework.harness", "framework.server", "framework.strategies")
             if name in sys.modules]
    print("HEAVY", heavy)
'''


def make_project(directory: Path, servers: str = SERVERS, **tests: str) -> Path:
    """A user's project: ``myservers.py``, the given test files, and an empty pytest.ini (its own rootdir)."""
    (directory / "pytest.ini").write_text("[pytest]\n")
    (directory / "myservers.py").write_text(servers)
    for name, text in tests.items():
        (directory / f"{name}.py").write_text(textwrap.dedent(text))
    return directory


def run_pytest(project: Path, *args: str, env: dict[str, str] | None = None,
               timeout: float = 600) -> tuple[subprocess.CompletedProcess[str], dict[str, tuple[str, str]]]:
    """pytest in *project*; returns the run and ``{test id: (outcome, message and text)}`` from its JUnit XML."""
    report = project / "report.xml"
    environment = env if env is not None else user_env()
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "framework.pytest_plugin", "-p", "no:cacheprovider",
                           f"--junitxml={report}", "-o", "junit_family=xunit1", *args],
                          cwd=project, env=environment, capture_output=True, text=True, timeout=timeout, check=False)
    outcomes: dict[str, tuple[str, str]] = {}
    if report.exists():
        for case in ET.parse(report).getroot().iter("testcase"):
            outcome, text = "passed", ""
            for child in case:
                if child.tag in ("failure", "error", "skipped"):
                    outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[child.tag]
                    text = f"{child.get('message', '')}\n{child.text or ''}"
                    break
            outcomes[case.get("name", "")] = (outcome, text)
    return done, outcomes


def user_env(**extra: str) -> dict[str, str]:
    """The environment of a user's run: this checkout importable, no strategy chosen by the outer run."""
    env = child_env(**extra)
    for name in ("FORKTHREAD_STRATEGIES", "FORKTHREAD_MATRIX_ONLY", "PYTEST_ADDOPTS"):
        if name not in extra:
            env.pop(name, None)
    return env


def test_a_user_projects_servers_pass_under_the_strategy(strategy, tmp_path):
    project = make_project(tmp_path, test_good=GOOD_TESTS)
    done, outcomes = run_pytest(project, f"--forkthread-strategies={strategy}")
    report = done.stdout + done.stderr
    assert outcomes[f"test_echo[{strategy}]"][0] == "passed", report
    assert outcomes[f"test_unix[{strategy}]"][0] == "passed", report
    handler, reason = outcomes[f"test_handler[{strategy}]"]
    if strategy == "poll":
        assert handler == "skipped", report
        assert "runs a blocking handler, which strategy poll" in reason and "cannot carry" in reason, reason
    else:
        assert handler == "passed", report
    assert len(outcomes) == 3, outcomes


def test_planted_bugs_each_fail_naming_their_cause(strategy, tmp_path):
    # The leaked grandchild sleeps a duration of this run's own, so that the check at the end finds
    # this run's process, not the same test's running at once in another tox environment.
    seconds = f"1000.{os.getpid()}{time.monotonic_ns() % 10**6}"
    project = make_project(tmp_path, SERVERS.replace('["sleep", "1000"]', f'["sleep", "{seconds}"]'),
                           test_bugs=BUG_TESTS)
    done, outcomes = run_pytest(project, f"--forkthread-strategies={strategy}")
    report = done.stdout + done.stderr

    outcome, text = outcomes[f"test_leaks_a_grandchild[{strategy}]"]
    assert outcome == "failed", report
    assert "processes outlived their server (killed now): pid " in text and ": sleep 1000" in text, text

    outcome, text = outcomes[f"test_raises_in_data_received[{strategy}]"]
    assert outcome == "failed", report
    assert "the server logged an error or a traceback" in text, text
    assert "Traceback (most recent call last)" in text and "planted bug in data_received" in text, text
    assert outcomes[f"test_raises_but_expected[{strategy}]"][0] == "passed", report

    outcome, text = outcomes[f"test_never_exits[{strategy}]"]
    assert outcome == "failed", report
    assert "a non-daemon thread keeps the server alive" in text and "myservers.py" in text, text  # and its stack

    outcome, text = outcomes[f"test_constructor_raises[{strategy}]"]
    assert outcome == "failed", report
    assert "ended before listening (exit status 1)" in text, text
    assert "RuntimeError: planted bug in the constructor" in text, text

    # Each failure is the test's own (not a second error at teardown), and nothing is left running.
    assert "error" not in {outcome for outcome, _ in outcomes.values()}, report
    mine = b"sleep\x00" + seconds.encode()
    assert not any(pid for pid in os.listdir("/proc") if pid.isdigit() and mine in _cmdline(pid))


def _cmdline(pid: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def test_selection_option_then_variable_then_every_strategy(tmp_path):
    project = make_project(tmp_path, test_good=GOOD_TESTS, test_plain=PLAIN_TEST)

    def collected(*args: str, **env: str) -> list[str]:
        done = subprocess.run([sys.executable, "-m", "pytest", "-p", "framework.pytest_plugin", "-p",
                               "no:cacheprovider", "--collect-only", "-q", *args],
                              cwd=project, env=user_env(**env), capture_output=True, text=True, timeout=120,
                              check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        return [line for line in done.stdout.splitlines() if "::" in line]

    every = collected()
    assert [test for test in every if test.startswith("test_good.py::test_echo")] == [
        f"test_good.py::test_echo[{name}]" for name in available_strategies()]  # interpreters from 3.13
    assert "test_plain.py::test_plain" in every  # unparametrized
    by_variable = collected(FORKTHREAD_STRATEGIES="forking,poll")
    assert [test for test in by_variable if "test_echo" in test] == [
        "test_good.py::test_echo[forking]", "test_good.py::test_echo[poll]"]
    by_option = collected("--forkthread-strategies", "preforked", FORKTHREAD_STRATEGIES="forking,poll")
    assert [test for test in by_option if "test_echo" in test] == ["test_good.py::test_echo[preforked]"]

    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "framework.pytest_plugin", "--collect-only",
                           "--forkthread-strategies", "forking,bogus"], cwd=project, env=user_env(),
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 4, done.stdout + done.stderr  # pytest's usage error
    assert "unknown strategies bogus" in done.stderr, done.stderr


def test_a_plain_test_costs_nothing(tmp_path):
    project = make_project(tmp_path, test_plain=PLAIN_TEST)
    done, outcomes = run_pytest(project, "-s")
    assert outcomes == {"test_plain": ("passed", "")}, done.stdout + done.stderr
    assert "HEAVY []" in done.stdout, done.stdout  # the plugin loaded nothing but itself


def test_a_plain_test_after_fixture_tests_runs_outside_a_subreaper(tmp_path):
    project = make_project(tmp_path, test_good=GOOD_TESTS, test_plain=PLAIN_TEST)
    done, outcomes = run_pytest(project, "--forkthread-strategies=iterative")
    assert outcomes["test_echo[iterative]"][0] == "passed", done.stdout + done.stderr
    assert outcomes["test_plain"] == ("passed", ""), done.stdout + done.stderr


def test_the_entry_point_names_the_plugin_module():
    """Named by its module: ``-p framework.pytest_plugin`` and the installed entry point are one plugin."""
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    points = dict(line.split(" = ") for line in config["options.entry_points"]["pytest11"].strip().splitlines())
    assert points == {"framework.pytest_plugin": "framework.pytest_plugin"}


def test_the_fixture_here(forkthread_server, forkthread_strategy, tmp_path):
    """The fixture in this suite: the handle's address, pid, log, signal and stop."""
    server = forkthread_server("echo", log_level="debug")
    assert server.strategy == forkthread_strategy
    host, _, port = server.address.rpartition(":")
    assert host == "127.0.0.1" and int(port) > 0
    with server.connect() as sock:
        sock.sendall(b"hello")
        sock.shutdown(socket.SHUT_WR)
        assert recv_all(sock) == b"hello"
    server.signal(signal.SIGTERM)
    assert server.stop() == 0


def test_the_fixture_wraps_tls(forkthread_server, tmp_path):
    files = make_tls_files(tmp_path)
    server = forkthread_server("echo", tls_cert=str(files.cert), tls_key=str(files.key))
    with server.connect() as sock:
        assert isinstance(sock, ssl.SSLSocket)
        sock.sendall(b"secret")
        assert sock.recv(64) == b"secret"
    with server.connect(tls=False) as sock:
        assert not isinstance(sock, ssl.SSLSocket)


def test_the_fixture_binds_unix_and_removes_the_file(forkthread_server):
    server = forkthread_server("echo", bind="unix")
    path = server.address.removeprefix("unix:")
    assert os.path.exists(path)
    with server.connect() as sock:
        sock.sendall(b"u")
        assert sock.recv(1) == b"u"
    assert server.stop() == 0
    assert not os.path.exists(path)

