"""The ``interpreters`` strategy: sub-interpreters with their own GIL, supervised by the main interpreter.

Collected where the strategy runs (Python 3.13+, ``FORKTHREAD_STRATEGIES``
naming it: tox's py313-interpreters), but for the last test, which checks
the one-line refusal on older Pythons.
"""

from __future__ import annotations

import http.client
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from framework import subinterpreters
from tests.support import ROOT, child_env, recv_all, wait_for

pytestmark = pytest.mark.only_strategies("interpreters")

TWO = ("--strategy", "interpreters", "--workers", "2")


def exchange_lines(sock: socket.socket, lines: list[bytes]) -> bytes:
    """Send each line and read its answer (one line back per line sent)."""
    answers = []
    reader = sock.makefile("rb")
    try:
        for line in lines:
            sock.sendall(line)
            answers.append(reader.readline())
    finally:
        reader.close()
    return b"".join(answers)


def test_echo_with_two_workers(serve):
    server = serve("echo", *TWO, strategy=None)
    # Two connections open at once: each worker serves one (--worker iterative).
    first, second = server.connect(), server.connect()
    with first, second:
        for sock, word in ((first, b"one"), (second, b"two")):
            sock.sendall(word)
            sock.shutdown(socket.SHUT_WR)
        assert recv_all(second) == b"two"
        assert recv_all(first) == b"one"
    assert wait_for(lambda: server.log().count(" ready") >= 2, timeout=30)


def test_http_with_two_workers(serve, tmp_path: Path):
    (tmp_path / "hello.txt").write_bytes(b"hello from a sub-interpreter\n")
    server = serve("http", *TWO, "--root", str(tmp_path), strategy=None)
    host, _, port = server.address.rpartition(":")
    for _ in range(4):
        client = http.client.HTTPConnection(host, int(port), timeout=10)
        try:
            client.request("GET", "/hello.txt")
            response = client.getresponse()
            assert response.status == 200
            assert response.read() == b"hello from a sub-interpreter\n"
        finally:
            client.close()


def test_a_socketserver_handler_with_worker_threads(serve):
    server = serve("work", *TWO, "--worker", "threads", "--threads", "4", "--style", "handler",
                   "--work", "cpu:1", strategy=None)
    clients = [server.connect() for _ in range(4)]
    try:
        for sock in clients:
            assert exchange_lines(sock, [b"x\n", b"y\n"]) == b"ok\nok\n"
    finally:
        for sock in clients:
            sock.close()


def test_status_line_of_the_pool_and_of_each_worker(serve):
    server = serve("echo", *TWO, strategy=None)
    assert wait_for(lambda: server.log().count(" ready") >= 2, timeout=30)
    server.send_signal(signal.SIGUSR1)
    assert wait_for(lambda: server.log().count("status: worker") == 2, timeout=10), server.log()
    assert "strategy=interpreters(workers=2,worker=iterative)" in server.log()
    assert "gil=" in server.log()


@pytest.mark.parametrize(("strategy_args", "parallel"), [
    (TWO, True),
    (("--strategy", "preforked", "--workers", "2"), True),  # the reference: processes
    (("--strategy", "threading"), False),  # and the contrast: one GIL
])
def test_a_worker_runs_while_another_holds_its_gil(serve, strategy_args, parallel):
    """Each worker has its own GIL: one serves on while another computes in C, holding its GIL.

    The event checked is an order of two instants on the machine's monotonic
    clock, whatever its load: the first connection's handler computes without
    letting go of its GIL (a regular expression backtracking: ``re`` offers
    no thread switch inside a match), and the second connection's handler
    runs before that match could have ended (its start plus the CPU time it
    took: the match's wall time is at least that).  With one GIL (the
    contrast row) the second handler runs only after the match.  No speed
    is compared here (the lab does: ``bench work``).
    """
    server = serve("tests.interpreter_servers:LineHandlerServer", *strategy_args, strategy=None)
    assert wait_for(lambda: server.log().count(" ready") >= 2 or "interpreters" not in strategy_args, timeout=30)
    holder, other = server.connect(timeout=120), server.connect(timeout=120)
    with holder, other, holder.makefile("rb") as held, other.makefile("rb") as answers:
        holder.sendall(b"hold\n")
        assert held.readline() == b"holding\n"
        other.sendall(b"stamp\n")
        stamped = int(answers.readline())
        done, start, cpu = held.readline().split()
        assert done == b"done"
    began, ended = int(start), int(start) + int(cpu)
    if parallel:
        assert stamped < ended, (stamped - began, int(cpu))
    else:  # one GIL: never inside the match (before it began is possible: "holding" goes out first)
        assert not began <= stamped < ended, (stamped - began, int(cpu))


