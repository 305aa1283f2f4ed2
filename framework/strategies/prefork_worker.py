"""One pre-forked worker process: boot, tell the master it is ready, run the inner strategy, exit.

Everything here runs in the child after :func:`framework.processes.fork`
and ends in :func:`framework.processes.exit_child`: a worker never returns
into the master's code.  Signals stay held from the fork until the worker's
own handlers are in place, so a signal aimed at a booting worker waits for
them.  The worker enters its role with one call,
:meth:`~framework.strategies.base.Host.enter_child`, which gives it its
acceptor, its scoreboard counters and its run.

Exit statuses the master reads: 0 after a requested stop,
:data:`WORKER_BOOT_ERROR` when booting failed (the master then stops instead
of forking replacements in a loop), 1 when the inner strategy crashed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import socket
import threading
import time
from typing import NoReturn

from framework.accepting import Acceptor
from framework.processes import Forked, exit_child
from framework.signals import MASTER_ONLY_SIGNALS, start_thread_without_signals
from framework.strategies.accept_modes import AcceptMode
from framework.strategies.base import ChildRole, Host, Run, Strategy
from framework.strategies.scoreboard import Scoreboard, ScoredConnections

log = logging.getLogger("forkthread")

#: Exit status of a worker that failed before it was ready (gunicorn uses 3 too).
WORKER_BOOT_ERROR = 3
#: Messages a worker sends the master on its channel.
READY = b"R"
RETIRE_ME = b"Q"
#: The signal a worker gets when its master dies (a graceful stop).
PARENT_DEATH_SIGNAL = signal.SIGTERM
PR_SET_PDEATHSIG = 1


@dataclasses.dataclass(frozen=True)
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
    #: ``--worker-timeout``: the worker beats on the scoreboard (None: it does not).
    worker_timeout: float | None = None


@dataclasses.dataclass(frozen=True)
class WorkerStrategy(Strategy):
    """The inner strategy as one worker runs it: the same serving, described as that worker."""

    name = "preforked-worker"
    description = "one worker of a pre-forked pool"

    inner: Strategy
    number: int
    accept: str

    def start(self, host: Host) -> Run:
        """The inner strategy's run, described as this worker."""
        return WorkerRun(self, host, self.inner.start(host))

    def can_serve_datagrams(self) -> bool:
        """As the inner strategy."""
        return self.inner.can_serve_datagrams()

    def carries_blocking_handlers(self) -> bool:
        """As the inner strategy."""
        return self.inner.carries_blocking_handlers()

    def describe(self) -> str:
        """``preforked-worker(3,accept=shared,worker=iterative)``."""
        return f"{self.name}({self.number},accept={self.accept},worker={self.inner.describe()})"


class WorkerRun(Run):
    """A worker's run: the inner run's serving and counts, the worker's description."""

    def __init__(self, strategy: WorkerStrategy, host: Host, inner: Run) -> None:
        super().__init__(strategy, host)
        self.inner = inner

    def serve(self) -> None:
        """Serve as the inner strategy does."""
        self.inner.serve()

    def serve_datagrams(self) -> None:
        """Answer datagrams as the inner strategy does."""
        self.inner.serve_datagrams()

    def counts(self) -> tuple[int, int]:
        """The inner run's counts: this worker's own."""
        return self.inner.counts()


def die_with_parent(master_pid: int) -> None:
    """Ask the kernel for :data:`PARENT_DEATH_SIGNAL` when the master dies; exit if it already has.

    ``PR_SET_PDEATHSIG`` covers a master that dies later; the ``getppid()``
    check covers one that died between ``fork()`` and the ``prctl``.
    """
    from framework import libc  # only here: a worker's own business

    if libc.prctl is not None:
        libc.prctl(PR_SET_PDEATHSIG, int(PARENT_DEATH_SIGNAL), 0, 0, 0)
    if os.getppid() != master_pid:
        os._exit(0)


def install_worker_signals(host: Host) -> None:
    """Drop the master's signal handling and install the worker's own, deliberately.

    TERM stops gracefully, INT and QUIT quickly, USR1 logs this worker's
    status line; HUP, TTIN and TTOU are the master's business and ignored
    (CHLD went back to its default at the fork).
    """
    lifecycle = host.lifecycle
    lifecycle.signals.restore()
    for signum in MASTER_ONLY_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    lifecycle.install_signals({
        signal.SIGTERM: lambda signum: lifecycle.request_stop(graceful=True),
        signal.SIGINT: lambda signum: lifecycle.request_stop(graceful=False),
        signal.SIGQUIT: lambda signum: lifecycle.request_stop(graceful=False),
        signal.SIGUSR1: lambda signum: log.info("status: %s", host.status()),
    })


