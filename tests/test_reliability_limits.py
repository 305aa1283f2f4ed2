"""Limits: out of descriptors, many connections, more clients than the server will serve at once.

Every test runs under every selected strategy, against a real server
process, and reads the server's resource use from /proc.
"""

from __future__ import annotations

import os
import socket
import time

import pytest

from tests.reliability_support import (
    Bounded,
    bytes_wrong,
    count_lines,
    echo_roundtrip,
    lower_nofile,
    open_clients,
    report,
    restore_nofile,
    settle,
    tree_cpu_seconds,
    usage,
    workers_ready,
)
from tests.support import assert_no_accept_spin, recv_all, uninstrumented_env, wait_for

#: Options that give every strategy a small, known concurrency.
SMALL_POOL = ("--max-connections", "2", "--threads", "2", "--workers", "2")


def capacity(strategy: str, *options: str) -> int:
    """Connections served at once with SMALL_POOL: iterative one, two workers of two threads four, others two."""
    if strategy == "iterative":
        return 1
    return 4 if "threads" in options else 2


# -- descriptor exhaustion ---------------------------------------------------------


def test_emfile_backs_off_quietly_and_recovers(serve, strategy):
    server = serve("echo", "--workers", "2", "--timeout", "10", strategy=strategy)
    workers_ready(server)
    assert echo_roundtrip(server, b"before") == b"before"
    time.sleep(0.2)  # let every worker reach its accept loop
    limits = lower_nofile({server.pid} | server.tree())
    waiting = []
    try:
        # The kernel completes these handshakes; the server's accept() now fails with EMFILE.
        open_clients(server, 3, b"waiting %d", into=waiting)
        assert wait_for(lambda: "Too many open files" in server.log(), timeout=30), server.log()
        # A level-triggered poll on a listener it cannot accept from would spin here: count its retries.
        before = tree_cpu_seconds(server.pid)
        retries = assert_no_accept_spin(server)
        spent = tree_cpu_seconds(server.pid) - before  # a figure for the docs, not a bound
        assert server.proc.poll() is None
        reports = count_lines(server.log(), r"accept: .*Too many open files")
        # Each worker accepts (a sub-interpreter is one, in the one process) and reports once.
        accepting_processes = 2 if strategy == "interpreters" else 1 + len(server.tree())
        assert 1 <= reports <= accepting_processes, server.log()
        restore_nofile(limits)
        # Descriptors are back: the connections that waited in the backlog are served, byte-exact.
        compared = 0
        for index, sock in enumerate(waiting):
            sock.settimeout(30)
            sock.shutdown(socket.SHUT_WR)
            answer = recv_all(sock)
            assert answer == b"waiting %d" % index
            compared += len(answer)
    finally:
        restore_nofile(limits)
        for sock in waiting:
            sock.close()
    assert echo_roundtrip(server, b"after") == b"after"
    assert "Traceback" not in server.log()
    report("emfile", strategy=strategy, failed_accepts_in_1s=retries, cpu_in_1s=f"{spent:.2f}", log_lines=reports,
           waiting_clients=len(waiting), bytes_compared=compared)


# -- many short connections: resources stay flat ----------------------------------------


def churn(server, bound: Bounded) -> tuple[int, int, int]:
    """Short echo connections until *bound* is used up; return (connections, bytes compared, bytes wrong)."""
    compared = wrong = 0
    while bound.more():
        payload = b"%d" % bound.done
        answer = echo_roundtrip(server, payload)
        compared += len(payload)
        wrong += bytes_wrong(answer, payload)
    return bound.done, compared, wrong


#: Connections every flat-resources test makes at least, however slow the machine.
MIN_CHURN = 200


def flat_resources(serve, strategy: str, count: int, seconds: float, pss_slack_kib: int) -> None:
    # Untraced even under coverage: the memory measured is the server's, not coverage's.
    server = serve("echo", "--workers", "2", strategy=strategy, env=uninstrumented_env())
    workers_ready(server)
    churn(server, Bounded(500, 10))  # warm up: imports, allocator pools, lazily created workers
    time.sleep(0.3)
    baseline = usage(server.pid)
    started = time.monotonic()
    done, compared, lost = churn(server, Bounded(count, seconds))
    if done < MIN_CHURN:
        # A loaded machine (or coverage saving a data file per forked child) can be slow:
        # the test still makes its minimum of connections, bounded by count, not by speed.
        more, more_compared, more_lost = churn(server, Bounded(MIN_CHURN - done, 60))
        done, compared, lost = done + more, compared + more_compared, lost + more_lost
    elapsed = time.monotonic() - started
    after = settle(server.pid, baseline, pss_slack_kib=pss_slack_kib)
    report("flat", strategy=strategy, connections=done, seconds=f"{elapsed:.1f}", bytes_compared=compared,
           bytes_wrong=lost,
           baseline=f"[{baseline}]", after=f"[{after}]")
    assert lost == 0
    assert done >= min(count, MIN_CHURN), f"only {done} connections"
    assert after.processes <= baseline.processes, (baseline, after)
    assert after.fds <= baseline.fds, (baseline, after)
    assert after.threads <= baseline.threads, (baseline, after)
    assert after.pss_kib <= baseline.pss_kib + pss_slack_kib, (baseline, after)


