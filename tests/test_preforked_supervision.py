"""Supervision of the pre-forked pool: replacing, resizing, reloading, recycling and stopping workers."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from framework.strategies import StrategyOptions, create_strategy
from servers.echo import EchoServer
from tests.support import (
    child_env,
    echo_exchange,
    proc_children,
    process_state,
    reap_adopted,
    recv_all,
    serving_in_thread,
    task_children,
    wait_for,
)

pytestmark = pytest.mark.only_strategies("preforked")

READY = re.compile(r"worker \d+ \(pid (\d+)\) ready")


def live_workers(server) -> set[int]:
    """The master's children that are alive and have said "ready"."""
    ready = {int(pid) for pid in READY.findall(server.log())}
    return {pid for pid in proc_children(server.pid) if pid in ready and process_state(pid) not in (None, "Z")}


def wait_workers(server, count: int, timeout: float = 10.0) -> set[int]:
    assert wait_for(lambda: len(live_workers(server)) == count and len(proc_children(server.pid)) == count,
                    timeout=timeout), (live_workers(server), server.log())
    return live_workers(server)


def echo_ok(server, payload: bytes = b"ping") -> bool:
    with server.connect() as sock:
        return echo_exchange(sock, payload) == payload


def start_pool(serve, *args: str, workers: int = 2, server: str = "echo"):
    process = serve(server, "--workers", str(workers), *args, strategy="preforked")
    wait_workers(process, workers)
    return process


def test_killed_worker_is_replaced(serve):
    server = start_pool(serve, workers=2)
    before = live_workers(server)
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    # The event, not its speed: a new worker appears (a deadline only a hang misses).
    assert wait_for(lambda: task_children(server.pid) - before, timeout=60), server.log()
    after = wait_workers(server, 2)
    assert victim not in after and len(after - before) == 1
    assert "died unexpectedly (killed by SIGKILL)" in server.log()
    assert all(echo_ok(server) for _ in range(5))


@pytest.mark.parametrize("accept", ["shared", "reuseport", "passfd"])
def test_ttin_adds_and_ttou_removes_workers(serve, accept):
    server = start_pool(serve, "--accept", accept, workers=2)
    server.send_signal(signal.SIGTTIN)
    wait_workers(server, 3)
    for _ in range(3):  # the last worker stays
        server.send_signal(signal.SIGTTOU)
        time.sleep(0.05)
    wait_workers(server, 1)
    assert "keeping the last worker" in server.log()
    # reuseport: a closed lane must leave no listener behind that nobody accepts on
    # (a client hashed to it would hang until the timeout).
    assert all(echo_ok(server, b"after ttou %d" % index) for index in range(20))


def continuous_clients(server, seconds: float, threads: int = 4, limit: int = 2000):
    """Clients connecting back to back for *seconds*; returns (successes, failures) when joined."""
    results = {"ok": 0, "failed": []}
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client(index: int) -> None:
        for number in range(limit):
            if time.monotonic() >= deadline:
                return
            payload = f"{index}:{number}".encode()
            try:
                with server.connect(timeout=10) as sock:
                    good = echo_exchange(sock, payload) == payload
                error = None if good else "wrong echo"
            except OSError as exc:
                error = repr(exc)
            with lock:
                if error:
                    results["failed"].append(error)
                else:
                    results["ok"] += 1

    workers = [threading.Thread(target=client, args=(index,)) for index in range(threads)]
    for thread in workers:
        thread.start()
    return workers, results


@pytest.mark.parametrize(("accept", "worker"), [
    ("shared", "iterative"), ("lock", "iterative"), ("passfd", "iterative"), ("reuseport", "iterative"),
    *(pytest.param(accept, worker, marks=pytest.mark.slow) for accept, worker in [
        ("shared", "threads"), ("passfd", "threads"), ("shared", "poll"), ("passfd", "poll"), ("reuseport", "poll"),
    ]),
])
def test_sighup_under_load_replaces_every_worker_without_failures(serve, accept, worker):
    server = start_pool(serve, "--accept", accept, "--worker", worker, "--threads", "2", workers=2)
    old = live_workers(server)
    clients, results = continuous_clients(server, seconds=2.0)
    try:
        time.sleep(0.5)
        server.send_signal(signal.SIGHUP)
    finally:
        for thread in clients:
            thread.join(30)
    new = wait_workers(server, 2)
    assert not results["failed"], (results["failed"][:5], server.log())
    assert results["ok"] > 10
    assert not old & new
    assert "SIGHUP: replacing all 2 workers" in server.log()


BOOT_FAILURE_DRIVER = """
import sys
import servers
from framework.cli import main
from servers.echo import EchoServer

class BrokenAtBoot(EchoServer):
    name = "broken"
    def worker_init(self):
        raise RuntimeError("cannot open the per-worker database")

servers.SERVERS["broken"] = "__main__:BrokenAtBoot"
sys.exit(main(["serve", "broken", "--bind", "127.0.0.1:0", "--strategy", "preforked", "--workers", "3"]))
"""