class RetireRequest:
    """Tells the master once, when ``--max-requests`` is reached, that this worker wants a successor."""

    def __init__(self, channel: socket.socket, limit: int) -> None:
        self._channel = channel
        self._limit = limit
        self._sent = False
        self._lock = threading.Lock()

    @classmethod
    def for_limit(cls, channel: socket.socket, limit: int) -> RetireRequest | None:
        """The request for a *limit* of connections; None without one, so that nothing runs per connection."""
        return cls(channel, limit) if limit else None

    def __call__(self, served: int) -> None:
        """Called after each admitted connection with the worker's total so far."""
        if not self._limit or served < self._limit:
            return
        with self._lock:
            if self._sent:
                return
            self._sent = True
        log.info("worker served %d connections (max-requests): asking to be replaced", served)
        with contextlib.suppress(OSError):  # a gone master is noticed elsewhere
            self._channel.send(RETIRE_ME)


def start_heartbeat(board: Scoreboard, slot: int, worker_timeout: float) -> None:
    """Beat on the scoreboard, from a thread of its own, often enough for *worker_timeout*.

    A thread, not the serving loop: a worker serving a long connection is not
    silent.  What stops the heartbeat is what stops the whole process: SIGSTOP,
    a freeze in the kernel, or code that holds the GIL without end.
    """
    interval = min(1.0, worker_timeout / 4)

    def beat() -> None:
        while True:
            board.beat(slot, time.monotonic())
            time.sleep(interval)

    thread = threading.Thread(target=beat, name="heartbeat", daemon=True)
    start_thread_without_signals(thread.start)


def boot(host: Host, plan: WorkerPlan, forked: Forked) -> tuple[Acceptor, Run]:
    """Everything between ``fork()`` and "ready": any exception here is a boot failure."""
    die_with_parent(plan.master_pid)
    lifecycle = host.lifecycle
    acceptor = plan.mode.worker_acceptor(host, plan.lane, plan.channel, lambda: lifecycle.request_stop(graceful=True))
    run = host.enter_child(ChildRole(
        acceptor=acceptor,
        connections=ScoredConnections(plan.board, plan.slot, RetireRequest.for_limit(plan.channel, plan.max_requests)),
        keep_listener=plan.mode.keeps_listener(plan.lane),
        strategy=WorkerStrategy(plan.inner, plan.number, plan.mode.name),
        worker=True,
    ))
    assert run is not None
    install_worker_signals(host)
    if plan.worker_timeout is not None:
        start_heartbeat(plan.board, plan.slot, plan.worker_timeout)
    forked.release_signals()
    return acceptor, run


def drain(host: Host, acceptor: Acceptor, most: int | None = None) -> None:
    """Before exiting, serve the connections waiting for this worker: every one, or at most *most*.

    Every one where nobody else can take them (a reuse-port lane's backlog, a
    channel's queue).  One on a listener waited on exclusively
    (:attr:`~framework.accepting.Acceptor.exclusive`): a connection wakes
    one waiting worker and no other, so a worker woken and then stopped (a
    stop, a reload, a recycle) would leave that client to wait for the next
    connection to wake someone.  Each of its waits is followed by an accept
    or by the end of its run, so at most one such connection is its to take
    (another worker may have taken it meanwhile: then this one takes the
    next, or none).
    """
    lifecycle = host.lifecycle
    served = 0
    while (most is None or served < most) and not lifecycle.past_deadline() and acceptor.waiting():
        accepted = acceptor.accept()
        if accepted is None:
            return
        host.serve_connection(*accepted, main_thread=True)
        served += 1


def run_worker(host: Host, plan: WorkerPlan, forked: Forked, datagrams: bool) -> NoReturn:
    """The whole life of a worker process; never returns."""
    status = 1
    try:
        try:
            acceptor, run = boot(host, plan, forked)
            plan.channel.send(READY)
        except BaseException as exc:
            log.error("worker %d (pid %d) failed to boot: %r", plan.number, os.getpid(), exc, exc_info=exc)
            exit_child(WORKER_BOOT_ERROR)
        log.debug("worker %d (pid %d) ready", plan.number, os.getpid())
        if datagrams:
            run.serve_datagrams()
        else:
            run.serve()
        if plan.mode.worker_drains:
            drain(host, acceptor)
        elif acceptor.exclusive and not datagrams:
            drain(host, acceptor, most=1)
        status = 0
    except BaseException as exc:
        log.critical("worker %d (pid %d) crashed: %r", plan.number, os.getpid(), exc, exc_info=exc)
    exit_child(status)
