"""The interpreters strategy: a supervising main interpreter and N sub-interpreters, each with its own GIL.

Python 3.12 gave each isolated sub-interpreter its own GIL (PEP 684) and
3.13 the means to run code in one from Python (``_interpreters``; public in
3.14 as :mod:`concurrent.interpreters`, PEP 734; :mod:`framework.subinterpreters`
hides which).  So one process can run Python code on every core, as the
pre-forked pool does with processes: ``--workers N`` sub-interpreters, each
on a thread of its own, each accepting from the shared listener (a
duplicated descriptor) and serving with the inner kind a pre-forked worker
has (``--worker iterative|threads|poll``,
:func:`~framework.strategies.preforked.worker_kind_strategy`).  A worker
(:mod:`framework.strategies.interpreter_worker`) makes the server again from
its import path, so a server defined in ``__main__`` cannot be carried, nor
TLS (an ``SSLContext`` cannot cross interpreters) nor datagrams.

The main interpreter serves no connection.  Signals stay with it (a
sub-interpreter cannot handle one); its loop sleeps in ``poll`` on the
lifecycle's wakeup pipe and one channel per worker, as the pre-forked
master does (:mod:`framework.strategies.supervisor`), and:

* replaces a worker whose thread ended unasked, logging once the traceback
  that ended it; a worker that ends before saying "ready" is a boot
  failure: every worker is stopped and serving ends with exit status 3;
* TERM stops gracefully (each worker is told on its channel and keeps the
  graceful deadline itself), INT and QUIT quickly; USR1 logs the status
  line, and each worker logs its own; HUP replaces every worker;
* a worker past ``--max-requests`` asks to be replaced, and is stopped once
  its successor is ready.

A worker cannot be killed: one whose code never returns (a handler in an
endless computation) keeps the process alive past the deadline, which is
logged, and then the process exits without waiting for it.  Nothing here
forks (:func:`framework.processes.fork` refuses while a sub-interpreter
exists: the child would abort).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import pickle
import select
import socket
import sys
import threading
import time

from framework import subinterpreters
from framework.signals import start_thread_without_signals
from framework.strategies.base import Host, ServeError, Strategy, StrategyOptions
from framework.strategies.interpreter_worker import STATUS, STOP, STOP_QUICKLY, WorkerSpec, code_for
from framework.strategies.pool import PoolRun, PoolWorker, worker_max_requests
from framework.strategies.prefork_worker import WORKER_BOOT_ERROR
from framework.strategies.preforked import check_pool, worker_kind_options, worker_kind_strategy
from framework.strategies.scoreboard import Scoreboard
from framework.strategies.supervisor import KILL_MARGIN, TICK

log = logging.getLogger("forkthread")

#: Past the graceful deadline (and KILL_MARGIN), how long workers may still take before the process leaves them.
ABANDON_AFTER = 5.0
#: Exit status when a worker could not be stopped.
WORKER_STUCK = 1


@dataclasses.dataclass(frozen=True)
class InterpretersStrategy(Strategy):
    """A main interpreter supervising *workers* isolated sub-interpreters, each running *inner*."""

    name = "interpreters"
    description = "a supervising main interpreter and N sub-interpreters with their own GIL (Python 3.13+)"
    option_names = frozenset({"workers", "worker", "max_requests", "max_requests_jitter"})

    workers: int
    worker: str
    inner: Strategy
    max_requests: int = 0
    max_requests_jitter: int = 0

    def __post_init__(self) -> None:
        check_pool(self.workers, self.max_requests, self.max_requests_jitter)

    @classmethod
    def from_options(cls, options: StrategyOptions) -> Strategy:
        """``--workers``, ``--worker`` and ``--max-requests[-jitter]``; a clear error before Python 3.13."""
        reason = cls.unavailable()
        if reason is not None:
            raise ValueError(f"strategy interpreters {reason}")
        return cls(options.pool_size(), options.worker, worker_kind_strategy(options),
                   max_requests=options.max_requests, max_requests_jitter=options.max_requests_jitter)

    @classmethod
    def honoured_options(cls, options: StrategyOptions) -> frozenset[str]:
        """The pool's own options and those of the ``--worker`` kind's strategy."""
        return cls.option_names | worker_kind_options(options)

    @classmethod
    def unavailable(cls) -> str | None:
        """Before Python 3.13: the version needed, in one line."""
        return subinterpreters.unavailable()

    def start(self, host: Host) -> InterpretersRun:
        """The supervisor of one serve (it starts the workers when it serves); :class:`ServeError`
        (exit status 2) for a server its workers cannot make again (:func:`check_carriable`)."""
        return InterpretersRun(self, host, *check_carriable(host))

    def carries_blocking_handlers(self) -> bool:
        """As the workers' inner strategy: ``iterative`` and ``threads`` do, ``poll`` does not."""
        return self.inner.carries_blocking_handlers()

    def describe(self) -> str:
        """``interpreters(workers=2,worker=iterative)``."""
        return describe_pool(self.workers, self.inner)


