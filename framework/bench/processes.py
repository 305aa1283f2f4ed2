"""A server under test: started as a real process, timed by CPU, stopped gracefully, fully reaped.

Server CPU is charged to the whole process tree.  Two ways are used:

* each server runs in a cgroup of its own where one can be made
  (:mod:`framework.bench.cgroup`): :meth:`RunningServer.cpu_seconds` reads
  the CPU of everything the server ever started there, to the microsecond;
  differences of two samples measure one load point without restarting
  the server;
* elsewhere it samples ``/proc`` (live processes plus children already
  reaped, see :mod:`framework.bench.procfs`), in clock ticks;
* :meth:`RunningServer.stop` sends the stop signal and collects the exit
  with ``os.wait4``, whose resource usage is the whole tree's (the server's
  own CPU plus every child it reaped, recursively): nothing a child did is
  lost, not even work done while shutting down.  With a cgroup the total
  is the cgroup's, read after the exit: the same clock as every sample.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import re
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from types import TracebackType

from framework.bench import procfs
from framework.bench.cgroup import ServerGroup

#: The line a ``forkthread serve`` process prints once it listens.
LISTENING = re.compile(r"^listening on (?P<host>[^\s]+):(?P<port>\d+)\s*$", re.MULTILINE)


class ServerStartError(RuntimeError):
    """The server did not come up (exited, or never became ready in time)."""


@dataclasses.dataclass
class ServerCommand:
    """How to start one server and how to know it is ready.

    Readiness is either a line matching *ready_pattern* on standard output
    or error (with ``host``/``port`` groups, or a ``port`` group), or, when
    *port* is given, the port accepting connections and, when *ready_file*
    is given too, that file existing.
    """

    argv: list[str]
    ready_pattern: re.Pattern[str] | None = LISTENING
    port: int | None = None
    host: str = "127.0.0.1"
    cwd: str | None = None
    env: dict[str, str] | None = None
    stop_signal: int = signal.SIGTERM
    #: A file the server writes once it handles its stop signal (nginx's pid
    #: file: nginx listens before it installs its signal handlers, so an open
    #: port alone does not mean that the stop signal stops it gracefully).
    ready_file: str | None = None
    #: Called after the process is reaped (remove a temp dir, ...).
    cleanup: Callable[[], None] | None = None


@dataclasses.dataclass(frozen=True)
class StopResult:
    """How a server ended: total tree CPU and minor faults from ``wait4``, exit status, whether it needed SIGKILL."""

    cpu_seconds: float
    status: int
    killed: bool
    minor_faults: int


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on now (for programs that cannot be told port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


#: The signals that interrupt the lab (^C, and its SIGTERM, which it turns into a ^C): held while a server is spawned.
INTERRUPTS = frozenset({signal.SIGINT, signal.SIGTERM})


def _before_exec(cpus: set[int] | None, group: ServerGroup | None,
                 mask: set[int | signal.Signals]) -> Callable[[], None]:
    """What the server's process does between fork and exec: join *group*, keep to *cpus*, restore *mask*."""

    def prepare() -> None:
        if group is not None:
            # If this fails the server is not in the group; the parent sees that and reads /proc.
            with contextlib.suppress(OSError):
                group.join()
        if cpus:
            os.sched_setaffinity(0, cpus)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)

    return prepare


