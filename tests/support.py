"""Test helpers: run servers as real processes, talk to them, and prove nothing leaked.

Nothing here mocks the kernel: servers are real processes on real sockets,
and the leak checks read /proc.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn

from framework.address import connect as connect_to

ROOT = Path(__file__).resolve().parent.parent

PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> None:
    """Make this process adopt orphaned descendants, so a leaked grandchild is seen (and reaped)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


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


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a server process: this checkout first on the import path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    env.update(extra)
    return env


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


def proc_children(pid: int) -> set[int]:
    """Direct children of *pid*, from /proc (zombies included)."""
    children = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # The command name may contain spaces and parentheses: split after the last ')'.
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[1]) == pid:
            children.add(int(entry))
    return children


def descendants(pid: int) -> set[int]:
    """Every descendant of *pid* now alive or zombie."""
    found: set[int] = set()
    frontier = [pid]
    while frontier:
        for child in proc_children(frontier.pop()):
            if child not in found:
                found.add(child)
                frontier.append(child)
    return found


def process_state(pid: int) -> str | None:
    """The one-letter state of *pid* (``Z`` for a zombie), or None when it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2]


def fd_count(pid: int) -> int:
    """How many descriptors *pid* has open."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def zombies_of(pid: int) -> set[int]:
    """Children of *pid* that are zombies (exited, not reaped)."""
    return {child for child in proc_children(pid) if process_state(child) == "Z"}


def reap_adopted(timeout: float = 5.0, keep: set[int] = frozenset()) -> set[int]:  # type: ignore[assignment]
    """Wait for and reap orphans adopted by this (subreaper) process; return those that outlived *timeout*."""
    deadline = time.monotonic() + timeout
    while True:
        adopted = proc_children(os.getpid()) - keep
        alive = set()
        for pid in adopted:
            if process_state(pid) == "Z":
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)
            else:
                alive.add(pid)
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.05)


class ServerProcess:
    """A ``forkthread serve`` process: started, waited for ``listening on``, stopped, checked."""

    def __init__(self, server: str, *args: str, strategy: str | None = "iterative", bind: str = "127.0.0.1:0",
                 env: dict[str, str] | None = None, start_timeout: float = 20.0,
                 program: list[str] | None = None) -> None:
        # *program* replaces ``python -m framework serve SERVER`` (a user's own serve_main script).
        launcher = program or [sys.executable, "-m", "framework", "serve", server]
        # strategy=None: the server's own default strategy.
        chosen = [] if strategy is None else ["--strategy", strategy]
        self.argv = [*launcher, "--bind", bind, *chosen, *args]
        self.log_file = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (closed in close())
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=self.log_file, text=True,
                                     env=env or child_env(), stdin=subprocess.DEVNULL)
        self.address = self._wait_listening(start_timeout)
        self.pid = self.proc.pid
        #: The exit status a test expects if the server ends before teardown
        #: (a test that SIGKILLs the master sets -SIGKILL); anything else fails the test.
        self.expected_status = 0

    def _wait_listening(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self.proc.stdout, selectors.EVENT_READ)
            if not selector.select(timeout):
                self.kill()
                raise AssertionError(f"no 'listening on' line within {timeout}s: {self.log()}")
        line = self.proc.stdout.readline()
        if not line.startswith("listening on "):
            self.proc.wait(10)
            raise AssertionError(f"unexpected first line {line!r}; log:\n{self.log()}")
        return line.strip().removeprefix("listening on ")

    def connect(self, timeout: float | None = 10.0) -> socket.socket:
        """A new client connection to the server."""
        return connect_to(self.address, timeout)

    def log(self) -> str:
        """What the server wrote to standard error so far."""
        self.log_file.flush()
        self.log_file.seek(0)
        return self.log_file.read()

    def tree(self) -> set[int]:
        """The server's descendant processes (workers, per-connection children)."""
        return descendants(self.pid)

    def send_signal(self, signum: int) -> None:
        """Send *signum* to the server process."""
        self.proc.send_signal(signum)

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Send *signum*, wait for the exit, and return the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"server did not stop within {timeout}s after signal {signum}:\n{self.log()}"
            ) from None

    def kill(self) -> None:
        """Kill the server and every descendant (test clean-up after a failure)."""
        for pid in self.tree() | {self.proc.pid}:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            self.proc.wait(10)

    def close(self) -> None:
        """Release the pipes and the log file."""
        if self.proc.stdout:
            self.proc.stdout.close()
        self.log_file.close()


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


