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

import dataclasses
import math

from framework.limits import MAX_WORKERS, check_count
from framework.strategies.accept_modes import ACCEPT_MODES
from framework.strategies.base import Host, Strategy, StrategyOptions
from framework.strategies.supervisor import PoolConfig, Supervisor, describe_pool

#: ``--worker`` kind -> the strategy each worker runs.
WORKER_KINDS: dict[str, str] = {"iterative": "iterative", "threads": "prethreaded", "poll": "poll"}


def check_pool(workers: int, max_requests: int, max_requests_jitter: int) -> None:
    """:class:`ValueError` for a pool's size or recycling out of range (pre-forked processes, interpreters)."""
    check_count(workers, "--workers", MAX_WORKERS)
    if max_requests < 0 or max_requests_jitter < 0:
        raise ValueError("--max-requests and --max-requests-jitter must not be negative")


def worker_kind_options(options: StrategyOptions) -> frozenset[str]:
    """The options the ``--worker`` kind's strategy honours (none for an unknown kind)."""
    from framework.strategies import STRATEGIES, strategy_class

    inner_name = WORKER_KINDS.get(options.worker)
    return strategy_class(inner_name).honoured_options(options) if inner_name in STRATEGIES else frozenset()


def worker_kind_strategy(options: StrategyOptions) -> Strategy:
    """The inner strategy each worker of a pool runs for ``--worker`` (pre-forked processes, interpreters)."""
    from framework.strategies import STRATEGIES, create_strategy

    inner_name = WORKER_KINDS.get(options.worker)
    if inner_name is None:
        raise ValueError(f"unknown worker kind {options.worker!r} (choose from {', '.join(WORKER_KINDS)})")
    if inner_name not in STRATEGIES:
        raise ValueError(f"--worker {options.worker} needs the {inner_name!r} strategy, which is not available")
    return create_strategy(inner_name, options)


@dataclasses.dataclass(frozen=True)
class PreforkedStrategy(Strategy):
    """A master supervising pre-forked workers, each running an inner strategy."""

    name = "preforked"
    description = "a supervising master and N pre-forked workers (accept modes, inner strategies)"
    option_names = frozenset({"workers", "accept", "worker", "max_requests", "max_requests_jitter", "worker_timeout"})

    workers: int
    accept: str
    worker: str
    inner: Strategy
    max_requests: int = 0
    max_requests_jitter: int = 0
    worker_timeout: float | None = None

    def __post_init__(self) -> None:
        check_pool(self.workers, self.max_requests, self.max_requests_jitter)
        if self.accept not in ACCEPT_MODES:
            raise ValueError(f"unknown accept mode {self.accept!r} (choose from {', '.join(ACCEPT_MODES)})")
        if self.worker_timeout is not None and not 0 < self.worker_timeout < math.inf:
            raise ValueError(f"--worker-timeout must be a finite number of seconds > 0, not {self.worker_timeout}")

    @classmethod
    def from_options(cls, options: StrategyOptions) -> Strategy:
        """Build the pool from ``--workers``, ``--accept``, ``--worker``, ``--max-requests[-jitter]``
        and ``--worker-timeout``."""
        return cls(options.pool_size(), options.accept, options.worker, worker_kind_strategy(options),
                   max_requests=options.max_requests, max_requests_jitter=options.max_requests_jitter,
                   worker_timeout=options.worker_timeout)

    @classmethod
    def honoured_options(cls, options: StrategyOptions) -> frozenset[str]:
        """The pool's own options and those of the ``--worker`` kind's strategy."""
        return cls.option_names | worker_kind_options(options)

    def start(self, host: Host) -> Supervisor:
        """The master of one serve: it forks the workers when it serves."""
        pool = PoolConfig(self.workers, self.accept, self.inner, self.max_requests, self.max_requests_jitter,
                          self.worker_timeout)
        return Supervisor(self, host, pool)

    def can_serve_datagrams(self) -> bool:
        """With the shared socket (``--accept shared`` or ``lock``) and a worker kind that serves datagrams."""
        return self.accept in ("shared", "lock") and self.inner.can_serve_datagrams()

    def carries_blocking_handlers(self) -> bool:
        """As the workers' inner strategy: ``iterative`` and ``threads`` do, ``poll`` does not."""
        return self.inner.carries_blocking_handlers()

    def describe(self) -> str:
        """``preforked(workers=4,accept=shared,worker=iterative)``."""
        return describe_pool(self.workers, self.accept, self.inner)