class RunningServer:
    """One started server process; use as a context manager so it is always stopped and reaped."""

    def __init__(self, command: ServerCommand, *, cpus: set[int] | None = None, start_timeout: float = 20.0,
                 own_cgroup: bool = True) -> None:
        """Start *command* on *cpus* and wait until it is ready.

        With *own_cgroup* (and where the machine allows one) the server and
        everything it starts run in a cgroup of their own, which measures
        their CPU exactly and which no process of theirs outlives.
        """
        self.command = command
        self.stopped: StopResult | None = None
        self.output = tempfile.TemporaryFile(  # noqa: SIM115 - closed in stop()
            mode="w+", prefix="forkthread-bench-")
        # Appending: the server's stdout and stderr share this file's offset with the lab,
        # whose every log() seeks and reads; without O_APPEND a write could land where the
        # lab had just moved it, over what was there ("istening on": a start missed).
        fd = self.output.fileno()
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_APPEND)
        # Interrupts wait until the server's PID is known (below): one landing while Popen waits
        # for the exec (the child joining its cgroup takes a while) would leave the server
        # running with nobody to stop it.  The child restores the mask before its exec.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, INTERRUPTS)
        #: The server's cgroup, or None: CPU is then read from ``/proc``.
        self.group: ServerGroup | None = None
        try:
            self.group = ServerGroup.create() if own_cgroup else None
            self.popen = subprocess.Popen(
                command.argv, stdout=self.output, stderr=self.output, stdin=subprocess.DEVNULL,
                cwd=command.cwd, env=command.env, preexec_fn=_before_exec(cpus, self.group, mask),
                process_group=0,  # a terminal's ^C reaches the lab, which then stops servers in order
            )
        except BaseException:
            if self.group is not None:
                self.group.remove()
            self.output.close()
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            raise
        self.pid = self.popen.pid
        try:  # from here on, whatever interrupts (a ^C, the lab's SIGTERM) stops the server first
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # an interrupt held meanwhile lands here
            if self.group is not None and self.pid not in self.group.pids():
                self.group.remove()  # it could not join (or is gone already): /proc it is
                self.group = None
            self.host, self.port = self._wait_ready(start_timeout)
        except BaseException:
            self.stop(timeout=5.0)
            raise

    def _wait_ready(self, timeout: float) -> tuple[str, int]:
        deadline = time.monotonic() + timeout
        command = self.command
        while time.monotonic() < deadline:
            if self.exited():
                raise ServerStartError(f"exited before it was ready: {self.log()[-2000:].strip()}")
            if command.port is not None and (command.ready_file is None or os.path.exists(command.ready_file)):
                with contextlib.suppress(OSError), socket.create_connection((command.host, command.port), 0.5):
                    return command.host, command.port
            elif command.ready_pattern is not None:
                match = command.ready_pattern.search(self.log())
                if match:
                    groups = match.groupdict()
                    return groups.get("host") or command.host, int(groups["port"])
            time.sleep(0.02)
        raise ServerStartError(f"not ready within {timeout:.0f}s: {self.log()[-2000:]}")

    def exited(self) -> bool:
        """True once the server process has ended (it is left unreaped for :meth:`stop`'s ``wait4``)."""
        return os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None

    def log(self) -> str:
        """Everything the server wrote to standard output and error so far."""
        self.output.flush()
        self.output.seek(0)
        return self.output.read()

    @property
    def cpu_clock(self) -> str:
        """Where :meth:`cpu_seconds` reads: ``"cgroup"`` (microseconds) or ``"/proc"`` (clock ticks)."""
        return "/proc" if self.group is None else "cgroup"

    def cpu_seconds(self) -> float:
        """CPU seconds the server's tree has used so far (its cgroup's, else from ``/proc``)."""
        if self.group is not None:
            return self.group.cpu_seconds()
        return procfs.tree_cpu_seconds(self.pid)

    def minor_faults(self) -> int:
        """Minor page faults the server's tree has taken so far (from ``/proc``)."""
        return procfs.tree_minor_faults(self.pid)

    def main_process_usage(self) -> tuple[float, int] | None:
        """CPU seconds and minor faults of the server's main process alone so far: its threads, not its children.

        The rest of the tree's (:meth:`cpu_seconds` minus this) is what its
        children or workers did: a forking server's children, a pool's workers.
        None once the process is gone (reaped).
        """
        stat = procfs.read_stat(self.pid)
        if stat is None:
            return None
        return (stat.utime + stat.stime) / procfs.CLOCK_TICKS, stat.minflt

    def memory(self) -> procfs.Memory:
        """RSS/PSS of the server's tree now."""
        return procfs.tree_memory(self.pid)

    def stop(self, timeout: float = 30.0) -> StopResult:
        """Stop gracefully (SIGKILL to the tree after *timeout*), reap, and return the tree's CPU."""
        if self.stopped is not None:
            return self.stopped
        killed = False
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, self.command.stop_signal)
        deadline = time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(self.pid, os.WNOHANG)
            if pid == self.pid:
                break
            if time.monotonic() >= deadline and not killed:
                self._kill_tree()
                killed = True
                deadline = time.monotonic() + 10.0
            elif time.monotonic() >= deadline:
                pid, status, usage = os.wait4(self.pid, 0)
                break
            time.sleep(0.01)
        self.popen.returncode = os.waitstatus_to_exitcode(status)  # wait4 reaped it, not Popen
        cpu = usage.ru_utime + usage.ru_stime
        if self.group is not None:
            self._end_leftovers()
            cpu = self.group.cpu_seconds()
            self.group.remove()
        self.stopped = StopResult(cpu, self.popen.returncode, killed, usage.ru_minflt)
        self.output.close()
        if self.command.cleanup is not None:
            self.command.cleanup()
        return self.stopped

    def _end_leftovers(self) -> None:
        """Kill what the reaped server left running in its cgroup (orphans it started), and wait for them."""
        assert self.group is not None
        deadline = time.monotonic() + 10.0
        while (left := self.group.pids()) and time.monotonic() < deadline:
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.01)

    def _kill_tree(self) -> None:
        for stat in procfs.tree(self.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(stat.pid, signal.SIGKILL)

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop(timeout=10.0 if exc_type is None else 3.0)
