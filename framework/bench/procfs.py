"""Reading ``/proc``: one process's CPU and memory, and a process tree's totals.

CPU times in ``/proc/PID/stat`` are in clock ticks: ``utime``/``stime`` are
the process's own (all its threads), ``cutime``/``cstime`` those of its
children it has already reaped.  So the CPU a live tree has used so far is
the sum of all four over every live (or zombie) process of the tree: a
reaped child is counted once, in its parent's ``cutime``/``cstime``.  Minor
page faults (``minflt``, ``cminflt``) add up the same way: for a forked
child they are mostly pages it shares with its parent, copied on first write.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Iterable

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


@dataclasses.dataclass(frozen=True)
class ProcStat:
    """The fields of ``/proc/PID/stat`` the lab uses."""

    pid: int
    comm: str
    state: str
    ppid: int
    minflt: int
    cminflt: int
    utime: int
    stime: int
    cutime: int
    cstime: int
    threads: int
    rss_pages: int

    @property
    def cpu_ticks(self) -> int:
        """Own CPU plus that of reaped children, in clock ticks."""
        return self.utime + self.stime + self.cutime + self.cstime

    @property
    def minor_faults(self) -> int:
        """Own minor page faults plus those of reaped children."""
        return self.minflt + self.cminflt


def parse_stat(text: str) -> ProcStat:
    """Parse one ``/proc/PID/stat`` line (see proc(5)).

    The command name is in parentheses and may itself contain spaces and
    parentheses, so fields are counted from the *last* ``)``.
    """
    open_paren = text.index("(")
    close_paren = text.rindex(")")
    pid = int(text[:open_paren])
    comm = text[open_paren + 1:close_paren]
    # fields[0] is field 3 of proc(5) (state); field N is fields[N - 3].
    fields = text[close_paren + 2:].split()
    if len(fields) < 22:
        raise ValueError(f"/proc stat line too short: {text!r}")
    return ProcStat(
        pid=pid, comm=comm, state=fields[0], ppid=int(fields[1]),
        minflt=int(fields[7]), cminflt=int(fields[8]),
        utime=int(fields[11]), stime=int(fields[12]), cutime=int(fields[13]), cstime=int(fields[14]),
        threads=int(fields[17]), rss_pages=int(fields[21]),
    )


def read_stat(pid: int) -> ProcStat | None:
    """The stat of *pid*, or None when it no longer exists."""
    try:
        with open(f"/proc/{pid}/stat") as file:
            return parse_stat(file.read())
    except (OSError, ValueError):
        return None


def all_stats() -> dict[int, ProcStat]:
    """The stat of every process now visible in ``/proc``."""
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = read_stat(int(entry))
            if stat is not None:
                stats[stat.pid] = stat
    return stats


def tree(root: int, stats: dict[int, ProcStat] | None = None) -> list[ProcStat]:
    """*root* and all its descendants (zombies included), from one snapshot of ``/proc``."""
    stats = all_stats() if stats is None else stats
    children: dict[int, list[ProcStat]] = {}
    for stat in stats.values():
        children.setdefault(stat.ppid, []).append(stat)
    found = [stats[root]] if root in stats else []
    frontier = list(found)
    while frontier:
        for child in children.get(frontier.pop().pid, []):
            found.append(child)
            frontier.append(child)
    return found


def machine_busy_ticks() -> int:
    """Clock ticks every CPU of the machine has spent busy (not idle, not waiting for I/O) since boot.

    From the ``cpu`` line of ``/proc/stat``: user, nice, system, irq,
    softirq and steal (guest time is already inside user).
    """
    with open("/proc/stat") as file:
        fields = file.readline().split()
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(value) for value in fields[1:9])
    return user + nice + system + irq + softirq + steal


def cpu_seconds(processes: Iterable[ProcStat]) -> float:
    """CPU seconds (user + system, reaped children included) of *processes*."""
    return sum(stat.cpu_ticks for stat in processes) / CLOCK_TICKS


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds the tree under *root* has used so far (see the module docstring)."""
    return cpu_seconds(tree(root))


def tree_minor_faults(root: int) -> int:
    """Minor page faults the tree under *root* has taken so far (reaped children included)."""
    return sum(stat.minor_faults for stat in tree(root))


@dataclasses.dataclass(frozen=True)
class Memory:
    """Memory of a process tree, in KiB: resident (shared pages counted in every process), and the
    proportional share of anonymous memory (heap, stacks; see :func:`tree_memory`)."""

    rss_kib: int
    pss_kib: int
    processes: int
    threads: int


def parse_smaps_rollup(text: str) -> dict[str, int]:
    """``/proc/PID/smaps_rollup`` as ``{"Rss": kib, "Pss": kib, ...}``."""
    values = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if len(parts) == 2 and parts[1] == "kB" and parts[0].isdigit():
            values[name.strip()] = int(parts[0])
    return values


def tree_memory(root: int) -> Memory:
    """RSS and PSS summed over the tree under *root*.

    RSS counts a page shared by forked processes once per process, so a
    forking server looks bigger than it is.  PSS splits shared pages
    between their sharers and sums to the real footprint; only its
    anonymous part (``Pss_Anon``: heap, stacks) is used, because file pages
    (the interpreter's code) are shared with every Python process on the
    machine, and their share moves whenever another one starts or ends.
    """
    rss = pss = threads = 0
    processes = tree(root)
    for stat in processes:
        threads += stat.threads
        try:
            with open(f"/proc/{stat.pid}/smaps_rollup") as file:
                rollup = parse_smaps_rollup(file.read())
        except OSError:
            rollup = {}
        rss += rollup.get("Rss", stat.rss_pages * PAGE_SIZE // 1024)
        pss += rollup.get("Pss_Anon", rollup.get("Pss", 0))
    return Memory(rss_kib=rss, pss_kib=pss, processes=len(processes), threads=threads)


def meminfo_kib(field: str) -> int | None:
    """A field of ``/proc/meminfo`` in KiB (``MemAvailable``, ``MemTotal``), None when unknown."""
    try:
        with open("/proc/meminfo") as file:
            for line in file:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def mem_available_kib() -> int | None:
    """Memory available for new work, in KiB (None when unknown)."""
    return meminfo_kib("MemAvailable")


def mem_total_kib() -> int:
    """Total memory in KiB (0 when unknown)."""
    return meminfo_kib("MemTotal") or 0


def task_schedstat(pid: int) -> tuple[int, int]:
    """Nanoseconds the threads of process *pid* ran on a CPU, and waited on a run queue for one (0, 0 when gone).

    From ``/proc/PID/task/TID/schedstat`` (kernel ``Documentation/scheduler/sched-stats.rst``):
    waiting for a CPU is told apart from waiting for anything else, which a
    busy machine would otherwise pass off as the server's own waiting.
    """
    running = queued = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0, 0
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as file:
                fields = file.read().split()
        except OSError:
            continue  # the thread ended meanwhile
        running += int(fields[0])
        queued += int(fields[1])
    return running, queued


def tree_schedstat(root: int) -> tuple[int, int]:
    """:func:`task_schedstat` summed over the process tree of *root* (its live processes)."""
    running = queued = 0
    for stat in tree(root):
        ran, waited = task_schedstat(stat.pid)
        running += ran
        queued += waited
    return running, queued


def thread_schedstat() -> tuple[int, int]:
    """:func:`task_schedstat`'s two figures for the calling thread alone."""
    try:
        with open(f"/proc/self/task/{threading.get_native_id()}/schedstat") as file:
            fields = file.read().split()
    except OSError:
        return 0, 0
    return int(fields[0]), int(fields[1])
