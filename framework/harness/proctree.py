"""Reading a process tree from ``/proc``: children, states, command lines, descriptors and threads.

Everything is read from the kernel's side (proc(5)), never asked of the
process itself, so it works on a server that is stuck, leaking or gone.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path


def _stat_fields(pid: int, task: str = "") -> list[str] | None:
    """Fields 3 onwards of ``/proc/PID/stat`` (state, ppid, ...), or None when *pid* does not exist.

    *task* ``"task/TID"``: of that thread's ``stat`` instead.
    """
    try:
        stat = Path(f"/proc/{pid}/{task}/stat" if task else f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may contain spaces and parentheses: split after the last ')'.
    return stat[stat.rindex(")") + 2:].split()


def proc_children(pid: int) -> set[int]:
    """Direct children of *pid*, from /proc (zombies included)."""
    children = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None and int(fields[1]) == pid:
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
    fields = _stat_fields(pid)
    return None if fields is None else fields[0]


def thread_states(pid: int) -> dict[int, str]:
    """The one-letter state of each thread of *pid*, by thread id (empty when it does not exist).

    A stopped process (``SIGSTOP``) shows ``T`` for its main thread as soon as
    that thread stops; each other thread stops on its own way back from the
    kernel, and may finish a system call (an ``accept``) first.
    """
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return {}
    states = {}
    for tid in tids:
        fields = _stat_fields(pid, f"task/{tid}")
        if fields is not None:  # else the thread ended meanwhile
            states[int(tid)] = fields[0]
    return states


def command_line(pid: int) -> str:
    """The command line of *pid* as one line (``[name]`` for a zombie or kernel thread, ``?`` when gone)."""
    try:
        words = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    line = " ".join(word.decode(errors="replace") for word in words if word)
    if line:
        return line
    with contextlib.suppress(OSError):
        return f"[{Path(f'/proc/{pid}/comm').read_text().strip()}]"
    return "?"


def fd_count(pid: int) -> int:
    """How many descriptors *pid* has open."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def open_descriptors(pid: int) -> dict[int, str]:
    """What each descriptor of *pid* refers to (``socket:[123]``, a path...), to name a leak."""
    found = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            found[int(name)] = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:  # closed meanwhile
            pass
    return found


def thread_count(pid: int) -> int:
    """How many threads *pid* runs now (its main thread included)."""
    return len(os.listdir(f"/proc/{pid}/task"))


def zombies_of(pid: int) -> set[int]:
    """Children of *pid* that are zombies (exited, not reaped)."""
    return {child for child in proc_children(pid) if process_state(child) == "Z"}


def task_children(pid: int) -> set[int]:
    """Direct children of *pid* from ``/proc/PID/task/*/children``: much cheaper than scanning /proc.

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


def tree_threads(pid: int) -> int:
    """Threads in *pid* and all its descendants together."""
    return int(tree_total(pid, thread_count))


def tree_zombies(pid: int) -> set[int]:
    """Zombies anywhere in *pid*'s process tree (exited, not reaped by their parent)."""
    return {member for member in process_tree(pid) if process_state(member) == "Z"}


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