def test_resources_flat_after_thousands_of_connections(serve, strategy):
    flat_resources(serve, strategy, count=3000, seconds=8, pss_slack_kib=4096)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_resources_flat_after_100k_connections(serve, strategy):
    # Bounded in time too: the slower strategies (a fork per connection) get
    # as far as 20 s allow; the count reached is printed for the docs.
    flat_resources(serve, strategy, count=100_000, seconds=20, pss_slack_kib=8192)


# -- overload: more clients than the server serves at once ------------------------------------


def test_overload_waits_in_backlog_and_resumes(serve, strategy):
    overload_waits_and_resumes(serve, strategy)


@pytest.mark.only_strategies("prethreaded", "preforked")
# Not reuseport: the kernel picks a lane by a hash, so a client may wait behind its lane's busy
# worker while another lane's is idle; the bound holds, but which clients wait is not known.
@pytest.mark.parametrize("options", [("--prethreaded-accept", "handoff"), ("--accept", "passfd"),
                                     ("--worker", "threads")])
def test_overload_other_accept_modes(serve, strategy, options):
    if (options[0] == "--prethreaded-accept") != (strategy == "prethreaded") or strategy not in (
            "prethreaded", "preforked"):
        pytest.skip("an option of another strategy")
    overload_waits_and_resumes(serve, strategy, *options)


def overload_waits_and_resumes(serve, strategy: str, *options: str) -> None:
    server = serve("echo", *SMALL_POOL, *options, strategy=strategy)
    workers_ready(server)
    holders = []
    for _ in range(capacity(strategy, *options)):
        sock = server.connect()
        sock.sendall(b"h")
        assert sock.recv(1) == b"h"  # being served
        holders.append(sock)
    excess = []
    try:
        open_clients(server, 20, b"excess %d", into=excess)  # the kernel's backlog takes them
        # At the bound nobody else is served...
        for sock in excess[:3]:
            sock.settimeout(0.3)
            with pytest.raises(TimeoutError):
                sock.recv(1)
        assert server.proc.poll() is None
        # ...and when load drops every waiting client is served, byte-exact.
        for sock in holders:
            sock.shutdown(socket.SHUT_WR)
            assert recv_all(sock) == b""
            sock.close()
        for index, sock in enumerate(excess):
            sock.settimeout(10)
            sock.shutdown(socket.SHUT_WR)
            assert recv_all(sock) == b"excess %d" % index
    finally:
        for sock in holders + excess:
            sock.close()
    assert echo_roundtrip(server, b"after") == b"after"
    assert "Traceback" not in server.log()


@pytest.mark.slow
def test_overload_many_concurrent_clients(serve, strategy):
    # 200 clients at once against a pool of two: all served in the end, nothing lost.
    from tests.reliability_support import run_threads

    server = serve("echo", *SMALL_POOL, strategy=strategy)
    payloads = [os.urandom(1024) + b"%d" % i for i in range(200)]

    def client(index: int) -> None:
        assert echo_roundtrip(server, payloads[index], timeout=60) == payloads[index]

    errors = run_threads(client, len(payloads), timeout=90)
    assert not errors, errors[:3]
    assert "Traceback" not in server.log()


# -- a stopped listener refuses, in this process and in those sharing it ------------------------------


@pytest.mark.parametrize("family", ["tcp", "unix"])
def test_stopped_acceptor_refuses_new_connections(family, tmp_path):
    from framework.accepting import Acceptor

    if family == "tcp":
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
    else:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(tmp_path / "l.sock"))
    with listener:
        listener.listen(8)
        listener.setblocking(False)
        address = listener.getsockname()
        mine, sibling = Acceptor(listener), Acceptor(listener)  # sibling: a worker sharing the socket
        mine.stop()
        with socket.socket(listener.family, socket.SOCK_STREAM) as client, pytest.raises(ConnectionRefusedError):
            client.connect(address)
        assert mine.accept() is None and mine.backoff_remaining() > 0
        assert sibling.accept() is None
        if family == "tcp":  # the kernel says "not listening" (EINVAL): the sibling sees it stopped
            assert sibling.stopped and sibling.backoff_remaining() > 0
