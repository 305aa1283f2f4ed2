"""The pre-forked strategy: a supervising master and a pool of worker processes (UNP §30.6-30.9).

The master (:mod:`framework.strategies.supervisor`) forks ``--workers N``
processes and supervises them as gunicorn's arbiter does; each worker
(:mod:`framework.strategies.prefork_worker`) gets its connections by one of
Stevens' accept modes (:mod:`framework.strategies.accept_modes`) and serves
them with an inner strategy: ``iterative`` (the classic pre-forked server),
``threads`` (the fork-and-thread hybrid: ``prethreaded`` with ``--threads``)
or ``poll`` (one event loop per core).

Status counts: in the master, *served* is every connection the pool has
served (workers that have exited included) and *active* the connections
the live workers are serving now, both read from a shared scoreboard; in a
worker they are that worker's own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from framework.strategies.accept_modes import ACCEPT_MODES
from framework.strategies.base import Strategy, StrategyOptions

if TYPE_CHECKING:
    from framework.server import Server
    from framework.strategies.prefork_worker import WorkerPlan
    from framework.strategies.supervisor import Supervisor

#: ``--worker`` kind -> the strategy each worker runs.
WORKER_KINDS: dict[str, str] = {"iterative": "iterative", "threads": "prethreaded", "poll": "poll"}


class PreforkedStrategy(Strategy):
    """A master supervising pre-forked workers, each running an inner strategy."""

    name = "preforked"
    description = "a supervising master and N pre-forked workers (accept modes, inner strategies)"

    def __init__(self, workers: int, accept: str, worker: str, inner: Strategy, *,
                 max_requests: int = 0, max_requests_jitter: int = 0) -> None:
        if workers < 1:
            raise ValueError(f"--workers must be at least 1, not {workers}")
        if accept not in ACCEPT_MODES:
            raise ValueError(f"unknown accept mode {accept!r} (choose from {', '.join(ACCEPT_MODES)})")
        if max_requests < 0 or max_requests_jitter < 0:
            raise ValueError("--max-requests and --max-requests-jitter must not be negative")
        self.workers = workers
        self.accept = accept
        self.worker = worker
        self.inner = inner
        self.max_requests = max_requests
        self.max_requests_jitter = max_requests_jitter
        self._supervisor: Supervisor | None = None
        self._worker_number: int | None = None

    @classmethod
    def from_options(cls, options: StrategyOptions) -> Strategy:
        """Build the pool from ``--workers``, ``--accept``, ``--worker`` and ``--max-requests[-jitter]``."""
        from framework.strategies import STRATEGIES, create_strategy

        inner_name = WORKER_KINDS.get(options.worker)
        if inner_name is None:
            raise ValueError(f"unknown worker kind {options.worker!r} (choose from {', '.join(WORKER_KINDS)})")
        if inner_name not in STRATEGIES:
            raise ValueError(f"--worker {options.worker} needs the {inner_name!r} strategy, which is not available")
        return cls(options.workers, options.accept, options.worker, create_strategy(inner_name, options),
                   max_requests=options.max_requests, max_requests_jitter=options.max_requests_jitter)

    def signal_actions(self, server: Server) -> dict[int, Callable[[int], None]]:
        """The master's actions (HUP, TTIN, TTOU, QUIT, CHLD...): the supervisor is made here, before serving."""
        return self._supervisor_for(server).signal_actions()

    def serve(self, server: Server) -> None:
        """Run the master until a stop is requested and every worker is reaped."""
        supervisor = self._supervisor_for(server)
        try:
            supervisor.run()
        finally:
            self._supervisor = None

    def serve_datagrams(self, server: Server) -> None:
        """The same master and pool; each worker answers datagrams on the shared socket.

        A worker runs its inner strategy's datagram loop (one loop, or
        ``--threads`` threads) instead of accepting; the kernel hands each
        datagram to one worker.
        """
        self.serve(server)

    def can_serve_datagrams(self) -> bool:
        """With the shared socket (``--accept shared`` or ``lock``) and a worker kind that serves datagrams."""
        return self.accept in ("shared", "lock") and self.inner.can_serve_datagrams()

    def _supervisor_for(self, server: Server) -> Supervisor:
        from framework.strategies.supervisor import Supervisor

        if self._supervisor is None or self._supervisor.server is not server:
            self._supervisor = Supervisor(server, self)
        return self._supervisor

    def become_worker(self, server: Server, plan: WorkerPlan) -> None:
        """In a freshly forked worker: from now on this object describes that worker."""
        self._supervisor = None
        self._worker_number = plan.number

    def counts(self, server: Server) -> tuple[int, int]:
        """The pool's totals in the master; the worker's own counts in a worker."""
        if self._supervisor is not None:
            return self._supervisor.counts()
        if self._worker_number is not None:
            return self.inner.counts(server)
        return super().counts(server)

    def describe(self) -> str:
        """``preforked(workers=4,accept=shared,worker=iterative)``, or ``preforked-worker(3,...)`` in a worker."""
        details = f"accept={self.accept},worker={self.inner.describe()}"
        if self._worker_number is not None:
            return f"preforked-worker({self._worker_number},{details})"
        workers = self._supervisor.target if self._supervisor is not None else self.workers
        return f"preforked(workers={workers},{details})"
