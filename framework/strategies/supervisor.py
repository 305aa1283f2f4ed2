"""The pre-forked master: forks workers, keeps their number, replaces and stops them (gunicorn's arbiter).

The master serves no connection itself (except to accept and pass them in
``passfd`` mode).  Its loop sleeps in ``poll`` on the lifecycle's wakeup
pipe, one channel per worker and, for ``passfd``, the listener; signals only
record and wake it (:mod:`framework.signals`), and everything else happens
in the loop:

* a worker that exits unexpectedly is reaped and replaced at once; when
  crashes come in a burst, respawns back off exponentially;
* a worker that exits before saying "ready" is a boot failure: the master
  stops every worker and ends with :class:`~framework.strategies.base.ServeError`
  (exit status 3) rather than forking replacements in a loop;
* TTIN/TTOU change the number of workers, HUP replaces them all (new ones
  first, old ones stopped gracefully once their successors are ready), a
  worker past ``--max-requests`` asks to be replaced the same way;
* TERM stops gracefully within the graceful timeout (then SIGKILL), INT and
  QUIT quickly; USR1 logs the master's status line and is forwarded;
* with ``--worker-timeout``, a worker whose heartbeat (on the scoreboard) is
  that old -- stopped, or stuck where even its heartbeat thread cannot run --
  is killed (SIGKILL) and replaced, as gunicorn's arbiter does.

Every exit path reaps every worker.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import math
import os
import select
import signal
import socket
import time

from framework.accepting import ListenerWatch
from framework.processes import exit_child, fork
from framework.signals import SignalAction
from framework.strategies.accept_modes import ACCEPT_MODES, PASSED_DONE, AcceptModeError, pass_connection
from framework.strategies.base import Host, ServeError, Strategy
from framework.strategies.pool import RESPAWN_BACKOFF_MAX, PoolRun, PoolWorker, worker_max_requests
from framework.strategies.prefork_worker import WORKER_BOOT_ERROR, WorkerPlan, run_worker
from framework.strategies.scoreboard import Scoreboard

log = logging.getLogger("forkthread")
#: After a quick stop, workers get this long before SIGKILL.
QUICK_STOP_GRACE = 2.0
#: Grace beyond the graceful deadline before SIGKILL (lets a worker close and exit).
KILL_MARGIN = 0.5
#: The master's loop wakes at least this often (a safety net; signals and channels wake it anyway).
TICK = 1.0
#: passfd: how soon to retry handing out a connection when every channel with room behind it was full.
PASS_RETRY = 0.01


@dataclasses.dataclass(eq=False, kw_only=True)
class Worker(PoolWorker):
    """The master's record of one worker process (retiring: a stop signal was sent; SIGKILL at kill_at)."""

    pid: int
    kill_at: float = math.inf
    killed: bool = False
    #: passfd: connections handed to this worker.
    passed: int = 0
    #: passfd: connections handed to this worker that it has not closed yet (it says PASSED_DONE).
    in_flight: int = 0

    def label(self) -> str:
        """``worker 3 (pid 1234)``."""
        return f"worker {self.number} (pid {self.pid})"


def describe_pool(workers: int, accept: str, inner: Strategy) -> str:
    """``preforked(workers=4,accept=shared,worker=iterative)``: the pool on a status line."""
    return f"preforked(workers={workers},accept={accept},worker={inner.describe()})"


def describe_exit(status: int) -> str:
    """A wait status in words: ``exit status 3`` or ``killed by SIGKILL``."""
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit status {code}"


@dataclasses.dataclass(frozen=True)
class PoolConfig:
    """What the master keeps: the pool's size, accept mode, workers' strategy and recycling."""

    workers: int
    accept: str
    inner: Strategy
    max_requests: int = 0
    max_requests_jitter: int = 0
    #: Kill and replace a worker whose heartbeat is this old (None: no heartbeat).
    worker_timeout: float | None = None


