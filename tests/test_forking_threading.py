"""What is particular to the forking, threading and prethreaded strategies: bounds, reaping, threads."""

from __future__ import annotations

import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from framework.strategies import create_strategy
from framework.strategies.base import StrategyOptions
from servers.echo import EchoServer
from tests.support import (
    PeakSampler,
    echo_exchange,
    proc_children,
    recv_all,
    task_children,
    thread_count,
    wait_for,
    zombies_of,
)

#: Bounded strategies and the options that bound them to 4 connections at once.
BOUNDED = {
    "forking": ("--max-connections", "4"),
    "threading": ("--max-connections", "4"),
    "prethreaded": ("--threads", "4"),
}


def _workers(strategy: str, pid: int) -> int:
    """Children (forking, zombies included) or threads besides the main one (the others)."""
    if strategy == "forking":
        return len(task_children(pid))
    return thread_count(pid) - 1


def _slow_echo_client(server, index: int) -> bytes:  # type: ignore[no-untyped-def]
    with server.connect(timeout=60) as sock:
        sock.sendall(b"%d" % index)
        time.sleep(0.1)  # hold the connection, so that the bound is reached
        sock.shutdown(socket.SHUT_WR)
        return recv_all(sock)


def _only(strategy: str, *names: str) -> None:
    """Skip unless the *strategy* under test is one of *names* (the test is about them)."""
    if strategy not in names:
        pytest.skip(f"not about {strategy}")


@pytest.mark.parametrize("accept", ["lock", "handoff"])
def test_bound_of_4_serves_20_clients_never_more_than_4_at_once(serve, strategy, accept):
    _only(strategy, *BOUNDED)
    if accept == "handoff" and strategy != "prethreaded":
        pytest.skip("accept modes are prethreaded's")
    extra = ("--prethreaded-accept", accept) if strategy == "prethreaded" else ()
    server = serve("echo", *BOUNDED[strategy], *extra, strategy=strategy)
    with PeakSampler(lambda: _workers(strategy, server.pid)) as peak, ThreadPoolExecutor(max_workers=20) as pool:
        replies = list(pool.map(lambda index: _slow_echo_client(server, index), range(20), timeout=60))
    assert replies == [b"%d" % index for index in range(20)]
    assert peak.samples > 10
    assert peak.value == 4, f"at most 4 workers expected, and the bound reached; saw {peak.value}"


def test_forking_reaps_every_child_within_a_second(serve, strategy):
    _only(strategy, "forking")
    server = serve("daytime", strategy="forking")
    for _ in range(10):
        with server.connect() as sock:
            assert recv_all(sock).endswith(b"\r\n")
        assert wait_for(lambda: not proc_children(server.pid), timeout=1.0), (
            f"children left: {proc_children(server.pid)}, zombies: {zombies_of(server.pid)}")


def test_forking_child_does_not_hold_the_listener(serve, strategy):
    _only(strategy, "forking")
    server = serve("echo", strategy="forking")
    listener_inodes = {os.readlink(f"/proc/{server.pid}/fd/{fd}") for fd in os.listdir(f"/proc/{server.pid}/fd")}
    with server.connect() as sock:
        sock.sendall(b"x")
        assert sock.recv(1) == b"x"
        (child,) = proc_children(server.pid)
        child_fds = {os.readlink(f"/proc/{child}/fd/{fd}") for fd in os.listdir(f"/proc/{child}/fd")}
    sockets_of_parent = {link for link in listener_inodes if link.startswith("socket:")}
    assert sockets_of_parent, listener_inodes
    assert not sockets_of_parent & child_fds, "the child kept the parent's listening socket"


@pytest.mark.parametrize("accept", ["lock", "handoff"])
def test_prethreaded_runs_a_fixed_pool(serve, strategy, accept):
    _only(strategy, "prethreaded")
    server = serve("echo", "--threads", "3", "--prethreaded-accept", accept, strategy="prethreaded")
    assert wait_for(lambda: thread_count(server.pid) == 4)
    payloads = [os.urandom(100_000) for _ in range(12)]

    def exchange(payload: bytes) -> bytes:
        with server.connect(timeout=60) as sock:
            return echo_exchange(sock, payload)

    with ThreadPoolExecutor(max_workers=12) as pool:
        assert list(pool.map(exchange, payloads, timeout=60)) == payloads
    assert thread_count(server.pid) == 4


def test_serving_outside_the_main_thread_and_shutdown(strategy):
    """In-process: serve_forever in a thread (no signal handlers there), then shutdown() from here."""
    _only(strategy, *BOUNDED)
    name = strategy
    children_before = proc_children(os.getpid())
    instance = create_strategy(name, StrategyOptions(max_connections=2, threads=2))
    threads_before = set(threading.enumerate())
    with EchoServer("127.0.0.1:0", instance) as server:
        runner = threading.Thread(target=server.serve_forever)
        runner.start()
        try:
            for _ in range(5):
                with socket.create_connection((server.address.host, server.address.port), timeout=10) as sock:
                    assert echo_exchange(sock, b"hello") == b"hello"
            # Without SIGCHLD (not the main thread), forking reaps on a timer.
            assert wait_for(lambda: not proc_children(os.getpid()) - children_before, timeout=2)
        finally:
            server.shutdown()
            runner.join(30)
    assert not runner.is_alive()
    assert not any(thread.is_alive() for thread in set(threading.enumerate()) - threads_before)
    assert instance.counts(server)[1] == 0


@pytest.mark.parametrize(("name", "options", "message"), [
    ("prethreaded", StrategyOptions(prethreaded_accept="nope"), "accept mode"),
    ("prethreaded", StrategyOptions(threads=0), "at least 1 thread"),
    ("threading", StrategyOptions(max_connections=0), "at least 1"),
])
def test_bad_options_are_clear_errors(name, options, message):
    with pytest.raises(ValueError, match=message):
        create_strategy(name, options)


@pytest.mark.parametrize(("name", "options", "described"), [
    ("forking", StrategyOptions(), "forking"),
    ("threading", StrategyOptions(max_connections=4), "threading(max=4)"),
    ("prethreaded", StrategyOptions(threads=3, prethreaded_accept="handoff"), "prethreaded(3,handoff)"),
])
def test_describe(name, options, described):
    assert create_strategy(name, options).describe() == described
