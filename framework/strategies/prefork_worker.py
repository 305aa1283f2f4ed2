"""One pre-forked worker process: boot, tell the master it is ready, run the inner strategy, exit.

Everything here runs in the child after ``fork()`` and ends in ``os._exit``:
a worker never returns into the master's code.  The master blocks its
signals around ``fork()``, so a signal aimed at a worker that is still
booting waits until the worker's own handlers are in place (instead of
being recorded by the master's inherited handler and lost).

Exit statuses the master reads: 0 after a requested stop,
:data:`WORKER_BOOT_ERROR` when booting failed (the master then stops instead
of forking replacements in a loop), 1 when the inner strategy crashed.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import logging
import os
import signal
import socket
import threading
from typing import TYPE_CHECKING, NoReturn

from framework.accepting import Acceptor
from framework.strategies.base import Strategy
from framework.strategies.scoreboard import Scoreboard, ScoredConnections

if TYPE_CHECKING:
    from framework.server import Server
    from framework.strategies.accept_modes import AcceptMode

log = logging.getLogger("forkthread")

#: Exit status of a worker that failed before it was ready (gunicorn uses 3 too).
WORKER_BOOT_ERROR = 3
#: Messages a worker sends the master on its channel.
READY = b"R"
RETIRE_ME = b"Q"
#: The signal a worker gets when its master dies (a graceful stop).
PARENT_DEATH_SIGNAL = signal.SIGTERM
PR_SET_PDEATHSIG = 1
#: Signals that belong to the master; a worker ignores them (TTIN/TTOU would stop it, HUP end it).
MASTER_ONLY_SIGNALS = (signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU)


@dataclasses.dataclass
class WorkerPlan:
    """What the master tells a worker it is about to fork."""

    number: int
    #: The worker's place in the pool (0 .. workers-1): its successor takes the same lane.
    lane: int
    slot: int
    channel: socket.socket
    mode: AcceptMode
    inner: Strategy
    board: Scoreboard
    max_requests: int
    master_pid: int
    #: Master-side descriptors of the other workers' channels: closed at once,
    #: so a worker's end-of-file really means its master is gone.
    foreign_fds: list[int]
    #: The signal mask to restore once the worker's handlers are installed.
    signal_mask: set[int | signal.Signals]


def die_with_parent(master_pid: int) -> None:
    """Ask the kernel for :data:`PARENT_DEATH_SIGNAL` when the master dies; exit if it already has.

    ``PR_SET_PDEATHSIG`` covers a master that dies later; the ``getppid()``
    check covers one that died between ``fork()`` and the ``prctl``.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, int(PARENT_DEATH_SIGNAL), 0, 0, 0)
    if os.getppid() != master_pid:
        os._exit(0)


def install_worker_signals(server: Server) -> None:
    """Drop the master's signal handling and install the worker's own, deliberately.

    TERM stops gracefully, INT and QUIT quickly, USR1 logs this worker's
    status line; HUP, TTIN and TTOU are the master's business and ignored;
    CHLD goes back to its default.
    """
    lifecycle = server.lifecycle
    lifecycle.signals.restore()
    for signum in MASTER_ONLY_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    lifecycle.install_signals({
        signal.SIGTERM: lambda signum: lifecycle.request_stop(graceful=True),
        signal.SIGINT: lambda signum: lifecycle.request_stop(graceful=False),
        signal.SIGQUIT: lambda signum: lifecycle.request_stop(graceful=False),
        signal.SIGUSR1: lambda signum: log.info("status: %s", server.status()),
    })


class RetireRequest:
    """Tells the master once, when ``--max-requests`` is reached, that this worker wants a successor."""

    def __init__(self, channel: socket.socket, limit: int) -> None:
        self._channel = channel
        self._limit = limit
        self._sent = False
        self._lock = threading.Lock()

    def __call__(self, served: int) -> None:
        """Called after each accepted connection with the worker's total so far."""
        if not self._limit or served < self._limit:
            return
        with self._lock:
            if self._sent:
                return
            self._sent = True
        log.info("worker served %d connections (max-requests): asking to be replaced", served)
        with contextlib.suppress(OSError):  # a gone master is noticed elsewhere
            self._channel.send(RETIRE_ME)


def boot(server: Server, plan: WorkerPlan) -> Acceptor:
    """Everything between ``fork()`` and "ready": any exception here is a boot failure."""
    server.after_fork_in_child()
    die_with_parent(plan.master_pid)
    for fd in plan.foreign_fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    install_worker_signals(server)
    server.connections = ScoredConnections(
        plan.board, plan.slot, RetireRequest(plan.channel, plan.max_requests))
    lifecycle = server.lifecycle
    acceptor = plan.mode.worker_acceptor(server, plan.lane, plan.channel, lambda: lifecycle.request_stop(graceful=True))
    server.use_acceptor(acceptor)
    server.worker_init()
    signal.pthread_sigmask(signal.SIG_SETMASK, plan.signal_mask)
    return acceptor


def drain(server: Server, acceptor: Acceptor) -> None:
    """Serve the connections only this worker can take (own backlog, channel queue) before exiting."""
    lifecycle = server.lifecycle
    while not lifecycle.past_deadline():
        accepted = acceptor.accept()
        if accepted is None:
            return
        server.handle_connection(*accepted, main_thread=True)


def run_worker(server: Server, plan: WorkerPlan) -> NoReturn:
    """The whole life of a worker process; never returns."""
    status = 1
    try:
        try:
            acceptor = boot(server, plan)
            plan.channel.send(READY)
        except BaseException as exc:
            log.error("worker %d (pid %d) failed to boot: %r", plan.number, os.getpid(), exc, exc_info=exc)
            status = WORKER_BOOT_ERROR
            _exit(status)
        log.debug("worker %d (pid %d) ready", plan.number, os.getpid())
        if server.requested_address.is_datagram:  # the listener may be a lane's own socket by now
            plan.inner.serve_datagrams(server)
        else:
            plan.inner.serve(server)
        if plan.mode.worker_drains:
            drain(server, acceptor)
        status = 0
    except BaseException as exc:
        log.critical("worker %d (pid %d) crashed: %r", plan.number, os.getpid(), exc, exc_info=exc)
    _exit(status)


def _exit(status: int) -> NoReturn:
    for handler in logging.getLogger().handlers + log.handlers:
        with contextlib.suppress(Exception):
            handler.flush()
    os._exit(status)