class Supervisor(PoolRun[Worker]):
    """The master of one pre-forked serve: its workers (by pid), their lanes and channels, the scoreboard."""

    def __init__(self, strategy: Strategy, host: Host, pool: PoolConfig) -> None:
        super().__init__(strategy, host)
        self.pool = pool
        self.mode = ACCEPT_MODES[pool.accept]()
        self._datagrams = False  # serve_datagrams(): workers answer datagrams instead of accepting
        self.target = pool.workers
        self.board = Scoreboard()
        self._stop_sent: bool | None = None  # None: not yet; else whether it was a quick stop
        self._pending: collections.deque[tuple[socket.socket, str]] = collections.deque()
        #: passfd: most connections a worker is passed at once (its inner strategy's bound; None: no bound).
        self._capacity = pool.inner.capacity()
        self._listener = ListenerWatch(host.listener.fileno(), lambda fd: self._poller.register(fd, select.POLLIN),
                                       self._poller.unregister) if self.mode.master_accepts else None

    # -- counting -----------------------------------------------------------------

    def scoreboard(self) -> Scoreboard:
        """The board the workers publish their counts on (made with the master)."""
        return self.board

    def running(self) -> list[str]:
        """The workers serving now, each with how many connections."""
        busy = [(worker, self.board.read(worker.slot)[1]) for worker in self.workers.values()]
        return [f"worker {worker.number} (pid {worker.pid}): {active} connection(s)"
                for worker, active in busy if active]

    def describe(self) -> str:
        """``preforked(workers=4,accept=shared,worker=iterative)``, with the pool's size now."""
        return describe_pool(self.target, self.pool.accept, self.pool.inner)

    def pool_status(self) -> str:
        """The pool part of the master's status line."""
        alive = [w for w in self.workers.values() if not w.retiring]
        return (f"workers={len(alive)}/{self.target} booting={sum(not w.ready for w in alive)}"
                f" retiring={len(self.workers) - len(alive)} pids={sorted(w.pid for w in alive)}")

    # -- the loop -----------------------------------------------------------------

    def serve(self) -> None:
        """Serve until stopped; every worker is reaped when this returns or raises."""
        self._run()

    def serve_datagrams(self) -> None:
        """The same master and pool; each worker answers datagrams on the shared socket.

        A worker runs its inner strategy's datagram loop (one loop, or
        ``--threads`` threads) instead of accepting; the kernel hands each
        datagram to one worker.
        """
        self._datagrams = True
        self._run()

    def _run(self) -> None:
        # The signal actions were installed by the server (main thread,
        # handle_signals): without them, channel end-of-file and a tick wake the loop.
        try:
            self.mode.prepare(self.host, self.pool.inner)
        except AcceptModeError as exc:
            raise ServeError(str(exc), exit_status=2) from None
        self._poller.register(self.lifecycle.wakeup_fd(), select.POLLIN)
        try:
            self._loop()
        finally:
            self._kill_and_reap_all()
            self._release()
        if self.boot_failure is not None:
            raise ServeError(self.boot_failure, exit_status=WORKER_BOOT_ERROR)

    def signal_actions(self) -> dict[int, SignalAction]:
        """The master's signal actions (installed by the server before it announces itself): the pool's, and
        TTIN/TTOU to grow and shrink it."""
        return {
            **super().signal_actions(),
            signal.SIGTTIN: self._add_worker,
            signal.SIGTTOU: self._remove_worker,
            signal.SIGCHLD: lambda signum: None,  # the wakeup is the point: the loop reaps
        }

    def _loop(self) -> None:
        wakeup_fd = self.lifecycle.wakeup_fd()
        while True:
            self._reap()
            if self.lifecycle.stopping:
                self._stop_workers()
                if not self.workers:
                    return
            else:
                self._manage()
                self._check_heartbeats()
            self._enforce_kill_deadlines()
            if self._pending:
                self._pass_pending()
            self._watch_listener()
            for fd, _ in self._poller.poll(self._poll_timeout()):
                if fd == wakeup_fd:
                    self.lifecycle.dispatch()
                elif self._listener is not None and self._listener.watching and fd == self.host.listener.fileno():
                    self._accept_and_pass()
                else:
                    self._channel_readable(fd)

    def _poll_timeout(self) -> int:
        now = time.monotonic()
        wake_at = now + TICK
        for worker in self.workers.values():
            if worker.retiring and not worker.killed:
                wake_at = min(wake_at, worker.kill_at)
        if not self.lifecycle.stopping and self._next_spawn_at > now:
            wake_at = min(wake_at, self._next_spawn_at)
        if self._pending and self._receivers():
            wake_at = min(wake_at, now + PASS_RETRY)
        return max(0, math.ceil((wake_at - now) * 1000))

    # -- signal actions (run in the loop) ----------------------------------------------

    def _replace_all(self, signum: int) -> None:
        if self.lifecycle.stopping:
            return
        log.info("SIGHUP: replacing all %d workers gracefully", len(self.workers))
        for worker in self.workers.values():
            worker.superseded = True
        self._crashes.clear()
        self._next_spawn_at = 0.0

    def _add_worker(self, signum: int) -> None:
        if self.target >= self.board.slots:
            log.warning("SIGTTIN: already at the most workers (%d)", self.target)
            return
        self.target += 1
        log.info("SIGTTIN: workers %d -> %d", self.target - 1, self.target)

    def _remove_worker(self, signum: int) -> None:
        if self.target <= 1:
            log.info("SIGTTOU: keeping the last worker")
            return
        self.target -= 1
        log.info("SIGTTOU: workers %d -> %d", self.target + 1, self.target)

    def _log_status(self, signum: int) -> None:
        log.info("status: %s %s", self.host.status(), self.pool_status())
        for worker in self.workers.values():
            self._signal(worker, signal.SIGUSR1)

    # -- keeping the pool -------------------------------------------------------------

    def _manage(self) -> None:
        fresh = [w for w in self.workers.values() if not w.retiring and not w.superseded]
        held = {w.lane for w in fresh}
        if time.monotonic() >= self._next_spawn_at:
            for lane in range(self.target):
                if lane not in held and not self._spawn(lane):
                    break
        ready_lanes = {w.lane for w in self.workers.values() if w.ready and not w.retiring and not w.superseded}
        for worker in list(self.workers.values()):
            if worker.retiring:
                continue
            if worker.lane >= self.target:
                # SIGTTOU: the pool shrank below this worker's lane.
                self._retire(worker)
            elif worker.superseded and worker.lane in ready_lanes:
                # HUP, max-requests: the successor on this lane is ready, the old worker may go.
                self._retire(worker)

    def _spawn(self, lane: int) -> bool:
        slot = self.board.allocate()
        if slot is None:
            log.error("no scoreboard slot left for another worker")
            return False
        master_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.spawned += 1
        max_requests = worker_max_requests(self.pool.max_requests, self.pool.max_requests_jitter)
        try:
            self.mode.before_spawn(self.host, lane)
        except OSError as exc:
            log.error("cannot prepare lane %d for a worker: %s", lane, exc)
            self.board.release(slot)
            self._next_spawn_at = time.monotonic() + RESPAWN_BACKOFF_MAX
            return False
        plan = WorkerPlan(
            number=self.spawned, lane=lane, slot=slot, channel=worker_end, mode=self.mode, inner=self.pool.inner,
            board=self.board, max_requests=max_requests, master_pid=os.getpid(),
            worker_timeout=self.pool.worker_timeout,
        )
        self.board.beat(slot, time.monotonic())  # booting counts as a sign of life
        # The other workers' channels and passed sockets, and other lanes' listeners:
        # closed at once in the worker, so its end-of-file really means its master is gone.
        foreign = [master_end.fileno(), *self._by_fd, *(sock.fileno() for sock, _ in self._pending),
                   *self.mode.foreign_fds(lane)]
        try:
            forked = fork(close_in_child=foreign)
        except OSError as exc:
            log.error("cannot fork a worker: %s", exc)
            master_end.close()
            worker_end.close()
            self.board.release(slot)
            self._next_spawn_at = time.monotonic() + RESPAWN_BACKOFF_MAX
            return False
        if forked.pid == 0:
            try:
                run_worker(self.host, plan, forked, self._datagrams)  # never returns
            finally:
                exit_child(WORKER_BOOT_ERROR)  # never return into the master's code
        pid = forked.pid
        worker_end.close()
        master_end.setblocking(False)
        worker = Worker(pid=pid, number=self.spawned, lane=lane, slot=slot, channel=master_end)
        self.workers[pid] = worker
        self._watch_channel(worker)
        log.info("booting worker %d (pid %d, lane %d)", worker.number, pid, lane)
        return True

    def _retire(self, worker: Worker, quick: bool = False) -> None:
        """Ask *worker* to stop (TERM: gracefully, QUIT: quickly) and arm its SIGKILL deadline."""
        now = time.monotonic()
        if quick:
            kill_at = now + QUICK_STOP_GRACE
        elif self.lifecycle.stopping:
            kill_at = self.lifecycle.deadline + KILL_MARGIN
        else:
            kill_at = now + self.host.graceful_timeout + KILL_MARGIN
        if worker.retiring and worker.kill_at <= kill_at:
            return
        worker.retiring = True
        worker.kill_at = min(worker.kill_at, kill_at)
        log.debug("stopping worker %d (pid %d)%s", worker.number, worker.pid, " quickly" if quick else "")
        self._signal(worker, signal.SIGQUIT if quick else signal.SIGTERM)

    def _stop_workers(self) -> None:
        if self._stop_sent is None or (self.quick and not self._stop_sent):
            self._stop_sent = self.quick
            for worker in list(self.workers.values()):
                self._retire(worker, quick=self.quick)

    def _enforce_kill_deadlines(self) -> None:
        now = time.monotonic()
        for worker in self.workers.values():
            if worker.retiring and not worker.killed and now >= worker.kill_at:
                active = self.board.read(worker.slot)[1]
                if active and self.lifecycle.stopping:
                    self.lifecycle.forced_end([f"worker {worker.number} (pid {worker.pid}): {active} connection(s)"],
                                              active)
                log.warning("worker %d (pid %d) did not stop in time: SIGKILL", worker.number, worker.pid)
                self._signal(worker, signal.SIGKILL)
                worker.killed = True

    def _check_heartbeats(self) -> None:
        """Kill (and so replace) every worker silent for longer than ``--worker-timeout``."""
        timeout = self.pool.worker_timeout
        if timeout is None:
            return
        now = time.monotonic()
        for worker in self.workers.values():
            silent = now - self.board.last_beat(worker.slot)
            if worker.retiring or silent <= timeout:
                continue  # a retiring worker has its own kill deadline
            served, active = self.board.read(worker.slot)
            log.warning("worker %d (pid %d) silent for %.1f s (--worker-timeout %g), serving %d connection(s)"
                        " (%d served): SIGKILL, replacing it", worker.number, worker.pid, silent, timeout, active,
                        served)
            worker.retiring = worker.killed = True
            self._signal(worker, signal.SIGKILL)

    def _signal(self, worker: Worker, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):  # already exited, not reaped yet
            os.kill(worker.pid, signum)

    # -- reaping -------------------------------------------------------------------------

    def _reap(self) -> None:
        for pid, worker in list(self.workers.items()):
            try:
                reaped, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:  # someone else reaped it (should not happen)
                reaped, status = pid, 0
            if reaped:
                self._exited(worker, status)

    def _exited(self, worker: Worker, status: int) -> None:
        del self.workers[worker.pid]
        self._read_channel(worker)  # a "ready" still unread must not make a crash look like a boot failure
        self._close_channel(worker)
        self.retired_served += self.board.read(worker.slot)[0]
        self.board.release(worker.slot)
        if worker.lane >= self.target and all(other.lane != worker.lane for other in self.workers.values()):
            self.mode.lane_closed(worker.lane)
        how = describe_exit(status)
        if worker.retiring or self.lifecycle.stopping:
            log.info("worker %d (pid %d) stopped (%s)", worker.number, worker.pid, how)
        elif not worker.ready:
            self.boot_failure = (f"worker {worker.number} (pid {worker.pid}) failed to boot ({how});"
                                 " stopping instead of respawning: see the log above")
            log.error("%s", self.boot_failure)
            self.quick = True
            self.lifecycle.request_stop(graceful=False)
        else:
            log.warning("worker %d (pid %d) died unexpectedly (%s): replacing it", worker.number, worker.pid, how)
            self._crashed()

    def _kill_and_reap_all(self) -> None:
        """The last resort on any way out: SIGKILL what is left and wait for it."""
        for worker in list(self.workers.values()):
            self._signal(worker, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(worker.pid, 0)
            self._close_channel(worker)
            self.board.release(worker.slot)
        self.workers.clear()

    # -- channels ------------------------------------------------------------------------

    def _other_message(self, worker: Worker, message: bytes) -> None:
        if message == PASSED_DONE:
            worker.in_flight = max(0, worker.in_flight - 1)

    # -- passfd: the master accepts --------------------------------------------------------

    def _watch_listener(self) -> None:
        if self._listener is None:
            return
        room = not self.lifecycle.stopping and self._may_accept()
        self._listener.update(self.host.acceptor.wants_polling(room))

    def _may_accept(self) -> bool:
        """Nothing accepted is waiting to be passed, and some worker has room for one more."""
        return not self._pending and bool(self._receivers())

    def _receivers(self) -> list[Worker]:
        """Workers with room for a connection now, least loaded first (fresh before superseded).

        Room: fewer connections passed and not yet closed than the worker's
        capacity (UNP §30.9 passes only to an idle child); the clients beyond
        wait in the kernel's backlog, never in a busy worker's channel.
        """
        capacity = self._capacity
        candidates = [w for w in self.workers.values() if w.ready and not w.retiring and w.channel_open
                      and (capacity is None or w.in_flight < capacity)]
        return sorted(candidates, key=lambda worker: (worker.superseded, worker.in_flight, worker.passed))

    def _accept_and_pass(self) -> None:
        for accepted in self.host.acceptor.accept_batch(self._may_accept):
            self._pending.append(accepted)
            self._pass_pending()

    def _pass_pending(self) -> None:
        while self._pending:
            sock, peer = self._pending[0]
            for worker in self._receivers():
                try:
                    passed = pass_connection(worker.channel, sock, peer)
                except OSError:  # the worker just died: try the next one
                    continue
                if passed:
                    worker.passed += 1
                    worker.in_flight += 1
                    break
            else:
                # Every channel is full (retry soon), or no worker has room (a PASSED_DONE or
                # a READY on a channel wakes the loop).
                return
            self._pending.popleft()
            sock.close()

    def _release(self) -> None:
        if self._listener is not None:
            self._listener.update(False)
        for sock, _ in self._pending:
            sock.close()
        self._pending.clear()
        self.mode.close()
        self.board.close()