def describe_pool(workers: int, inner: Strategy) -> str:
    """``interpreters(workers=2,worker=iterative)``: the pool on a status line."""
    return f"interpreters(workers={workers},worker={inner.describe()})"


@dataclasses.dataclass(eq=False, kw_only=True)
class Worker(PoolWorker):
    """The main interpreter's record of one worker (retiring: STOP or STOP_QUICKLY sent), and its thread."""

    thread: threading.Thread | None = None
    told_quickly: bool = False
    #: Set by the worker's thread when it ends: None, or the traceback that ended it.
    ended: bool = False
    failure: str | None = None

    def ready_label(self) -> str:
        """``worker 3 (lane 0)``."""
        return f"{self.label()} (lane {self.lane})"


def check_carriable(host: Host) -> tuple[str, bytes]:
    """The server's import path and pickled construction, or :class:`ServeError` (one line, exit 2)."""
    cls = type(host)
    name = cls.__qualname__
    if cls.__module__ == "__main__" or "<locals>" in name:
        raise ServeError(f"strategy interpreters: each worker imports the server by its import path, and"
                         f" {name} is defined in {'__main__' if cls.__module__ == '__main__' else 'a function'};"
                         " move it to a module", exit_status=2)
    args, kwargs = host.construction()
    # The worker gives its own listener and strategy; the rest is made again as given.
    # (The socket file's mode was set when the main interpreter bound it.)
    kwargs = {key: value for key, value in kwargs.items()
              if key not in ("strategy", "listener", "bind", "socket_mode")}
    if kwargs.get("tls") is not None:
        # An SSLContext cannot cross interpreters: the worker loads the same files again.
        from framework.tls import context_recipe  # loads OpenSSL: only with TLS

        recipe = context_recipe(kwargs["tls"])
        if recipe is None:
            raise ServeError("strategy interpreters carries TLS only for a context made by"
                             " framework.tls.server_context (--tls-cert): its files are loaded again in each worker",
                             exit_status=2)
        kwargs["tls"] = recipe
    try:
        arguments = pickle.dumps((args[:1], kwargs))
    except Exception as exc:
        raise ServeError(f"strategy interpreters cannot pass {name}'s arguments to its workers: {exc}",
                         exit_status=2) from None
    return f"{cls.__module__}:{name}", arguments


