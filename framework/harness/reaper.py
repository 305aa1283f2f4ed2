"""A subreaper: this process adopts the orphans of the processes it starts, so a leak is seen and reaped.

A server's grandchild whose parent exits would normally be adopted by init
and vanish from view; with ``PR_SET_CHILD_SUBREAPER`` (prctl(2), Linux 3.4)
it is adopted here instead, where :func:`reap_adopted` finds it.  Turning
it on is a property of the whole process, so a caller does it only while
it runs servers (the pytest plugin: for the tests that use its fixture).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import time

from framework.harness.proctree import command_line, proc_children, process_state

PR_SET_CHILD_SUBREAPER = 36
PR_GET_CHILD_SUBREAPER = 37


def _prctl(option: int, arg: int | ctypes.c_int | ctypes._Pointer[ctypes.c_int]) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, arg, 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


def become_subreaper(enabled: bool = True) -> None:
    """Make this process adopt orphaned descendants, so a leaked grandchild is seen (and reaped).

    ``enabled=False`` turns it off again: orphans go to init as before.
    """
    _prctl(PR_SET_CHILD_SUBREAPER, int(enabled))


def is_subreaper() -> bool:
    """True when this process adopts orphaned descendants (``PR_GET_CHILD_SUBREAPER``)."""
    flag = ctypes.c_int(0)
    _prctl(PR_GET_CHILD_SUBREAPER, ctypes.pointer(flag))
    return bool(flag.value)


def reap_adopted(timeout: float = 5.0, keep: frozenset[int] | set[int] = frozenset()) -> set[int]:
    """Wait for and reap orphans adopted by this (subreaper) process; return those that outlived *timeout*.

    Children in *keep* (started here on purpose, before the server) are left alone.
    """
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


def kill_leftovers(pids: set[int]) -> list[str]:
    """SIGKILL and reap *pids* (children of this process); return ``"pid 123: command line"`` for each.

    The command lines are read before the kill: they name what leaked.
    """
    described = [f"pid {pid}: {command_line(pid)}" for pid in sorted(pids)]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for pid in pids:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
    return described
