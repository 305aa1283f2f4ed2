"""Handler faults: a protocol that raises ends its own connection, is logged once, and nothing else changes."""

from __future__ import annotations

import socket
import sys
import time

import pytest

from tests.reliability_support import count_lines, echo_roundtrip, report, settle, usage, workers_ready
from tests.support import ROOT, recv_all, tree_zombies, wait_for

FAULTY = [sys.executable, str(ROOT / "tests" / "faulty_server.py")]


def start_faulty(serve, strategy: str):  # type: ignore[no-untyped-def]
    """The faulty server as a script; by its import path under interpreters (a worker imports it)."""
    if strategy == "interpreters":
        return serve("tests.faulty_server:FaultyServer", "--workers", "2", strategy=strategy)
    return serve("faulty", "--workers", "2", strategy=strategy, program=FAULTY)

#: magic word -> the exception the log must show once per fault.
FAULTS = {
    b"raise-in-data": "ValueError: fault injected in data_received",
    b"raise-in-eof": "RuntimeError: fault injected in eof_received",
    b"raise-in-lost": "LookupError: fault injected in connection_lost",
}


def provoke(server, word: bytes) -> None:
    """Send *word* and half-close; the connection must end (quietly or with a reset), never hang."""
    with server.connect(timeout=10) as sock:
        try:
            sock.sendall(b"hello " + word)
            sock.shutdown(socket.SHUT_WR)
            answer = recv_all(sock)
        except ConnectionResetError:
            return  # ended by the fault, at once: fine
    # Whatever came back is a prefix of the echo: the fault never corrupts bytes.
    assert (b"hello " + word).startswith(answer), answer


def faults_survived(serve, strategy: str, rounds: int) -> None:
    server = start_faulty(serve, strategy)
    workers_ready(server)
    assert echo_roundtrip(server, b"warm") == b"warm"
    time.sleep(0.2)
    workers_before = server.tree() if strategy == "preforked" else set()
    baseline = usage(server.pid)
    provoked = served_between = 0
    for _ in range(rounds):
        for word in FAULTS:
            provoke(server, word)
            provoked += 1
            assert echo_roundtrip(server, b"still serving") == b"still serving"
            served_between += 1
    after = settle(server.pid, baseline, pss_slack_kib=8192)
    # The connection closes before the fault is logged: give the last report a moment to arrive.
    wait_for(lambda: count_lines(server.log(), r"^Traceback") >= rounds * len(FAULTS), timeout=5)
    log = server.log()
    for word, line in FAULTS.items():
        assert count_lines(log, line) == rounds, f"{word!r}: expected {rounds} reports of {line!r}\n{log}"
    assert count_lines(log, r"^Traceback \(most recent call last\)") == rounds * len(FAULTS), log
    assert server.proc.poll() is None
    if strategy == "preforked":
        assert server.tree() == workers_before, "a protocol fault cost a worker process"
    assert after.fds <= baseline.fds and after.threads <= baseline.threads, (baseline, after)
    report("faults", strategy=strategy, faults_provoked=provoked, tracebacks_logged=count_lines(log, r"^Traceback"),
           clean_connections_between=served_between, server_pid_alive=int(server.proc.poll() is None),
           processes_before=baseline.processes, processes_after=after.processes,
           fds_before=baseline.fds, fds_after=after.fds)


def test_protocol_faults_end_one_connection_logged_once(serve, strategy):
    faults_survived(serve, strategy, rounds=3)


@pytest.mark.slow
def test_many_protocol_faults(serve, strategy):
    faults_survived(serve, strategy, rounds=100)


def test_fault_does_not_disturb_concurrent_connection(serve, strategy):
    if strategy == "iterative":
        pytest.skip("iterative serves one connection at a time")
    server = start_faulty(serve, strategy)
    workers_ready(server)
    with server.connect(timeout=10) as bystander:
        bystander.sendall(b"first;")
        assert recv_all(bystander, limit=6) == b"first;"
        for word in FAULTS:
            provoke(server, word)
        bystander.sendall(b"second")
        bystander.shutdown(socket.SHUT_WR)
        assert recv_all(bystander) == b"second"


def crash_connection(server) -> None:
    """Send the word that makes the serving process exit; the connection must end, not hang."""
    with server.connect(timeout=15) as sock:
        sock.settimeout(15)
        try:
            sock.sendall(b"exit-process")
            sock.shutdown(socket.SHUT_WR)
            assert recv_all(sock) == b""
        except ConnectionResetError:
            pass


@pytest.mark.only_strategies("forking", "preforked")
def test_process_crash_costs_one_connection(serve, strategy):
    # Where a connection has a process of its own (forking) or a worker (preforked), the
    # process may die outright; the server reaps it, replaces it if it is a worker, and serves on.
    if strategy not in ("forking", "preforked"):
        pytest.skip("the connection is served in the server's own process")
    server = start_faulty(serve, strategy)
    crashes = 8
    started = time.monotonic()
    for _ in range(crashes):
        crash_connection(server)
    answer = echo_roundtrip(server, b"serving again", timeout=30)
    assert answer == b"serving again"
    assert server.proc.poll() is None
    if strategy == "preforked":
        wait_for(lambda: count_lines(server.log(), r"died unexpectedly") >= crashes, timeout=10)
        log = server.log()
        assert count_lines(log, r"died unexpectedly") == crashes, log
        # A burst of crashes slows respawning down instead of forking in a tight loop.
        assert count_lines(log, r"worker crashes in .*next respawn in") >= 1, log
        assert wait_for(lambda: len(server.tree()) == 2, timeout=15), "the pool was not refilled"
    report("process-crash", strategy=strategy, crashes=crashes, seconds=f"{time.monotonic() - started:.1f}",
           deaths_logged=count_lines(server.log(), r"died unexpectedly"), processes_after=1 + len(server.tree()),
           zombies_after=len(tree_zombies(server.pid)), echo_bytes_after=len(answer))