class InterpretersRun(PoolRun[Worker]):
    """The supervisor of one serve: the worker threads (by number), their channels, the scoreboard."""

    def __init__(self, strategy: InterpretersStrategy, host: Host, server: str, arguments: bytes) -> None:
        super().__init__(strategy, host)
        self.pool = strategy
        self.target = strategy.workers
        self._board: Scoreboard | None = None
        self._board_file = -1
        #: The server's import path and pickled construction, for the workers.
        self._server = server
        self._arguments = arguments

    # -- counting ---------------------------------------------------------------------

    def scoreboard(self) -> Scoreboard | None:
        """The board the workers publish their counts on (made when serving starts)."""
        return self._board

    def describe(self) -> str:
        """``interpreters(workers=2,worker=iterative)``, with the pool's size now."""
        return describe_pool(self.target, self.pool.inner)

    def pool_status(self) -> str:
        """The pool part of the status line."""
        alive = [w for w in self.workers.values() if not w.retiring]
        return (f"workers={len(alive)}/{self.target} booting={sum(not w.ready for w in alive)}"
                f" retiring={len(self.workers) - len(alive)} gil={subinterpreters.gil_state()}")

    # -- the loop ---------------------------------------------------------------------

    def serve(self) -> None:
        """Serve until stopped; every worker's thread has ended when this returns."""
        self._board, self._board_file = Scoreboard.in_memory_file()
        self._poller.register(self.lifecycle.wakeup_fd(), select.POLLIN)
        try:
            self._loop()
        finally:
            self._end()
        if self.boot_failure is not None:
            raise ServeError(self.boot_failure, exit_status=WORKER_BOOT_ERROR)

    def _loop(self) -> None:
        wakeup_fd = self.lifecycle.wakeup_fd()
        while True:
            self._collect()
            if self.lifecycle.stopping:
                self._stop_workers()
                if not self.workers or self._abandon():
                    return
            else:
                self._manage()
            for fd, _ in self._poller.poll(self._poll_timeout()):
                if fd == wakeup_fd:
                    self.lifecycle.dispatch()
                else:
                    self._channel_readable(fd)

    def _poll_timeout(self) -> int:
        now = time.monotonic()
        wake_at = now + TICK
        if not self.lifecycle.stopping and self._next_spawn_at > now:
            wake_at = min(wake_at, self._next_spawn_at)
        return max(0, int((wake_at - now) * 1000) + 1)

    # -- signal actions (run in the loop) ---------------------------------------------------

    def _replace_all(self, signum: int) -> None:
        if not self.lifecycle.stopping:
            log.info("SIGHUP: replacing all %d workers gracefully", len(self.workers))
            for worker in self.workers.values():
                worker.superseded = True

    def _log_status(self, signum: int) -> None:
        log.info("status: %s %s", self.host.status(), self.pool_status())
        for worker in self.workers.values():
            self._tell(worker, STATUS)

    # -- keeping the pool ---------------------------------------------------------------------

    def _manage(self) -> None:
        held = {w.lane for w in self.workers.values() if not w.retiring and not w.superseded}
        if time.monotonic() >= self._next_spawn_at:
            for lane in range(self.target):
                if lane not in held:
                    self._spawn(lane)
        ready_lanes = {w.lane for w in self.workers.values() if w.ready and not w.retiring and not w.superseded}
        for worker in list(self.workers.values()):
            if worker.superseded and not worker.retiring and worker.lane in ready_lanes:
                self._retire(worker)

    def _spawn(self, lane: int) -> None:
        assert self._board is not None
        slot = self._board.allocate()
        if slot is None:
            log.error("no scoreboard slot left for another worker")
            return
        self.spawned += 1
        max_requests = worker_max_requests(self.pool.max_requests, self.pool.max_requests_jitter)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        # Numbers the worker owns from now on: duplicates, so each side closes its own.
        spec = WorkerSpec(
            number=self.spawned, slot=slot, server=self._server, arguments=self._arguments,
            inner=self.pool.inner, max_requests=max_requests, listener_fd=os.dup(self.host.listener.fileno()),
            channel_fd=theirs.detach(), board_fd=os.dup(self._board_file), board_slots=self._board.slots,
            path=list(sys.path), log_level=log.getEffectiveLevel(), log_format=log_format(),
        )
        ours.setblocking(False)
        worker = Worker(number=self.spawned, lane=lane, slot=slot, channel=ours)
        worker.thread = threading.Thread(target=self._live, args=(worker, code_for(spec)),
                                         name=f"interpreter-worker-{worker.number}", daemon=True)
        self.workers[worker.number] = worker
        self._watch_channel(worker)
        # Born with the server's signals blocked, as every thread of the framework: they reach the main thread.
        start_thread_without_signals(worker.thread.start)
        log.info("booting worker %d (lane %d) in a sub-interpreter", worker.number, lane)

    def _live(self, worker: Worker, code: str) -> None:
        """A worker's thread: create its interpreter, run the worker in it to its end, destroy it."""
        try:
            interpreter = subinterpreters.Interpreter()
            try:
                worker.failure = interpreter.run(code)
            finally:
                interpreter.close()
        except BaseException as exc:  # the interpreter could not be made, run or destroyed
            worker.failure = worker.failure or f"{type(exc).__name__}: {exc}"
        finally:
            worker.ended = True
            self.lifecycle.wakeup.wake()

    def _retire(self, worker: Worker, quick: bool = False) -> None:
        if worker.retiring and (worker.told_quickly or not quick):
            return
        worker.retiring = True
        worker.told_quickly = quick
        self._tell(worker, STOP_QUICKLY if quick else STOP)

    def _tell(self, worker: Worker, message: bytes) -> None:
        with contextlib.suppress(OSError):  # a worker that has ended: collected on the next turn
            worker.channel.send(message)

    def _stop_workers(self) -> None:
        past = time.monotonic() >= self.lifecycle.deadline + KILL_MARGIN
        for worker in list(self.workers.values()):
            self._retire(worker, quick=self.quick or past)

    def _abandon(self) -> bool:
        """True once workers outlived the deadline by :data:`ABANDON_AFTER`: they are left, loudly."""
        if time.monotonic() < self.lifecycle.deadline + KILL_MARGIN + ABANDON_AFTER:
            return False
        stuck = sorted(self.workers)
        log.critical("workers %s did not stop (a sub-interpreter cannot be killed): exiting without them", stuck)
        return True

    # -- collecting ended workers ---------------------------------------------------------------

    def _collect(self) -> None:
        for worker in [w for w in self.workers.values() if w.ended]:
            assert worker.thread is not None and self._board is not None
            worker.thread.join()
            self._read_channel(worker)  # a "ready" still unread must not make a crash look like a boot failure
            self._close_channel(worker)
            del self.workers[worker.number]
            self.retired_served += self._board.read(worker.slot)[0]
            self._board.release(worker.slot)
            self._ended(worker)

    def _ended(self, worker: Worker) -> None:
        expected = worker.retiring or self.lifecycle.stopping
        if worker.failure is not None:
            log.error("worker %d died:\n%s", worker.number, worker.failure.rstrip())
        if expected and worker.failure is None:
            log.info("worker %d stopped", worker.number)
        elif not worker.ready:
            self.boot_failure = (f"worker {worker.number} failed to boot; stopping instead of starting it"
                                 " again: see the log above")
            log.error("%s", self.boot_failure)
            self.quick = True
            self.lifecycle.request_stop(graceful=False)
        elif not expected:
            log.warning("worker %d ended unexpectedly: replacing it", worker.number)
            self._crashed()

    def _end(self) -> None:
        """The way out: every worker told to stop and, unless stuck, its thread joined; the board released."""
        for worker in list(self.workers.values()):
            self._retire(worker, quick=True)
        deadline = time.monotonic() + ABANDON_AFTER
        for worker in list(self.workers.values()):
            assert worker.thread is not None
            worker.thread.join(max(0.0, deadline - time.monotonic()))
            if not worker.thread.is_alive():
                self._close_channel(worker)
                del self.workers[worker.number]
        self._poller.unregister(self.lifecycle.wakeup_fd())
        if self.workers:
            # A sub-interpreter still running would abort the interpreter's finalization: leave now.
            log.critical("exiting with %d workers still running", len(self.workers))
            for handler in logging.getLogger().handlers:
                handler.flush()
            os._exit(WORKER_STUCK)
        if self._board is not None:
            self._board.close()
            os.close(self._board_file)
            self._board = None


def log_format() -> str | None:
    """The format of this interpreter's first root log handler (None: none), for a worker to log alike."""
    handlers = logging.getLogger().handlers
    formatter = handlers[0].formatter if handlers else None
    return formatter._fmt if formatter is not None else None

