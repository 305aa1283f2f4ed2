"""The forking strategy: one child process per connection (UNP §30.4).

The parent only accepts, forks and reaps; each child serves one connection
and exits.  A crash, a leak or a blocking call in one connection cannot
touch another, at the price of a ``fork()`` (page tables copied, pages
shared copy-on-write) and an exit per connection.

* **Reaping.**  SIGCHLD is routed through the lifecycle's dispatcher: its
  handler only records and wakes the loop, which then reaps with
  ``waitpid(-1, WNOHANG)`` until nothing is left to reap, so no zombie
  outlives its connection by more than a loop turn.
* **The bound.**  With ``--max-connections N`` the parent stops polling the
  listener while N children are alive; clients wait in the listen backlog
  and are accepted as children are reaped.  Nobody is refused.
* **The child** resets what it inherited deliberately (see
  :meth:`ForkingStrategy.run_child`), serves its connection in its own
  main thread, and always leaves through ``os._exit``.
* **Stopping.**  The parent stops accepting, passes SIGTERM on to its
  children (each finishes its connection; an idle keep-alive one closes at
  once), waits for them until the graceful deadline, then SIGKILLs the
  stragglers and reaps every one.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
from typing import TYPE_CHECKING, NoReturn

from framework.strategies.base import StrategyOptions
from framework.strategies.dispatching import WORKER_SIGNALS, DispatchingStrategy

if TYPE_CHECKING:
    from framework.server import Server

log = logging.getLogger("forkthread")

#: Without SIGCHLD (serving outside the main thread), reap this often (seconds).
REAP_INTERVAL = 0.1


class ForkingStrategy(DispatchingStrategy):
    """Fork a child per connection; reap on SIGCHLD; bound the children with ``max_connections``."""

    name = "forking"
    description = "one child process per connection (fork per client)"

    def __init__(self, max_connections: int | None = None) -> None:
        super().__init__(max_connections)
        self._children: set[int] = set()
        self._killed: set[int] = set()
        self._sigchld_installed = False
        self._in_child = False

    @classmethod
    def from_options(cls, options: StrategyOptions) -> ForkingStrategy:
        """Use ``--max-connections``."""
        return cls(max_connections=options.max_connections)

    def live(self) -> int:
        """Children alive (or exited and not yet reaped)."""
        return len(self._children)

    def counts(self, server: Server) -> tuple[int, int]:
        """Parent: ``(accepted, live children)``; child: its own connection."""
        if self._in_child:
            return server.connections.served, len(server.connections)
        return super().counts(server)

    def begin(self, server: Server) -> None:
        """Route SIGCHLD through the dispatcher (main thread only; otherwise reap on a timer)."""
        if threading.current_thread() is threading.main_thread():
            server.lifecycle.install_signals({signal.SIGCHLD: lambda signum: self.reap()})
            self._sigchld_installed = True

    def poll_interval(self) -> float | None:
        """None with SIGCHLD; a short reaping interval while children live without it."""
        return None if self._sigchld_installed or not self._children else REAP_INTERVAL

    def collect(self, server: Server) -> None:
        """Reap here only when SIGCHLD is not installed (its action reaps otherwise)."""
        if not self._sigchld_installed:
            self.reap()

    def reap(self) -> None:
        """Collect every exited child: ``waitpid(-1, WNOHANG)`` until none is left."""
        while self._children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self._children.clear()
                return
            if pid == 0:
                return
            self._children.discard(pid)
            killed_by_us = pid in self._killed
            self._killed.discard(pid)
            code = os.waitstatus_to_exitcode(status)
            if code != 0 and not killed_by_us:
                log.warning("child %d serving a connection exited with status %d", pid, code)

    def start_worker(self, server: Server, sock: socket.socket, peer: str) -> None:
        """Fork; the child serves *sock*, the parent closes its copy."""
        # Buffered output would be written twice, once by each process.
        sys.stdout.flush()
        sys.stderr.flush()
        # Signals are held back across fork(): one arriving in the child before it
        # has its own wakeup pipe and queue would be lost; this way it is
        # delivered once the child is ready for it.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, WORKER_SIGNALS)
        try:
            pid = os.fork()
        except OSError as exc:  # EAGAIN (process limit) or ENOMEM: this client only
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            log.error("cannot fork for %s: %s; closing the connection", peer, exc.strerror or exc)
            sock.close()
            return
        if pid == 0:
            self.run_child(server, sock, peer, mask)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        sock.close()
        self._children.add(pid)

    def run_child(self, server: Server, sock: socket.socket, peer: str, mask: set[int | signal.Signals]) -> NoReturn:
        """In the child: serve *sock* and exit, never returning into the parent's code.

        Inherited state, reset on purpose:

        * the listener is closed (only the parent accepts);
        * the wakeup pipe is the child's own (``after_fork_in_child``);
        * SIGTERM and SIGINT keep the parent's action, now on the child's
          lifecycle: a graceful stop, so the connection finishes within the
          graceful timeout (the blocking driver enforces the deadline);
        * SIGUSR1 logs the child's own status line;
        * SIGCHLD goes back to the default: the child has no children, and
          the parent's reaper must not run here.

        Signals stay blocked (as the parent blocked them around ``fork``)
        until this is done; then *mask*, the parent's usual mask, is restored.
        """
        status = 1
        try:
            self._in_child = True
            self._children = set()
            server.after_fork_in_child()
            server.release_listener()
            if self._sigchld_installed:
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            server.handle_connection(sock, peer, main_thread=True)
            status = 0
        except BaseException:
            log.exception("child serving %s failed", peer)
        finally:
            flush_logging()
            os._exit(status)

    def begin_stop(self, server: Server) -> None:
        """Pass the graceful stop on: SIGTERM to every child.

        A child's lifecycle is its own, so it would not otherwise learn of the
        stop; with SIGTERM its driver tells the protocol (an idle keep-alive
        connection closes at once) and enforces the graceful deadline.
        (A terminal's Ctrl-C reaches the children directly; a second request
        changes nothing.)
        """
        for pid in self._children:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass  # exited meanwhile; reaped on the next wakeup

    def force_stop(self, server: Server) -> None:
        """SIGKILL every child still alive (they are reaped by the loop)."""
        for pid in self._children - self._killed:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass  # exited meanwhile; reaped on the next wakeup
            self._killed.add(pid)

    def end(self, server: Server) -> None:
        """Reap whatever is left, blocking: no child outlives the server."""
        for pid in list(self._children):
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
            self._children.discard(pid)


def flush_logging() -> None:
    """Flush every logging handler and the standard streams (before ``os._exit``)."""
    for handler in logging.getLogger().handlers + logging.getLogger("forkthread").handlers:
        try:
            handler.flush()
        except Exception:  # a broken stream must not keep us from exiting
            pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
