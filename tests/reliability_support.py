"""Helpers for the reliability suite: what a server process tree uses, read from /proc.

Every figure comes from the kernel's own accounting (``/proc/PID/stat``,
``/proc/PID/status``, ``/proc/PID/fd``), summed over the server and every
descendant (workers, per-connection children), so a leak anywhere in the
tree shows.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import resource
import socket
import threading
import time
from pathlib import Path

from tests.support import (
    ServerProcess,
    cpu_seconds,
    fd_count,
    process_state,
    process_tree,
    thread_count,
    tree_total,
    wait_for,
)

#: Written to stdout by the slow tests, collected into docs/reliability.md.
FIGURE_PREFIX = "RELIABILITY"


def _pss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


@dataclasses.dataclass(frozen=True)
class Usage:
    """What a server's process tree holds at one moment."""

    processes: int
    fds: int
    threads: int
    pss_kib: int

    def __str__(self) -> str:
        return f"processes={self.processes} fds={self.fds} threads={self.threads} pss={self.pss_kib} KiB"


def usage(pid: int) -> Usage:
    """Sum descriptors, threads and memory (proportional set size) over *pid* and its live descendants."""
    fds = threads = pss = processes = 0
    for member in process_tree(pid):
        try:
            if process_state(member) == "Z":
                continue  # a zombie holds nothing but its slot
            member_fds = fd_count(member)
            member_threads = thread_count(member)
            # PSS, not RSS: a forked child shares its parent's pages, and RSS would count them twice.
            member_pss = _pss_kib(member)
        except (OSError, ValueError):
            continue  # exited while we looked
        processes += 1
        fds += member_fds
        threads += member_threads
        pss += member_pss
    return Usage(processes, fds, threads, pss)


def tree_cpu_seconds(pid: int) -> float:
    """CPU time (user + system) used so far by *pid* and its live descendants."""
    return tree_total(pid, cpu_seconds)


def lowest_free_fd(pid: int) -> int:
    """The descriptor number the next ``open``/``accept`` in *pid* would get."""
    held = {int(fd) for fd in os.listdir(f"/proc/{pid}/fd")}
    fd = 0
    while fd in held:
        fd += 1
    return fd


def lower_nofile(pids: set[int]) -> dict[int, tuple[int, int]]:
    """Lower each process's soft RLIMIT_NOFILE so that its next new descriptor fails with EMFILE.

    The limit bounds descriptor *numbers*, not their count: it is set to the
    lowest free number, below which every number is taken.  Descriptors
    already open stay usable.  Returns the previous limits for
    :func:`restore_nofile`.  Lowering our own children's soft limit needs no
    privilege (prlimit(2)).
    """
    previous = {}
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, FileNotFoundError):
            limits = resource.prlimit(pid, resource.RLIMIT_NOFILE)
            resource.prlimit(pid, resource.RLIMIT_NOFILE, (lowest_free_fd(pid), limits[1]))
            previous[pid] = limits
    return previous


def restore_nofile(previous: dict[int, tuple[int, int]]) -> None:
    """Give back the limits :func:`lower_nofile` took."""
    for pid, limits in previous.items():
        with contextlib.suppress(ProcessLookupError):
            resource.prlimit(pid, resource.RLIMIT_NOFILE, limits)


def count_lines(text: str, pattern: str) -> int:
    """How many lines of *text* match the regular expression *pattern*."""
    regex = re.compile(pattern)
    return sum(1 for line in text.splitlines() if regex.search(line))


def echo_roundtrip(address_of: ServerProcess, payload: bytes, timeout: float = 10.0) -> bytes:
    """One short echo connection: send *payload*, half-close, read to EOF."""
    with address_of.connect(timeout) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks)


def workers_ready(server: ServerProcess, workers: int = 2, timeout: float = 20.0) -> None:
    """Wait until a pre-forked server's *workers* have booted (other strategies: at once).

    ``listening on`` comes before the workers are up; a test that counts on
    the pool's size (or lowers its descriptor limit) waits for them.
    """
    if "preforked" not in server.argv and "interpreters" not in server.argv:
        return
    # "worker 3 (pid 1234) ready" in a pre-forked pool, "worker 3 (lane 0) ready" among sub-interpreters.
    assert wait_for(lambda: count_lines(server.log(), r"worker \d+ \((pid|lane) \d+\) ready") >= workers,
                    timeout=timeout), server.log()


def open_clients(server: ServerProcess, count: int, template: bytes, into: list[socket.socket]) -> None:
    """Open *count* connections, each sending ``template % index``; they go into *into*, which the caller closes."""
    for index in range(count):
        sock = server.connect()
        into.append(sock)
        sock.sendall(template % index)


def settle(pid: int, target: Usage, *, pss_slack_kib: int, timeout: float = 10.0) -> Usage:
    """Wait until *pid*'s tree is back to *target* (memory within slack); return the last reading."""
    last: list[Usage] = []

    def back() -> bool:
        now = usage(pid)
        last.append(now)
        return (now.processes <= target.processes and now.fds <= target.fds and now.threads <= target.threads
                and now.pss_kib <= target.pss_kib + pss_slack_kib)

    wait_for(back, timeout=timeout, interval=0.1)
    return last[-1]


def bytes_wrong(got: bytes, expected: bytes) -> int:
    """How many bytes of *got* differ from *expected*, missing or extra ones included (0 when equal)."""
    if got == expected:
        return 0
    return abs(len(got) - len(expected)) + sum(a != b for a, b in zip(got, expected, strict=False))


def report(name: str, **figures: object) -> None:
    """Print one line of figures for docs/reliability.md (shown with ``pytest -s`` or ``-rP``)."""
    text = " ".join(f"{key}={value}" for key, value in figures.items())
    print(f"{FIGURE_PREFIX} {name}: {text}", flush=True)


class Bounded:
    """A loop bound in count and in time: ``while bound.more(): ...``."""

    def __init__(self, count: int, seconds: float) -> None:
        self.count = count
        self.deadline = time.monotonic() + seconds
        self.done = 0

    def more(self) -> bool:
        """True while neither the count nor the time is used up; counts one iteration."""
        if self.done >= self.count or time.monotonic() >= self.deadline:
            return False
        self.done += 1
        return True


def run_threads(target, count: int, timeout: float = 60.0) -> list[BaseException]:  # type: ignore[no-untyped-def]
    """Run *target(i)* in *count* threads; join them within *timeout*; return their exceptions."""
    errors: list[BaseException] = []

    def wrapped(index: int) -> None:
        try:
            target(index)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=wrapped, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    alive = [thread for thread in threads if thread.is_alive()]
    if alive:
        errors.append(AssertionError(f"{len(alive)} client threads still running after {timeout}s"))
    return errors