def test_sigterm_while_handlers_block_in_readline(serve):
    """Idle handlers waiting in readline see end-of-input at the stop; the process leaves within the deadline."""
    server = serve("work", *TWO, "--worker", "threads", "--threads", "3", "--style", "handler",
                   "--work", "cpu:1", "--graceful-timeout", "5", strategy=None)
    clients = [server.connect() for _ in range(4)]
    try:
        for sock in clients:
            assert exchange_lines(sock, [b"x\n"]) == b"ok\n"  # each handler now waits in readline
        status = server.stop(signal.SIGTERM, timeout=5 + 3)  # the deadline, with a margin only a hang misses
        assert status == 0, server.log()
        for sock in clients:
            sock.settimeout(5)
            assert recv_all(sock) == b""
    finally:
        for sock in clients:
            sock.close()
    assert "stopped" in server.log()


def test_a_worker_whose_thread_ends_is_replaced_and_logged_once(serve):
    server = serve("tests.interpreter_servers:LineHandlerServer", *TWO, strategy=None)
    assert wait_for(lambda: server.log().count(" ready") >= 2, timeout=30)
    with server.connect() as sock:
        sock.sendall(b"end-thread\n")
        sock.settimeout(10)
        assert recv_all(sock) == b""
    assert wait_for(lambda: server.log().count(" ready") >= 3, timeout=30), server.log()
    log = server.log()
    assert log.count("died") == 1 and log.count("SystemExit: the handler ended its thread") == 1, log
    assert "Traceback" in log
    for _ in range(4):  # the pool is whole again
        with server.connect() as sock:
            assert exchange_lines(sock, [b"again\n"]) == b"again\n"


def test_max_requests_recycles_a_worker(serve):
    server = serve("echo", "--strategy", "interpreters", "--workers", "1", "--max-requests", "3", strategy=None)
    for number in range(8):
        with server.connect() as sock:
            sock.sendall(b"%d" % number)
            sock.shutdown(socket.SHUT_WR)
            assert recv_all(sock) == b"%d" % number
    assert wait_for(lambda: "reached max-requests" in server.log() and "worker 2 (lane 0) ready" in server.log(),
                    timeout=30), server.log()


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout,
                          env=child_env(), cwd=ROOT, stdin=subprocess.DEVNULL, check=False)


def test_a_worker_that_cannot_boot_ends_the_serve():
    done = run_cli("-m", "framework", "serve", "tests.interpreter_servers:FailingInitServer", "--bind",
                   "127.0.0.1:0", *TWO)
    assert done.returncode == 3, done.stderr
    assert "worker_init failed on purpose" in done.stderr
    assert "failed to boot" in done.stderr


def test_a_server_defined_in_main_is_a_clear_error():
    done = run_cli("tests/faulty_server.py", "--bind", "127.0.0.1:0", *TWO)
    assert done.returncode == 2, done.stderr
    assert "__main__" in done.stderr and "import path" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.only_strategies(*(["iterative"] if subinterpreters.unavailable() else []))
def test_before_python_3_13_one_line_and_exit_2():
    done = run_cli("-m", "framework", "serve", "echo", "--bind", "127.0.0.1:0", *TWO, timeout=30)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "3.13" in lines[0], done.stderr
