"""Test helpers: talk to servers, and prove nothing leaked.

The process runner, the subreaper and the /proc leak checks live in the
package (:mod:`framework.harness`), shared with the pytest plugin the
project ships; they are re-exported here under the names the tests use.
Nothing here mocks the kernel: servers are real processes on real sockets,
and the leak checks read /proc.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

from framework.harness.polling import settled, wait_for
from framework.harness.process import ServerProcess, ServerStartError, child_env
from framework.harness.proctree import (
    command_line,
    descendants,
    fd_count,
    open_descriptors,
    open_fds_unchanged,
    proc_children,
    process_state,
    process_tree,
    task_children,
    thread_count,
    thread_states,
    threads_not_blocking,
    tree_fd_count,
    tree_threads,
    tree_total,
    tree_zombies,
    zombies_of,
)
from framework.harness.reaper import become_subreaper, is_subreaper, reap_adopted

__all__ = [  # the harness's names, re-exported for the tests
    "ServerProcess", "ServerStartError", "become_subreaper", "child_env", "command_line", "descendants",
    "fd_count", "is_subreaper", "open_descriptors", "open_fds_unchanged", "proc_children", "process_state",
    "process_tree", "reap_adopted", "settled", "task_children", "thread_count", "thread_states", "threads_not_blocking",
    "tree_fd_count", "tree_threads", "tree_total", "tree_zombies", "wait_for", "zombies_of",
]

ROOT = Path(__file__).resolve().parent.parent


def in_ci() -> bool:
    """True under CI (``CI=true``, as GitHub Actions, GitLab and .ci/run set it)."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def missing_requirement(message: str) -> NoReturn:
    """Skip the test for a missing program or package, except under CI, which must have it: fail there."""
    import pytest  # only tests call this; support's other helpers serve scripts too

    if in_ci():
        pytest.fail(f"{message}; under CI a missing requirement is a failure, not a skip (.ci/run installs it)",
                    pytrace=False)
    pytest.skip(message)


#: How coverage.py tells a subprocess to measure itself (``patch = subprocess`` in setup.cfg).
COVERAGE_VARIABLES = ("COVERAGE_PROCESS_CONFIG", "COVERAGE_PROCESS_START")


def uninstrumented_env(**extra: str) -> dict[str, str]:
    """:func:`child_env` without coverage's variables: a server that runs untraced even under ``coverage run``.

    For the tests that measure a server's memory: coverage.py keeps a tracer
    (and its data) for every thread it ever saw and grows with every line it
    records, so a traced server's memory measures coverage, not the server.
    """
    env = child_env(**extra)
    for name in COVERAGE_VARIABLES:
        env.pop(name, None)
    return env


def recv_all(sock: socket.socket, limit: int | None = None) -> bytes:
    """Read until end-of-file (or *limit* bytes)."""
    chunks = []
    total = 0
    while limit is None or total < limit:
        data = sock.recv(65536 if limit is None else min(65536, limit - total))
        if not data:
            break
        chunks.append(data)
        total += len(data)
    return b"".join(chunks)


def echo_exchange(sock: socket.socket, payload: bytes, chunk: int = 65536) -> bytes:
    """Send *payload* (then half-close) while a thread reads concurrently; return what came back."""
    received: list[bytes] = []
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            received.append(recv_all(sock))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        view = memoryview(payload)
        for start in range(0, len(payload), chunk):
            sock.sendall(view[start:start + chunk])
        sock.shutdown(socket.SHUT_WR)
    finally:
        thread.join(60)
    if errors:
        raise errors[0]
    return received[0] if received else b""


class PeakSampler:
    """Samples ``measure()`` in a thread every *interval* seconds and keeps the highest value seen.

    Used to prove a bound: ``with PeakSampler(lambda: len(proc_children(pid))) as peak: ...``
    then ``peak.value``.
    """

    def __init__(self, measure, interval: float = 0.005) -> None:  # type: ignore[no-untyped-def]
        self._measure = measure
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="peak-sampler")
        self.value = 0
        self.samples = 0

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError):
                self.value = max(self.value, self._measure())
                self.samples += 1
            self._stop.wait(self._interval)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(10)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of *pid* so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


#: Failed accepts one thread may make in :data:`RETRY_WINDOW` seconds while it backs off: the
#: backoff doubles from 10 ms to 1 s (framework/accepting.py), so about 8 in the first second;
#: a loop polling a listener it cannot accept from makes thousands, however loaded the machine.
RETRIES_PER_THREAD = 16
RETRY_WINDOW = 1.0


