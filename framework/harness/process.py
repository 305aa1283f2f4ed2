"""A ``forkthread serve`` process: started, waited for its ``listening on`` line, stopped, killed.

The server is a real process, started the way a user starts it
(``python -m framework serve TARGET``), so fork, signals and process
trees are real.  What it writes to standard error is kept in a file, the
log a failure shows.  A server that ends before listening fails with its
own standard error (:class:`ServerStartError`), not with a timeout; one
that outlives its stop deadline fails with what keeps it alive
(:class:`ServerStopError`).
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import time

from framework.address import connect as connect_to
from framework.harness.proctree import descendants, task_children, thread_count

#: The signals that ask a server to stop gracefully.
STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})
#: Seconds a stopping server may live on with nothing left to serve (no socket, no child) before it
#: counts as stuck: its main thread ended and something else (a non-daemon thread) holds it.
LINGER_LIMIT = 3.0
#: Seconds the server gets to write faulthandler's thread dump after SIGABRT.
DUMP_WAIT = 5.0


class ServerStartError(AssertionError):
    """The server ended, or said something else, before its ``listening on`` line."""


class ServerStopError(AssertionError):
    """The server did not end within its deadline after the stop signal (it was then killed)."""


def _prefixes() -> set[str]:
    return {os.path.realpath(prefix) for prefix in (sys.prefix, sys.base_prefix, sys.exec_prefix,
                                                     sys.base_exec_prefix)}


def import_path() -> list[str]:
    """This interpreter's import directories that a fresh one would not have (the project, pytest's rootdir...).

    Those under the installation prefixes (the standard library, site-packages)
    a child finds by itself.
    """
    prefixes = _prefixes()
    found: list[str] = []
    for entry in sys.path:
        path = os.path.realpath(entry or os.curdir)
        if (os.path.isdir(path) and path not in found
                and not any(path == prefix or path.startswith(prefix + os.sep) for prefix in prefixes)):
            found.append(path)
    return found


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a server process: this process's own import path first, so it imports what we import."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([*import_path(), *filter(None, [env.get("PYTHONPATH", "")])])
    env.update(extra)
    return env


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
        self.env = env or child_env()
        self.log_file = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (closed in close())
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=self.log_file, text=True,
                                     env=self.env, stdin=subprocess.DEVNULL)
        self.pid = self.proc.pid
        try:
            self.address = self._wait_listening(start_timeout)
        except BaseException:
            self.close()
            raise
        #: The exit status a test expects if the server ends before teardown
        #: (a test that SIGKILLs the master sets -SIGKILL); anything else fails the test.
        self.expected_status = 0
        #: Whether a stop signal was sent already: :meth:`stop` then waits instead of sending
        #: another, which could meet the default handler the server restored as it stopped.
        self.stop_signal_sent = False

    def _wait_listening(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self.proc.stdout, selectors.EVENT_READ)
            if not selector.select(timeout):
                self.kill()
                raise ServerStartError(f"no 'listening on' line within {timeout}s; its standard error:\n{self.log()}")
        line = self.proc.stdout.readline()
        if not line.startswith("listening on "):
            try:
                status: int | str = self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
                status = "killed"
            said = f"said {line.strip()!r} instead of 'listening on'" if line else "ended before listening"
            raise ServerStartError(f"server {said} (exit status {status}); its standard error:\n{self.log()}")
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
        self.stop_signal_sent |= signum in STOP_SIGNALS
        self.proc.send_signal(signum)

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Send *signum*, wait for the exit, and return the exit status.

        Past *timeout*, or once it has lived :data:`LINGER_LIMIT` seconds with
        nothing left to serve, the server is killed and :class:`ServerStopError`
        says what kept it alive.
        """
        if self.proc.poll() is None and not (signum in STOP_SIGNALS and self.stop_signal_sent):
            self.send_signal(signum)
        deadline = time.monotonic() + timeout
        idle_since: float | None = None
        while True:
            with contextlib.suppress(subprocess.TimeoutExpired):
                return self.proc.wait(0.1)
            now = time.monotonic()
            idle_since = (idle_since or now) if self._serves_nothing() else None
            if idle_since is not None and now - idle_since >= LINGER_LIMIT:
                when = f"server did not exit after signal {signum}: it holds no socket and no child, yet lives on"
                break
            if now >= deadline:
                when = f"server did not stop within {timeout}s after signal {signum}"
                break
        cause = self._why_alive()
        self.kill()
        raise ServerStopError(f"{when}: {cause}\n{self.log()}")

    def _serves_nothing(self) -> bool:
        """True when the server holds no socket and has no child: what it lives on for is not serving."""
        try:
            fds = os.listdir(f"/proc/{self.pid}/fd")
        except OSError:
            return False
        for fd in fds:
            with contextlib.suppress(OSError):  # closed meanwhile
                if os.readlink(f"/proc/{self.pid}/fd/{fd}").startswith("socket:"):
                    return False
        return not task_children(self.pid)

    def _why_alive(self) -> str:
        """What keeps the server running: its threads, and with faulthandler on, their stacks (then it ends)."""
        try:
            threads = thread_count(self.pid)
        except OSError:
            threads = 0
        if not self.env.get("PYTHONFAULTHANDLER"):
            return f"{threads} threads still running"
        # faulthandler (PYTHONFAULTHANDLER) answers SIGABRT with every thread's stack on standard error.
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGABRT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(DUMP_WAIT)
        if " in _shutdown" in self.log():
            return (f"its main thread has finished and waits for a non-daemon thread that never ends ({threads}"
                    " threads): a non-daemon thread keeps the server alive after SIGTERM; make it a daemon"
                    " thread or end it when the server stops (thread stacks below)")
        return f"{threads} threads still running (thread stacks below)"

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
