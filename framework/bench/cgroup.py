"""A cgroup per measured server: its whole tree's CPU, to the microsecond.

``/proc/PID/stat`` gives a process's CPU in clock ticks (10 ms at the usual
``USER_HZ`` of 100), and truncates ``utime``, ``stime``, ``cutime`` and
``cstime`` each.  A sample of a live tree therefore reads low, by half a
tick per field on average: about 10 ms for one process, 30 ms for a
master and two workers.  The lab's short-connection figure subtracts such
a sample from the exact total ``wait4`` reports at the end, so the error
landed on every row, and more on a tree of more processes (a pool) than on
one (``iterative``): at 2,000 connections, 15 µs per connection against 5.

A cgroup v2 counts the CPU of every task in it, alive, exited or reaped,
in microseconds (``cpu.stat``'s ``usage_usec``, kept whether or not the
``cpu`` controller is enabled).  The lab makes one per server, moves the
server into it before ``exec`` (so every process and thread the server
starts is in it too) and reads it at each sample.  Where no cgroup v2 can
be made (not root, no ``cgroup2`` mount, a read-only one) the lab falls
back to ``/proc`` and says so in its results.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import time

#: Where the kernel says the cgroup v2 hierarchy is mounted.
MOUNTINFO = "/proc/self/mountinfo"

_names = itertools.count(1)

#: Every group the lab makes is named ``PREFIX + "LABPID-N-LABEL"``.
PREFIX = "forkthread-bench-"


def sweep_stale(parent: str) -> list[str]:
    """Remove the groups under *parent* left by labs that are gone; return their names.

    A lab killed outright (SIGKILL) cannot remove its server's group. The
    group is empty once the server is gone (the kernel does not list ended
    tasks), and the kernel refuses to remove one that still holds a task,
    so only empty groups of labs no longer running go.
    """
    removed: list[str] = []
    try:
        names = [name for name in os.listdir(parent) if name.startswith(PREFIX)]
    except OSError:
        return removed
    for name in names:
        lab_pid = name[len(PREFIX):].partition("-")[0]
        if not lab_pid.isdigit() or _alive(int(lab_pid)):
            continue
        with contextlib.suppress(OSError):
            os.rmdir(os.path.join(parent, name))
            removed.append(name)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def unified_mount(mountinfo: str = MOUNTINFO) -> str | None:
    """The mount point of the cgroup v2 hierarchy, or None (see proc(5), ``mountinfo``)."""
    try:
        with open(mountinfo) as file:
            lines = file.read().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if " - " not in line or len(fields) < 5:
            continue
        fstype = line.split(" - ", 1)[1].split()[0]
        if fstype == "cgroup2":
            return fields[4].replace("\\040", " ")
    return None


def own_group(mount: str) -> str:
    """The directory of this process's own cgroup v2 under *mount* (``0::PATH`` in ``/proc/self/cgroup``)."""
    with open("/proc/self/cgroup") as file:
        for line in file:
            if line.startswith("0::"):
                return os.path.join(mount, line[3:].strip().lstrip("/"))
    return mount


def read_usage_usec(directory: str) -> int:
    """``usage_usec`` of the cgroup at *directory*: CPU of every task ever in it, in microseconds."""
    with open(os.path.join(directory, "cpu.stat")) as file:
        for line in file:
            key, _, value = line.partition(" ")
            if key == "usage_usec":
                return int(value)
    raise ValueError(f"{directory}/cpu.stat has no usage_usec")


class ServerGroup:
    """One server's cgroup: :meth:`join` in the child before ``exec``, :meth:`cpu_seconds`, :meth:`remove`."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._procs = os.path.join(directory, "cgroup.procs")

    @classmethod
    def create(cls, label: str = "server") -> ServerGroup | None:
        """A new, empty cgroup beside this process's own; None when none can be made here."""
        mount = unified_mount()
        if mount is None:
            return None
        try:
            parent = own_group(mount)
            sweep_stale(parent)
            directory = os.path.join(parent, f"{PREFIX}{os.getpid()}-{next(_names)}-{label}")
            os.mkdir(directory)
        except OSError:
            return None
        group = cls(directory)
        try:
            group.cpu_seconds()
        except (OSError, ValueError):  # a kernel without cpu.stat in every cgroup
            group.remove()
            return None
        return group

    def join(self) -> None:
        """Move the calling process into the group (a ``preexec_fn``: runs in the child before ``exec``)."""
        with open(self._procs, "w") as file:
            file.write("0")

    def cpu_seconds(self) -> float:
        """CPU seconds of every task that has been in the group."""
        return read_usage_usec(self.directory) / 1e6

    def pids(self) -> list[int]:
        """The processes in the group now."""
        try:
            with open(self._procs) as file:
                return [int(line) for line in file if line.strip()]
        except OSError:
            return []

    def remove(self, timeout: float = 2.0) -> bool:
        """Remove the (emptied) group; False if tasks still hold it after *timeout* seconds.

        A reaped server's last children may still be exiting: the kernel
        refuses to remove a group until its tasks are gone, so this retries.
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                os.rmdir(self.directory)
                return True
            except FileNotFoundError:
                return True
            except OSError:
                if time.monotonic() >= deadline:
                    return False
                time.sleep(0.01)

    def __repr__(self) -> str:
        return f"ServerGroup({self.directory!r})"


def available() -> bool:
    """True when the lab can give a server a cgroup of its own here (tries one, removes it)."""
    group = ServerGroup.create("probe")
    if group is None:
        return False
    with contextlib.suppress(OSError):
        group.remove()
    return True