def test_boot_failure_stops_with_a_clear_error_instead_of_a_fork_storm():
    result = subprocess.run([sys.executable, "-c", BOOT_FAILURE_DRIVER], env=child_env(), capture_output=True,
                            text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert result.returncode == 3, result.stderr
    assert "cannot open the per-worker database" in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("forkthread: worker ") and "failed to boot" in last, last
    # Three workers at most were ever forked: no respawn loop.
    assert len(re.findall(r"booting worker", result.stderr)) <= 3, result.stderr
    assert not reap_adopted()


CRASH_DRIVER = """
import os, sys
import servers
from framework.cli import main
from framework.protocol import Protocol
from servers.echo import EchoServer

class Crash(Protocol):
    def data_received(self, data):
        if data == b"crash":
            os._exit(70)   # the whole worker dies, not just the connection
        self.transport.write(data)

class CrashingEcho(EchoServer):
    name = "crashing"
    protocol = Crash

servers.SERVERS["crashing"] = "__main__:CrashingEcho"
sys.exit(main(["serve", "crashing", "--bind", "127.0.0.1:0", "--strategy", "preforked", "--workers", "1"]))
"""


def test_repeated_crashes_are_respawned_with_back_off(serve):
    process = subprocess.Popen([sys.executable, "-c", CRASH_DRIVER], env=child_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        address = process.stdout.readline().split()[-1]
        host, port = address.rsplit(":", 1)
        crashes = 0
        deadline = time.monotonic() + 20
        while crashes < 6 and time.monotonic() < deadline:
            try:
                with socket.create_connection((host, int(port)), timeout=10) as sock:
                    sock.sendall(b"crash")
                    recv_all(sock)
                crashes += 1
            except OSError:
                time.sleep(0.05)
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            assert echo_exchange(sock, b"still here") == b"still here"
    finally:
        process.send_signal(signal.SIGTERM)
        _, errors = process.communicate(timeout=30)
    assert process.returncode == 0, errors
    assert errors.count("died unexpectedly (exit status 70)") >= 6
    assert "next respawn in" in errors


@pytest.mark.parametrize("worker", ["iterative", "poll"])  # a poll worker's loop publishes its own counts
def test_max_requests_with_jitter_recycles_workers(serve, worker):
    server = start_pool(serve, "--max-requests", "3", "--max-requests-jitter", "2", "--worker", worker, workers=1)
    first = live_workers(server)

    def recycled() -> int:
        return server.log().count("reached max-requests")

    # Count recyclings, not connections: a worker that asked for a successor serves on until the
    # successor is ready (nobody waits meanwhile), and how many connections it takes then depends
    # on the machine's load.  The master logs each request asynchronously to our replies.
    for _ in range(200):
        if recycled() >= 2:
            break
        assert echo_ok(server)
    assert wait_for(lambda: recycled() >= 2, timeout=10), server.log()
    limits = [int(count) for count in re.findall(r"worker served (\d+) connections \(max-requests\)", server.log())]
    assert limits and all(3 <= limit <= 3 + 2 for limit in limits), limits  # --max-requests plus its jitter
    assert wait_for(lambda: len(live_workers(server)) == 1 and live_workers(server) != first, timeout=10)


def test_workers_exit_when_the_master_is_killed(serve):
    server = start_pool(serve, workers=3)
    workers = live_workers(server)
    server.expected_status = -signal.SIGKILL
    os.kill(server.pid, signal.SIGKILL)
    server.proc.wait(10)
    # The workers are orphans now, adopted by this (subreaper) process: they must go by themselves.
    assert wait_for(lambda: all(process_state(pid) in (None, "Z") for pid in workers), timeout=10)
    assert not reap_adopted()


@pytest.mark.parametrize("accept", ["shared", "lock", "passfd"])
def test_eight_clients_held_at_once_with_eight_workers(serve, accept):
    # Not reuseport: the kernel hashes connections over the workers' listeners,
    # so two of eight clients may well land on the same iterative worker.
    server = start_pool(serve, "--accept", accept, workers=8)
    socks = [server.connect() for _ in range(8)]
    try:
        for index, sock in enumerate(socks):
            sock.sendall(b"hello %d" % index)
        for index, sock in enumerate(socks):
            assert sock.recv(100) == b"hello %d" % index
    finally:
        for sock in socks:
            sock.close()


@pytest.mark.slow
def test_sigusr1_storm_to_every_process_during_transfers(serve):
    server = start_pool(serve, workers=4)
    processes = {server.pid} | live_workers(server)
    payloads = [os.urandom(1 << 20) for _ in range(4)]
    results: list[bytes | BaseException] = [b""] * 4

    def transfer(index: int) -> None:
        try:
            with server.connect(timeout=30) as sock:
                results[index] = echo_exchange(sock, payloads[index], chunk=4096)
        except BaseException as exc:
            results[index] = exc

    transfers = [threading.Thread(target=transfer, args=(index,)) for index in range(4)]
    for thread in transfers:
        thread.start()
    deadline = time.monotonic() + 3.0
    sent = 0
    while time.monotonic() < deadline and sent < 20000:
        for pid in processes:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGUSR1)
        sent += 1
        time.sleep(0.001)
    for thread in transfers:
        thread.join(60)
    for index, result in enumerate(results):
        assert result == payloads[index], (index, result if isinstance(result, BaseException) else len(result))
    assert all(process_state(pid) not in (None, "Z") for pid in processes), server.log()[-2000:]
    assert "died unexpectedly" not in server.log()


def test_sigterm_lets_an_in_flight_transfer_finish(serve):
    server = start_pool(serve, workers=2)
    payload = os.urandom(8 << 20)
    with server.connect(timeout=30) as sock:
        sock.sendall(payload[:65536])
        got = recv_all(sock, limit=65536)  # echoed: a worker is serving this connection
        server.send_signal(signal.SIGTERM)
        got += echo_exchange(sock, payload[65536:])  # sends and reads concurrently
    assert got == payload
    assert server.proc.wait(30) == 0


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGQUIT])
def test_sigint_and_sigquit_are_a_quick_stop(serve, signum):
    # The open connection would hold a graceful stop for an hour; the stop's deadline is 60 s.
    server = serve("echo", "--workers", "2", "--graceful-timeout", "3600", strategy="preforked")
    wait_workers(server, 2)
    with server.connect() as sock:
        sock.sendall(b"x")
        assert sock.recv(1) == b"x"
        assert server.stop(signum, timeout=60) == 0
        assert recv_all(sock) == b""


