"""The forking strategy: one child process per connection (UNP §30.4).

The parent only accepts, forks and reaps; each child serves one connection
and exits.  A crash, a leak or a blocking call in one connection cannot
touch another, at the price of a ``fork()`` (page tables copied, pages
shared copy-on-write) and an exit per connection.

* **Reaping.**  SIGCHLD is routed through the lifecycle's dispatcher: its
  handler only records and wakes the loop, which then reaps each of *its
  own* children with ``waitpid(pid, WNOHANG)``, so no zombie outlives its
  connection by more than a loop turn, and children the embedding program
  made itself (``subprocess``) are left to it.
* **The bound.**  With ``--max-connections N`` the parent stops polling the
  listener while N children are alive; clients wait in the listen backlog
  and are accepted as children are reaped.  Nobody is refused.
* **The child** is made by :func:`framework.processes.fork` and enters its
  role through :meth:`~framework.strategies.base.Host.enter_child`, serves
  its connection in its own main thread, and always leaves through
  :func:`framework.processes.exit_child`.
* **Stopping.**  The parent stops accepting, passes SIGTERM on to its
  children (each finishes its connection; an idle keep-alive one closes at
  once), waits for them until the graceful deadline, then SIGKILLs the
  stragglers and reaps every one.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import signal
import socket
import time
from typing import NoReturn

from framework.address import close_socket
from framework.logthrottle import LogThrottle
from framework.processes import DirectFork, Forked, exit_child, fork, rehearse_exit, release_free_heap
from framework.rehearsal import ROUNDS as REHEARSAL_ROUNDS
from framework.signals import SignalAction
from framework.strategies.base import ChildRole, Host, StrategyOptions
from framework.strategies.dispatching import DispatchingRun, DispatchingStrategy

log = logging.getLogger("forkthread")

#: gc.disable, looked up once: in a child every object touched is a page copied.
_disable_collector = gc.disable

#: Without SIGCHLD (serving outside the main thread), reap this often (seconds).
REAP_INTERVAL = 0.1


@dataclasses.dataclass(frozen=True)
class ForkingStrategy(DispatchingStrategy):
    """Fork a child per connection; reap on SIGCHLD; bound the children with ``max_connections``."""

    name = "forking"
    description = "one child process per connection (fork per client)"
    option_names = frozenset({"max_connections"})

    @classmethod
    def from_options(cls, options: StrategyOptions) -> ForkingStrategy:
        """Use ``--max-connections``."""
        return cls(max_connections=options.max_connections)

    def start(self, host: Host) -> ForkingRun:
        """A run that forks a child per connection."""
        return ForkingRun(self, host, self.max_connections)


class ForkingRun(DispatchingRun):
    """The parent's side of one serve: the children it forked, and reaping them."""

    def __init__(self, strategy: ForkingStrategy, host: Host, max_connections: int | None) -> None:
        super().__init__(strategy, host, max_connections)
        #: Children forked by this run and not reaped yet: pid -> (peer, when forked).
        self.children: dict[int, tuple[str, float]] = {}
        self._killed: set[int] = set()
        self._sigchld = False
        self._direct: DirectFork | None = None
        # What every child becomes, made once: a child builds nothing it can inherit.
        self._child_role = ChildRole()
        # fork() failing (RLIMIT_NPROC, memory) fails again for every client: say it once in a while.
        self._fork_failures = LogThrottle()

    def signal_actions(self) -> dict[int, SignalAction]:
        """SIGCHLD reaps, in the loop."""
        return {signal.SIGCHLD: lambda signum: self.reap()}

    def live(self) -> int:
        """Children alive (or exited and not yet reaped)."""
        return len(self.children)

    def running(self) -> list[str]:
        """Each child serving now: ``PEER (pid N, N s)``."""
        now = time.monotonic()
        return [f"{peer} (pid {pid}, {now - since:.1f} s)" for pid, (peer, since) in self.children.items()]

    def counts(self) -> tuple[int, int]:
        """``(connections accepted, children serving)``: each child counts (and admits) its own."""
        return self.accepted, self.live()

    def begin(self) -> None:
        """Note whether SIGCHLD wakes us (otherwise reap on a timer); rehearse; set up the direct fork; freeze the heap.

        A rehearsal (:meth:`~framework.strategies.base.Host.rehearse`) serves
        a few connections of the framework's own first, and enters the
        child's role on stand-ins of the server, and the exit's flushing runs
        as often (:func:`~framework.processes.rehearse_exit`): so that every
        child enters, serves and leaves specialized by the interpreter, not cold.

        ``gc.freeze()`` moves every object alive now (modules, classes,
        functions: almost the whole heap) out of the collector's reach, so
        neither the parent's collections nor a child's touch their pages:
        each such write would copy a page shared with every live child.
        The direct fork (:class:`~framework.processes.DirectFork`) is found
        first: the search cannot see a frozen heap.  Then the C heap's free
        pages go back to the kernel (:func:`~framework.processes.release_free_heap`):
        every fork would copy their page-table entries, and every child's exit tear them down.
        """
        self._sigchld = self.host.lifecycle.signals.handles(signal.SIGCHLD)
        self.host.rehearse(self._child_role)
        rehearse_exit(REHEARSAL_ROUNDS)
        self._direct = DirectFork.find()
        self.host.lifecycle.prepare_children()
        gc.freeze()
        release_free_heap()

    def poll_interval(self) -> float | None:
        """None with SIGCHLD; a short reaping interval while children live without it."""
        return None if self._sigchld or not self.children else REAP_INTERVAL

    def collect(self) -> None:
        """Reap here only when SIGCHLD is not handled (its action reaps otherwise)."""
        if not self._sigchld:
            self.reap()

    def reap(self) -> None:
        """Collect every exited child of this run, and only those.

        ``waitpid(pid, WNOHANG)`` per child rather than ``waitpid(-1)``: a
        program that embeds the server and runs subprocesses of its own keeps
        their exit statuses.
        """
        for pid in list(self.children):
            try:
                reaped, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:  # reaped by someone else: gone all the same
                reaped, status = pid, 0
            if not reaped:
                continue
            del self.children[pid]
            killed_by_us = pid in self._killed
            self._killed.discard(pid)
            code = os.waitstatus_to_exitcode(status)
            if code != 0 and not killed_by_us:
                log.warning("child %d serving a connection exited with status %d", pid, code)

    def start_worker(self, sock: socket.socket, peer: str) -> None:
        """Fork; the child serves *sock*, the parent closes its copy."""
        try:
            forked = fork(direct=self._direct)
        except OSError as exc:  # EAGAIN (process limit) or ENOMEM: this client only
            self._fork_failures.warning(f"cannot fork for {peer}: {exc.strerror or exc}; closing the connection")
            sock.close()
            return
        # forked[0], not forked.pid: a property, and its getter and name, are pages
        # written in the parent and the child alike.
        pid = forked[0]
        if pid == 0:
            self._run_child(sock, peer, forked)
        if self._fork_failures.reporting:
            self._fork_failures.reset()
        close_socket(sock)  # the parent's copy
        self.children[pid] = (peer, time.monotonic())

    def _run_child(self, sock: socket.socket, peer: str, forked: Forked) -> NoReturn:
        """In the child: serve *sock* and exit, never returning into the parent's code.

        The child enters its role through the host (its own wakeup pipe,
        counters and status; the listener closed: only the parent accepts).
        SIGTERM and SIGINT keep the parent's action, now on the child's
        lifecycle: a graceful stop, so the connection finishes within the
        graceful timeout.  Signals stay held until this is done.
        """
        status = 1
        # A short life: a collection would visit the young objects inherited from the
        # parent (those made since begin() froze the heap), writing to their pages.
        _disable_collector()
        try:
            self.host.enter_child(self._child_role)
            forked.release_signals()
            self.host.serve_connection(sock, peer, main_thread=True)
            status = 0
        except BaseException:
            log.exception("child serving %s failed", peer)
        finally:
            exit_child(status)

    def begin_stop(self) -> None:
        """Pass the graceful stop on: SIGTERM to every child.

        A child's lifecycle is its own, so it would not otherwise learn of the
        stop; with SIGTERM its driver tells the protocol (an idle keep-alive
        connection closes at once) and enforces the graceful deadline.
        (A terminal's Ctrl-C reaches the children directly; a second request
        changes nothing.)
        """
        for pid in self.children:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass  # exited meanwhile; reaped on the next wakeup

    def force_stop(self) -> None:
        """SIGKILL every child still alive (they are reaped by the loop)."""
        for pid in self.children.keys() - self._killed:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass  # exited meanwhile; reaped on the next wakeup
            self._killed.add(pid)

    def end(self) -> None:
        """Reap whatever is left, blocking: no child outlives the server; unfreeze the heap."""
        gc.unfreeze()
        for pid in list(self.children):
            if pid not in self._killed:
                log.error("child %d still running at exit; killing it", pid)
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
            del self.children[pid]