def failed_accepts(pids: set[int], seconds: float = RETRY_WINDOW) -> int:
    """How many ``accept`` calls failed in *pids* (their threads and children too) during *seconds*.

    Traced with strace, from the kernel's side: a count of events, not a
    time, so a slow machine can only make it smaller.
    """
    if shutil.which("strace") is None:
        missing_requirement("needs strace on PATH")
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "strace.out")
        command = ["strace", "-f", "-qq", "-e", "trace=accept,accept4", "-e", "status=failed", "-o", out]
        for pid in sorted(pids):
            command += ["-p", str(pid)]
        tracer = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE)
        try:
            time.sleep(seconds)
        finally:
            tracer.send_signal(signal.SIGINT)  # detaches from every traced process
            _, errors = tracer.communicate(timeout=30)
        assert tracer.returncode in (0, -signal.SIGINT, 128 + signal.SIGINT), errors
        with open(out) as trace:
            return sum(1 for line in trace if "accept" in line and "= -1 " in line)


def recv_or_reset(sock: socket.socket) -> bytes:
    """One byte, or b"" when the server closed or reset the connection."""
    try:
        return sock.recv(1)
    except ConnectionResetError:
        return b""


def assert_no_accept_spin(server: ServerProcess) -> int:
    """Prove *server*, out of descriptors, backs off instead of retrying accept in a loop; return the count."""
    tree = process_tree(server.pid)
    failed = failed_accepts(tree)
    bound = RETRIES_PER_THREAD * tree_threads(server.pid)
    assert failed <= bound, f"{failed} failed accepts in {RETRY_WINDOW} s (bound {bound}): a retry loop\n{server.log()}"
    return failed


def assert_descriptor_backoff(server: ServerProcess, room: int, clients: int = 6) -> None:
    """Starve the echo *server* of descriptors and prove it copes.

    Its limit is lowered to leave room for *room* more connections; of
    *clients* echo clients, the first *room* are served, the server logs that
    it backs off, and does not spin meanwhile; once the limit is restored,
    every other client is served too.
    """
    with server.connect() as sock:
        assert echo_exchange(sock, b"warm") == b"warm"
    highest = settled(lambda: max(int(fd) for fd in os.listdir(f"/proc/{server.pid}/fd")))
    soft, hard = resource.prlimit(server.pid, resource.RLIMIT_NOFILE)
    socks: list[socket.socket] = []
    try:
        resource.prlimit(server.pid, resource.RLIMIT_NOFILE, (highest + 1 + room, hard))
        socks = [server.connect() for _ in range(clients)]
        for sock in socks:
            sock.sendall(b"x")
        for sock in socks[:room]:
            assert sock.recv(1) == b"x"
        assert wait_for(lambda: "backing off" in server.log(), timeout=30), server.log()
        assert_no_accept_spin(server)
    finally:
        resource.prlimit(server.pid, resource.RLIMIT_NOFILE, (soft, hard))
        for sock in socks[:room]:
            sock.close()
    for sock in socks[room:]:
        sock.settimeout(10)
        assert sock.recv(1) == b"x"
        sock.close()


@contextlib.contextmanager
def module_server(server: str, *args: str, **kwargs: object) -> Iterator[ServerProcess]:
    """A ``forkthread serve`` process for a whole module's tests: stopped at the end, exit 0, nothing left."""
    process = ServerProcess(server, *args, **kwargs)  # type: ignore[arg-type]
    try:
        yield process
    finally:
        try:
            status = process.stop(signal.SIGTERM)
            assert status == 0, process.log()
            assert not reap_adopted(), "processes outlived the server"
        finally:
            process.close()


@contextlib.contextmanager
def serving_in_thread(server) -> Iterator[threading.Thread]:  # type: ignore[no-untyped-def]
    """Run ``server.serve_forever()`` in a thread (no signal handlers there); shutdown() and join on exit."""
    runner = threading.Thread(target=server.serve_forever)
    runner.start()
    try:
        yield runner
    finally:
        server.shutdown()
        runner.join(30)


#: Strategies whose workers start after "listening on" (processes forked, sub-interpreters made).
POOLS = ("preforked", "interpreters")


def pool_ready(server: ServerProcess, strategy: str, workers: int | None = None) -> None:
    """Wait until a pool has all its workers up ("listening on" comes before they are)."""
    if strategy in POOLS:
        from framework.strategies.base import StrategyOptions

        wanted = workers or StrategyOptions().pool_size()  # the default --workers, as the server computes it
        assert wait_for(lambda: server.log().count(") ready") >= wanted, timeout=30), server.log()
