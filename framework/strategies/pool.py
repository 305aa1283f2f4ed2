"""What a supervisor of a worker pool does the same whichever its workers are: processes or sub-interpreters.

The pre-forked master (:mod:`framework.strategies.supervisor`) and the
``interpreters`` main interpreter (:mod:`framework.strategies.interpreters`)
keep the same record of each worker (its lane, scoreboard slot, channel,
whether it said "ready", is superseded or retiring), count the pool from the
scoreboard, read the same messages on the channels (:data:`READY`,
:data:`RETIRE_ME`), stop on the same signals and back off the same way when
workers crash.  That lives here, once; how a worker is started, told to stop
and collected stays with each.
"""

from __future__ import annotations

import abc
import collections
import dataclasses
import logging
import select
import signal
import socket
import time
from typing import Generic, TypeVar

from framework.signals import SignalAction
from framework.strategies.base import Host, Run, Strategy
from framework.strategies.prefork_worker import READY, RETIRE_ME
from framework.strategies.scoreboard import Scoreboard

log = logging.getLogger("forkthread")
#: More than this many crashes within CRASH_WINDOW seconds and respawns back off.
CRASH_BURST = 3
CRASH_WINDOW = 10.0
RESPAWN_BACKOFF_START = 0.1
RESPAWN_BACKOFF_MAX = 5.0


@dataclasses.dataclass(eq=False, kw_only=True)
class PoolWorker:
    """A supervisor's record of one worker: its place in the pool, its slot, its channel and its state."""

    number: int
    #: The worker's place in the pool (0 .. workers-1): its successor takes the same lane.
    lane: int
    slot: int
    #: The supervisor's end of the worker's channel (non-blocking).
    channel: socket.socket
    #: Said "ready" (booted).
    ready: bool = False
    #: To be replaced once a successor is ready (HUP, max-requests).
    superseded: bool = False
    #: Told to stop.
    retiring: bool = False
    channel_open: bool = True

    def label(self) -> str:
        """How the log names this worker: ``worker 3``."""
        return f"worker {self.number}"

    def ready_label(self) -> str:
        """How the log names this worker when it says "ready"."""
        return self.label()


W = TypeVar("W", bound=PoolWorker)


def respawn_delay(crashes: collections.deque[float], now: float) -> float:
    """Note a worker crash at *now* in *crashes*; how long to wait before the next respawn (0: none).

    More than :data:`CRASH_BURST` crashes within :data:`CRASH_WINDOW` seconds
    and the delay doubles with each, up to :data:`RESPAWN_BACKOFF_MAX` (logged).
    """
    crashes.append(now)
    while crashes and crashes[0] < now - CRASH_WINDOW:
        crashes.popleft()
    burst = len(crashes) - CRASH_BURST
    if burst <= 0:
        return 0.0
    delay = min(RESPAWN_BACKOFF_MAX, RESPAWN_BACKOFF_START * 2.0 ** (burst - 1))
    log.warning("%d worker crashes in %.0fs: next respawn in %.1fs", len(crashes), CRASH_WINDOW, delay)
    return delay


def worker_max_requests(max_requests: int, jitter: int) -> int:
    """A new worker's ``--max-requests``, plus up to ``--max-requests-jitter`` at random (0: no limit)."""
    if max_requests and jitter:
        # Imported here: importing random registers its reseed as an at-fork
        # hook, run in every child a forking server makes (~20 pages copied).
        import random

        max_requests += random.randint(0, jitter)
    return max_requests


class PoolRun(Run, Generic[W]):
    """The supervision common to both pools: workers by key, their channels on one poll, counts, crashes."""

    def __init__(self, strategy: Strategy, host: Host) -> None:
        super().__init__(strategy, host)
        self.lifecycle = host.lifecycle
        self.workers: dict[int, W] = {}
        self.retired_served = 0
        self.spawned = 0
        self.boot_failure: str | None = None
        self.quick = False
        self._crashes: collections.deque[float] = collections.deque()
        self._next_spawn_at = 0.0
        self._poller = select.poll()
        self._by_fd: dict[int, W] = {}

    @abc.abstractmethod
    def scoreboard(self) -> Scoreboard | None:
        """The board the workers publish their counts on (None: not made yet)."""

    def counts(self) -> tuple[int, int]:
        """Connections served by every worker so far (past ones included), and active now."""
        served, active = self.retired_served, 0
        board = self.scoreboard()
        if board is not None:
            for worker in self.workers.values():
                worker_served, worker_active = board.read(worker.slot)
                served += worker_served
                active += worker_active
        return served, active

    # -- signals ----------------------------------------------------------------------

    def signal_actions(self) -> dict[int, SignalAction]:
        """TERM, INT, QUIT, HUP and USR1 (installed by the server before it announces itself)."""
        return {
            signal.SIGTERM: lambda signum: self.lifecycle.request_stop(graceful=True),
            signal.SIGINT: self._quick_stop,
            signal.SIGQUIT: self._quick_stop,
            signal.SIGHUP: self._replace_all,
            signal.SIGUSR1: self._log_status,
        }

    def _quick_stop(self, signum: int) -> None:
        self.quick = True
        self.lifecycle.request_stop(graceful=False)

    @abc.abstractmethod
    def _replace_all(self, signum: int) -> None:
        """HUP: replace every worker gracefully."""

    @abc.abstractmethod
    def _log_status(self, signum: int) -> None:
        """USR1: log the status line, and have each worker log its own."""

    # -- crashes ----------------------------------------------------------------------

    def _crashed(self) -> None:
        now = time.monotonic()
        delay = respawn_delay(self._crashes, now)
        if delay:
            self._next_spawn_at = now + delay

    # -- channels ---------------------------------------------------------------------

    def _watch_channel(self, worker: W) -> None:
        fd = worker.channel.fileno()
        self._by_fd[fd] = worker
        self._poller.register(fd, select.POLLIN)

    def _channel_readable(self, fd: int) -> None:
        worker = self._by_fd.get(fd)
        if worker is not None:
            self._read_channel(worker)

    def _read_channel(self, worker: W) -> None:
        while worker.channel_open:
            try:
                message = worker.channel.recv(64)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                message = b""
            if not message:  # the worker is gone: its end is collected in the loop
                self._close_channel(worker)
                return
            if message == READY and not worker.ready:
                worker.ready = True
                log.info("%s ready", worker.ready_label())
            elif message == RETIRE_ME and not worker.superseded:
                worker.superseded = True
                log.info("%s reached max-requests: replacing it", worker.label())
            else:
                self._other_message(worker, message)

    def _other_message(self, worker: W, message: bytes) -> None:
        """A message this pool has its own meaning for (none here)."""

    def _close_channel(self, worker: W) -> None:
        if worker.channel_open:
            worker.channel_open = False
            fd = worker.channel.fileno()
            self._by_fd.pop(fd, None)
            self._poller.unregister(fd)
            worker.channel.close()