def wait_for(predicate, timeout: float = 5.0, interval: float = 0.02) -> bool:  # type: ignore[no-untyped-def]
    """Poll *predicate* until it is true or *timeout* passes; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return bool(value)
        time.sleep(interval)


@contextlib.contextmanager
def open_fds_unchanged() -> Iterator[None]:
    """Assert that the block leaves this process's descriptor count as it found it."""
    before = set(os.listdir("/proc/self/fd"))
    yield
    for _ in range(50):
        after = set(os.listdir("/proc/self/fd"))
        if len(after) <= len(before):
            return
        time.sleep(0.02)
    leaked = {fd: os.readlink(f"/proc/self/fd/{fd}") for fd in after - before if os.path.exists(f"/proc/self/fd/{fd}")}
    raise AssertionError(f"descriptors leaked: {leaked}")


def thread_count(pid: int) -> int:
    """How many threads *pid* runs now (its main thread included)."""
    return len(os.listdir(f"/proc/{pid}/task"))


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


def task_children(pid: int) -> set[int]:
    """Direct children of *pid* from /proc/PID/task/*/children: much cheaper than scanning /proc.

    Zombies are included.  Falls back to :func:`proc_children` on kernels without the file.
    """
    children: set[int] = set()
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return children
    for task in tasks:
        try:
            children.update(int(child) for child in Path(f"/proc/{pid}/task/{task}/children").read_text().split())
        except FileNotFoundError:
            if not os.path.exists(f"/proc/{pid}/task/{task}"):
                continue  # the thread ended meanwhile
            return proc_children(pid)
        except OSError:
            continue
    return children


def process_tree(pid: int) -> set[int]:
    """*pid* and all its descendants, via :func:`task_children`."""
    tree = {pid}
    frontier = [pid]
    while frontier:
        for child in task_children(frontier.pop()) - tree:
            tree.add(child)
            frontier.append(child)
    return tree


def tree_total(pid: int, measure: Callable[[int], float]) -> float:
    """``measure(member)`` summed over *pid* and all its descendants (members that end meanwhile count 0)."""
    total = 0.0
    for member in process_tree(pid):
        with contextlib.suppress(OSError):  # it ended meanwhile
            total += measure(member)
    return total


def tree_fd_count(pid: int) -> int:
    """Descriptors open in *pid* and all its descendants together (workers, per-connection children)."""
    return int(tree_total(pid, fd_count))


def tree_zombies(pid: int) -> set[int]:
    """Zombies anywhere in *pid*'s process tree (exited, not reaped by their parent)."""
    return {member for member in process_tree(pid) if process_state(member) == "Z"}


def settled(measure, interval: float = 0.1, timeout: float = 3.0) -> int:  # type: ignore[no-untyped-def]
    """``measure()`` once it reads the same twice *interval* apart (or when *timeout* passes)."""
    deadline = time.monotonic() + timeout
    value = measure()
    while time.monotonic() < deadline:
        time.sleep(interval)
        previous, value = value, measure()
        if value == previous:
            break
    return int(value)


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


def threads_not_blocking(pid: int, signals: frozenset[int]) -> dict[str, set[int]]:
    """Of *pid* and its descendants, every thread but a process's main one that leaves one of *signals* unblocked.

    Read from ``SigBlk`` in ``/proc/PID/task/TID/status``; returns
    ``{"pid/tid": {signal numbers it does not block}}`` (empty when all block them).
    """
    unblocked: dict[str, set[int]] = {}
    for process in {pid} | descendants(pid):
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{process}/task"):
                if int(tid) == process:
                    continue  # the main thread: where the signals must go
                with contextlib.suppress(OSError):
                    status = Path(f"/proc/{process}/task/{tid}/status").read_text()
                    mask = int(next(line for line in status.splitlines() if line.startswith("SigBlk:")).split()[1], 16)
                    if missing := {signum for signum in signals if not mask >> (signum - 1) & 1}:
                        unblocked[f"{process}/{tid}"] = missing
    return unblocked


def recv_or_reset(sock: socket.socket) -> bytes:
    """One byte, or b"" when the server closed or reset the connection."""
    try:
        return sock.recv(1)
    except ConnectionResetError:
        return b""


def tree_threads(pid: int) -> int:
    """Threads in *pid* and all its descendants together."""
    return int(tree_total(pid, thread_count))


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
def serving_in_thread(server) -> Iterator[threading.Thread]:  # type: ignore[no-untyped-def]
    """Run ``server.serve_forever()`` in a thread (no signal handlers there); shutdown() and join on exit."""
    runner = threading.Thread(target=server.serve_forever)
    runner.start()
    try:
        yield runner
    finally:
        server.shutdown()
        runner.join(30)