def test_a_worker_that_will_not_stop_is_killed_after_the_graceful_timeout(serve):
    server = serve("echo", "--workers", "2", "--graceful-timeout", "1", strategy="preforked")
    stuck = min(wait_workers(server, 2))
    os.kill(stuck, signal.SIGSTOP)
    assert server.stop(signal.SIGTERM) == 0
    assert f"(pid {stuck}) did not stop in time: SIGKILL" in server.log()


def test_reuseport_refuses_unix_address(serve, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "framework", "serve", "echo", "--bind", f"unix:{tmp_path}/s", "--strategy",
         "preforked", "--accept", "reuseport"], env=child_env(), capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == \
        f"forkthread: --accept reuseport needs a TCP address, not unix:{tmp_path}/s"
    assert not os.path.exists(f"{tmp_path}/s")


def test_in_process_pool_served_from_a_thread_and_shut_down():
    """The API without the CLI: no signal handlers in a non-main thread, shutdown() from another."""
    children_before = proc_children(os.getpid())
    strategy = create_strategy("preforked", StrategyOptions(workers=2, accept="passfd"))
    with EchoServer("127.0.0.1:0", strategy) as server, serving_in_thread(server) as runner:
        for index in range(5):
            with socket.create_connection((server.address.host, server.address.port), timeout=10) as sock:
                assert echo_exchange(sock, b"hello %d" % index) == b"hello %d" % index
        assert wait_for(lambda: server.counts()[0] == 5, timeout=5)
    assert not runner.is_alive()
    assert not proc_children(os.getpid()) - children_before


@pytest.mark.parametrize("accept", ["shared", "lock", "reuseport", "passfd"])
def test_sigusr1_is_forwarded_and_every_process_logs_its_status(serve, accept):
    server = start_pool(serve, "--accept", accept, workers=3)
    for index in range(6):
        assert echo_ok(server, b"%d" % index)
    server.send_signal(signal.SIGUSR1)
    assert wait_for(lambda: server.log().count("status: ") == 4, timeout=5), server.log()
    lines = [line for line in server.log().splitlines() if "status: " in line]
    master = [line for line in lines if "strategy=preforked(" in line]
    workers = [line for line in lines if "strategy=preforked-worker(" in line]
    assert len(master) == 1 and len(workers) == 3, lines
    assert "workers=3/3 booting=0 retiring=0" in master[0]
    assert all(f"address={server.address} " in line for line in lines), lines
    # The master's totals are the sum of the workers' own counts (the scoreboard).  A
    # worker may still be closing the last connection (active=1): served is exact.
    served = [int(re.search(r"served=(\d+)", line).group(1)) for line in workers]
    assert "served=6 active=" in master[0] and sum(served) == 6, lines


def test_master_signals_are_handled_as_soon_as_it_says_listening(serve):
    # No wait for the workers: TTIN and HUP arrive while the master may still be forking.
    server = serve("echo", "--workers", "1", strategy="preforked")
    server.send_signal(signal.SIGTTIN)
    server.send_signal(signal.SIGHUP)
    wait_workers(server, 2)
    assert echo_ok(server)
