"""What is particular to the forking, threading and prethreaded strategies: bounds, reaping, threads."""

from __future__ import annotations

import os
import resource
import signal
import socket
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

import pytest

from framework.harness.polling import settled
from framework.strategies import create_strategy
from framework.strategies.base import StrategyOptions
from servers.echo import EchoServer
from tests.support import (
    PeakSampler,
    assert_descriptor_backoff,
    assert_no_accept_spin,
    echo_exchange,
    open_descriptors,
    proc_children,
    process_state,
    recv_all,
    task_children,
    thread_count,
    wait_for,
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


def _about(*names: str) -> list[object]:
    """Parameters for a test about each of *names*, run only when that strategy is selected."""
    return [pytest.param(name, marks=pytest.mark.only_strategies(name), id=name) for name in names]


@pytest.mark.parametrize(("name", "accept"), [
    pytest.param(name, accept, marks=pytest.mark.only_strategies(name), id=f"{name}-{accept}")
    for name, accept in [("forking", "-"), ("threading", "-"), ("prethreaded", "shared"), ("prethreaded", "lock"),
                         ("prethreaded", "handoff")]
])
def test_bound_of_4_serves_20_clients_never_more_than_4_at_once(serve, name, accept):
    extra = ("--prethreaded-accept", accept) if name == "prethreaded" else ()
    server = serve("echo", *BOUNDED[name], *extra, strategy=name)
    with PeakSampler(lambda: _workers(name, server.pid)) as peak, ThreadPoolExecutor(max_workers=20) as pool:
        replies = list(pool.map(lambda index: _slow_echo_client(server, index), range(20), timeout=60))
    assert replies == [b"%d" % index for index in range(20)]
    # peak.value == 4 also proves the sampler saw the pool busy (a sample count would only be load-dependent).
    assert peak.value == 4, f"at most 4 workers expected, and the bound reached; saw {peak.value}"


@pytest.mark.only_strategies("forking")
def test_forking_reaps_every_child(serve):
    server = serve("daytime", strategy="forking")
    for _ in range(10):
        with server.connect() as sock:
            assert recv_all(sock).endswith(b"\r\n")
        # Each child is reaped while the server waits for the next client (SIGCHLD wakes it),
        # not at the next accept: with no further client, a zombie would stay past the deadline.
        assert wait_for(lambda: not task_children(server.pid), timeout=60), \
            f"children left: {[(c, process_state(c)) for c in task_children(server.pid)]}"


@pytest.mark.only_strategies("forking")
def test_forking_child_does_not_hold_the_listener(serve):
    server = serve("echo", strategy="forking")
    # A first connection served: the parent's rehearsal (socket pairs and pipes of its own,
    # opened and closed after "listening on") is over, and its descriptors stay put.
    with server.connect() as sock:
        sock.sendall(b"x")
        assert sock.recv(1) == b"x"
    assert wait_for(lambda: not proc_children(server.pid), timeout=60)
    listener_inodes = _descriptor_targets(server.pid)
    with server.connect() as sock:
        sock.sendall(b"x")
        assert sock.recv(1) == b"x"
        (child,) = proc_children(server.pid)
        child_fds = _descriptor_targets(child)
    sockets_of_parent = {link for link in listener_inodes if link.startswith("socket:")}
    assert sockets_of_parent, listener_inodes
    assert not sockets_of_parent & child_fds, "the child kept the parent's listening socket"


@pytest.mark.only_strategies("prethreaded")
@pytest.mark.parametrize("accept", ["shared", "lock", "handoff"])
def test_prethreaded_runs_a_fixed_pool(serve, accept):
    server = serve("echo", "--threads", "3", "--prethreaded-accept", accept, strategy="prethreaded")
    assert wait_for(lambda: thread_count(server.pid) == 4)
    payloads = [os.urandom(100_000) for _ in range(12)]

    def exchange(payload: bytes) -> bytes:
        with server.connect(timeout=60) as sock:
            return echo_exchange(sock, payload)

    with ThreadPoolExecutor(max_workers=12) as pool:
        assert list(pool.map(exchange, payloads, timeout=60)) == payloads
    assert thread_count(server.pid) == 4


#: ``EPOLLEXCLUSIVE`` as ``/proc/PID/fdinfo`` shows an epoll's watched events (hexadecimal).
EPOLLEXCLUSIVE_BIT = 1 << 28


def _epoll_watches(pid: int) -> list[dict[int, int]]:
    """For each epoll descriptor of *pid*: watched descriptor -> event mask, as the kernel lists them."""
    watches = []
    for fd, target in open_descriptors(pid).items():
        if target != "anon_inode:[eventpoll]":
            continue
        try:
            with open(f"/proc/{pid}/fdinfo/{fd}") as info:
                lines = info.read().splitlines()
        except OSError:  # closed meanwhile
            continue
        watched = {}
        for line in lines:
            if line.startswith("tfd:"):
                fields = line.split()
                watched[int(fields[1])] = int(fields[3], 16)
        watches.append(watched)
    return watches


def _accept_syscall() -> str:
    """The number ``/proc/TID/syscall`` shows for a thread blocked in ``accept``: read from one of ours."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        waiting = threading.Thread(target=lambda: _accept_or_none(listener))
        waiting.start()
        try:
            path = f"/proc/self/task/{waiting.native_id}/syscall"
            assert wait_for(lambda: _syscall_of(path) not in (None, "running"), timeout=10)
            number = _syscall_of(path)
        finally:
            listener.shutdown(socket.SHUT_RD)  # ends the accept (EINVAL)
            waiting.join(10)
    assert number is not None
    return number


def _accept_or_none(listener: socket.socket) -> None:
    try:
        listener.accept()[0].close()
    except OSError:
        pass


def _syscall_of(path: str) -> str | None:
    """The first field of a ``/proc/.../syscall`` file: the system call a task waits in, or ``running``."""
    try:
        with open(path) as text:
            return text.read().split()[0]
    except (OSError, IndexError):
        return None


@pytest.mark.only_strategies("prethreaded")
@pytest.mark.parametrize("bind", ["127.0.0.1:0", "unix"])
def test_prethreaded_shared_threads_wait_in_accept_itself_and_the_stop_ends_it(serve, bind, tmp_path):
    accept_number = _accept_syscall()
    address = f"unix:{tmp_path}/echo.sock" if bind == "unix" else bind
    server = serve("echo", "--threads", "3", strategy="prethreaded", bind=address)  # shared: the default mode
    with server.connect() as sock:
        assert echo_exchange(sock, b"x") == b"x"
    # Every pool thread waits in the kernel's accept (which wakes one waiter per connection):
    # no lock, and no descriptor of its own to wait on.  ("listening on" comes before the
    # pool's threads start: wait for all three.)
    def in_accept() -> list[str]:
        return [tid for tid in os.listdir(f"/proc/{server.pid}/task")
                if _syscall_of(f"/proc/{server.pid}/task/{tid}/syscall") == accept_number]

    assert wait_for(lambda: len(in_accept()) == 3, timeout=30), in_accept()
    assert _epoll_watches(server.pid) == []
    # The stop's shutdown of the listener ends every one of those accepts, quietly (a Unix
    # listener still reports SO_ACCEPTCONN after it: the acceptor knows it stopped it).
    server.send_signal(signal.SIGTERM)
    assert server.proc.wait(30) == 0, server.log()
    assert "error" not in server.log().lower() and "Traceback" not in server.log(), server.log()


@pytest.mark.only_strategies("preforked")
def test_threads_of_a_preforked_worker_wait_in_accept_on_the_shared_listener(serve):
    accept_number = _accept_syscall()
    server = serve("echo", "--worker", "threads", "--workers", "1", "--threads", "3", strategy="preforked")
    assert wait_for(lambda: len(proc_children(server.pid)) == 1, timeout=30)
    with server.connect() as sock:
        assert echo_exchange(sock, b"x") == b"x"
    (worker,) = proc_children(server.pid)
    # The master made the shared listener one to wait in accept on (blocking, each wait
    # bounded): every pool thread of the worker waits there, with no epoll of its own.
    assert wait_for(lambda: len(_tasks_in(worker, accept_number)) == 3, timeout=30), _tasks_in(worker, accept_number)
    assert _epoll_watches(worker) == []
    # The worker's own stop leaves the shared listener alone: its threads notice the stop at
    # their wait's timeout, the master forks a successor, and the pool goes on serving.
    os.kill(worker, signal.SIGTERM)
    assert wait_for(lambda: proc_children(server.pid) - {worker} and worker not in proc_children(server.pid),
                    timeout=30), server.log()
    with server.connect() as sock:
        assert echo_exchange(sock, b"after") == b"after"
    server.send_signal(signal.SIGTERM)
    assert server.proc.wait(30) == 0, server.log()
    assert "error" not in server.log().lower() and "Traceback" not in server.log(), server.log()


@pytest.mark.only_strategies("preforked")
@pytest.mark.parametrize("mode, bind", [("shared", "127.0.0.1:0"), ("shared", "unix"), ("reuseport", "127.0.0.1:0")])
def test_preforked_iterative_workers_wait_in_accept_and_each_stop_ends_it(serve, mode, bind, tmp_path):
    accept_number = _accept_syscall()
    address = f"unix:{tmp_path}/echo.sock" if bind == "unix" else bind
    server = serve("echo", "--workers", "2", "--accept", mode, strategy="preforked", bind=address)  # iterative workers
    assert wait_for(lambda: len(proc_children(server.pid)) == 2, timeout=30)
    workers = proc_children(server.pid)
    # Each worker's one thread waits in the kernel's accept, no epoll (Stevens' §30.6 server).
    assert wait_for(lambda: all(_tasks_in(worker, accept_number) == [str(worker)] for worker in workers),
                    timeout=30), {worker: _tasks_in(worker, accept_number) for worker in workers}
    assert all(_epoll_watches(worker) == [] for worker in workers)
    payloads = [b"%d" % number for number in range(20)]
    for payload in payloads:
        with server.connect() as sock:
            assert echo_exchange(sock, payload) == payload
    # The whole server's stop shuts the listener (every lane's) down: every wait ends at once, quietly
    # (a Unix listener still reports SO_ACCEPTCONN after it: a worker counts EINVAL as the stop).
    server.send_signal(signal.SIGTERM)
    assert server.proc.wait(30) == 0, server.log()
    assert "error" not in server.log().lower() and "Traceback" not in server.log(), server.log()


def _tasks_in(pid: int, syscall: str) -> list[str]:
    """The threads of *pid* that wait in system call number *syscall* now."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    return [tid for tid in tids if _syscall_of(f"/proc/{pid}/task/{tid}/syscall") == syscall]


@pytest.mark.only_strategies("preforked")
def test_threads_of_a_reuseport_worker_wait_in_accept_on_their_lane(serve):
    accept_number = _accept_syscall()
    server = serve("echo", "--worker", "threads", "--workers", "2", "--threads", "3", "--accept", "reuseport",
                   strategy="preforked")
    assert wait_for(lambda: len(proc_children(server.pid)) == 2, timeout=30)
    with server.connect() as sock:
        assert echo_exchange(sock, b"x") == b"x"
    workers = proc_children(server.pid)
    listening = _listening_inodes()
    # Each worker holds one listener, its lane's (lane 0's is the server's own), and its three
    # threads wait in accept on it, with no epoll: the kernel wakes one waiter per connection.
    lanes = set()
    for worker in workers:
        (lane,) = [target for target in open_descriptors(worker).values()
                   if target.startswith("socket:[") and int(target[8:-1]) in listening]
        lanes.add(lane)
        assert wait_for(lambda pid=worker: len(_tasks_in(pid, accept_number)) == 3, timeout=30), \
            _tasks_in(worker, accept_number)
        assert _epoll_watches(worker) == []
    assert len(lanes) == 2
    # A worker's own stop leaves its lane to a successor, which waits there in turn.
    victim = min(workers)
    os.kill(victim, signal.SIGTERM)
    assert wait_for(lambda: len(proc_children(server.pid) - {victim}) == 2 and victim not in proc_children(server.pid),
                    timeout=30), server.log()
    for number in range(8):  # the 4-tuple's hash spreads these over both lanes
        with server.connect() as sock:
            assert echo_exchange(sock, b"%d" % number) == b"%d" % number
    server.send_signal(signal.SIGTERM)
    assert server.proc.wait(30) == 0, server.log()
    assert "error" not in server.log().lower() and "Traceback" not in server.log(), server.log()


@pytest.mark.only_strategies("preforked")
def test_threads_of_a_lock_worker_each_wait_exclusively_on_the_listener(serve):
    # A lock worker must not sleep in accept holding the lock: its threads wait in an epoll each.
    server = serve("echo", "--worker", "threads", "--workers", "1", "--threads", "3", "--accept", "lock",
                   strategy="preforked")
    assert wait_for(lambda: len(proc_children(server.pid)) == 1, timeout=30)
    with server.connect() as sock:  # served: every thread's wait was made before the first thread started
        assert echo_exchange(sock, b"x") == b"x"
    (worker,) = proc_children(server.pid)
    listening = _listening_inodes()
    listener_fd = next(fd for fd, target in open_descriptors(worker).items()
                       if target.startswith("socket:[") and int(target[8:-1]) in listening)
    # Each wait is an epoll holding the listener exclusively (the kernel wakes one waiting
    # thread per connection) beside the stop pipe.
    waits = [watched for watched in _epoll_watches(worker) if listener_fd in watched]
    assert len(waits) == 3, _epoll_watches(worker)
    for watched in waits:
        assert watched[listener_fd] & EPOLLEXCLUSIVE_BIT, watched
        assert len(watched) == 2 and any(not mask & EPOLLEXCLUSIVE_BIT for mask in watched.values()), watched


@pytest.mark.only_strategies("prethreaded")
def test_prethreaded_lock_holds_no_wait_descriptor(serve):
    server = serve("echo", "--threads", "3", "--prethreaded-accept", "lock", strategy="prethreaded")
    with server.connect() as sock:
        assert echo_exchange(sock, b"x") == b"x"
    assert _epoll_watches(server.pid) == []


def _listening_inodes() -> set[int]:
    """Inodes of the TCP sockets in LISTEN state, as ``/proc/net/tcp`` and ``tcp6`` list them."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as rows:
            for row in rows.read().splitlines()[1:]:
                fields = row.split()
                if fields[3] == "0A":  # TCP_LISTEN
                    inodes.add(int(fields[9]))
    return inodes


@pytest.mark.parametrize("name", _about(*BOUNDED))
def test_serving_outside_the_main_thread_and_shutdown(name):
    """In-process: serve_forever in a thread (no signal handlers there), then shutdown() from here."""
    children_before = proc_children(os.getpid())
    instance = create_strategy(name, StrategyOptions(max_connections=2, threads=2))
    threads_before = set(threading.enumerate())
    # Forking here forks a process with threads: the framework answers Python 3.12+'s
    # warning at its fork (framework.processes), so none reaches the program.
    with EchoServer("127.0.0.1:0", instance) as server, warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
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
    assert not [w for w in warned if "fork()" in str(w.message)]
    assert not runner.is_alive()
    assert not any(thread.is_alive() for thread in set(threading.enumerate()) - threads_before)
    assert server.counts()[1] == 0


@pytest.mark.parametrize(("name", "options", "message"), [
    ("prethreaded", StrategyOptions(prethreaded_accept="nope"), "accept mode"),
    ("prethreaded", StrategyOptions(threads=0), "--threads must be between 1 and"),
    ("prethreaded", StrategyOptions(threads=100000), "--threads must be between 1 and"),
    ("preforked", StrategyOptions(workers=100000), "--workers must be between 1 and"),
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


@pytest.mark.only_strategies("forking")
def test_forking_child_killed_mid_connection_is_reaped_and_service_goes_on(serve):
    server = serve("echo", strategy="forking")
    with server.connect() as sock:
        sock.sendall(b"x")
        assert sock.recv(1) == b"x"
        (child,) = task_children(server.pid)
        os.kill(child, signal.SIGKILL)
        assert wait_for(lambda: not task_children(server.pid), timeout=5)
        try:
            assert sock.recv(1) == b""
        except ConnectionResetError:
            pass
    assert wait_for(lambda: f"child {child} serving a connection exited with status -9" in server.log())
    with server.connect() as sock:
        assert echo_exchange(sock, b"still serving") == b"still serving"


@pytest.mark.only_strategies("prethreaded")
def test_prethreaded_handoff_stops_gracefully_then_cuts_at_the_deadline(serve):
    server = serve("echo", "--prethreaded-accept", "handoff", "--graceful-timeout", "1", strategy="prethreaded")
    payload = os.urandom(1 << 20)
    with server.connect(timeout=30) as idle, server.connect(timeout=30) as busy:
        idle.sendall(b"idle")
        assert recv_all(idle, limit=4) == b"idle"
        busy.sendall(payload[:1000])
        server.send_signal(signal.SIGTERM)
        assert echo_exchange(busy, payload[1000:]) == payload  # an in-flight transfer finishes
        started = time.monotonic()
        assert server.proc.wait(30) == 0, server.log()
        assert time.monotonic() - started >= 0.3  # the idle connection held the stop until the deadline
        try:
            assert idle.recv(1) == b""
        except ConnectionResetError:
            pass


@pytest.mark.only_strategies("forking")
def test_forking_child_finishes_its_connection_on_sigterm_within_the_graceful_timeout(serve):
    server = serve("echo", "--graceful-timeout", "2", strategy="forking")
    payload = os.urandom(256 << 10)
    with server.connect(timeout=30) as sock:
        sock.sendall(payload[:1000])
        assert recv_all(sock, limit=1000) == payload[:1000]
        (child,) = task_children(server.pid)
        os.kill(child, signal.SIGTERM)  # as a terminal's Ctrl-C or systemd's control-group stop would
        assert echo_exchange(sock, payload[1000:]) == payload[1000:]  # the transfer still completes
    # That child exits and is reaped on its own schedule: wait, so the next one is the only child.
    assert wait_for(lambda: not task_children(server.pid), timeout=10)
    with server.connect(timeout=30) as idle:
        idle.sendall(b"x")
        assert idle.recv(1) == b"x"
        (child,) = task_children(server.pid)
        os.kill(child, signal.SIGTERM)
        # Echo is always between messages: the child closes the idle connection once it is quiet.
        assert recv_all(idle) == b""
    assert wait_for(lambda: not task_children(server.pid), timeout=5)
    assert "exited with status" not in server.log()
    assert server.proc.poll() is None  # the parent was not asked to stop


@pytest.mark.parametrize(("name", "extra", "room"), [
    # The forking parent closes its copy of each connection at once: it runs out only with no room at all.
    pytest.param("forking", (), 0, marks=pytest.mark.only_strategies("forking"), id="forking"),
    pytest.param("threading", (), 2, marks=pytest.mark.only_strategies("threading"), id="threading"),
    pytest.param("prethreaded", ("--prethreaded-accept", "lock"), 2,
                 marks=pytest.mark.only_strategies("prethreaded"), id="prethreaded-lock"),
    pytest.param("prethreaded", ("--prethreaded-accept", "handoff"), 2,
                 marks=pytest.mark.only_strategies("prethreaded"), id="prethreaded-handoff"),
])
def test_out_of_descriptors_backs_off_without_spinning_and_recovers(serve, name, extra, room):
    assert_descriptor_backoff(serve("echo", *extra, strategy=name), room=room)


def _descriptor_targets(pid: int) -> set[str]:
    """What *pid*'s open descriptors point at (``socket:[INODE]``, paths...)."""
    return {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}


@pytest.mark.only_strategies("prethreaded")
def test_prethreaded_shared_out_of_descriptors_backs_off_without_spinning_and_recovers(serve):
    """``shared`` threads wait in ``accept`` itself, and the kernel gives each its descriptor before it waits.

    So a limit lowered under a waiting pool bites only when a thread comes back
    to ``accept`` after a connection: with no descriptor free under the limit it
    backs off instead of retrying in a loop, and serves again once the limit is back.
    """
    server = serve("echo", "--threads", "3", strategy="prethreaded")
    with server.connect() as sock:
        assert echo_exchange(sock, b"warm") == b"warm"
    highest = settled(lambda: max(int(fd) for fd in os.listdir(f"/proc/{server.pid}/fd")))
    soft, hard = resource.prlimit(server.pid, resource.RLIMIT_NOFILE)
    try:
        resource.prlimit(server.pid, resource.RLIMIT_NOFILE, (highest + 1, hard))
        for index in range(3):  # each waiting thread takes one, with the descriptor it holds already
            with server.connect(timeout=30) as sock:
                assert echo_exchange(sock, b"%d" % index) == b"%d" % index
        assert wait_for(lambda: "backing off" in server.log(), timeout=30), server.log()
        assert_no_accept_spin(server)
        waiting = server.connect()  # kept in the backlog meanwhile
        waiting.sendall(b"x")
    finally:
        resource.prlimit(server.pid, resource.RLIMIT_NOFILE, (soft, hard))
    with waiting:
        waiting.settimeout(30)
        assert waiting.recv(1) == b"x"
