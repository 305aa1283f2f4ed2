"""Accept in the serving thread, serve elsewhere: the parts forking, threading and prethreaded share.

* :class:`AcceptLoop` waits on the listener and the process's wakeup pipe
  together, runs signal actions as they arrive, and leaves the listener out
  of the poll set while the strategy is at its bound or the acceptor backs
  off after a capacity error (clients then wait in the kernel's backlog).
* :func:`wind_down` is the stop phase: wait for the workers until
  the graceful deadline, then end them by force, then wait a bounded while.
* :class:`DispatchingStrategy` is the configuration (``--max-connections``)
  and :class:`DispatchingRun` the accept loop of a strategy that hands
  every accepted connection to a worker (a child process, a new thread, a
  pooled thread).
* :class:`LiveThreads` is a set of worker threads that each remove
  themselves when they end (no ever-growing list: bpo-37193), with the
  server's signals blocked in them.
"""

from __future__ import annotations

import abc
import dataclasses
import logging
import math
import select
import socket
import threading
import time
from collections.abc import Callable

from framework.accepting import Acceptor, ListenerWatch
from framework.lifecycle import Lifecycle
from framework.logthrottle import LogThrottle
from framework.signals import start_thread_without_signals
from framework.strategies.base import Host, Run, Strategy

log = logging.getLogger("forkthread")

#: After the graceful deadline, how long forced ends may take before the strategy gives up on them.
FORCE_GRACE = 5.0

#: How often forced ends are repeated meanwhile (a worker may register its socket late).
FORCE_INTERVAL = 0.1

#: Ended threads a :class:`LiveThreads` lists for :meth:`LiveThreads.join` before it forgets the finished ones.
ENDING_KEPT = 64


class AcceptLoop:
    """One ``poll`` over a wake-up descriptor and, when wanted, the listener.

    *wake_fd* is the process's wakeup pipe in a serving thread (then
    *on_wake* is ``lifecycle.dispatch``), or a stop pipe in a pool thread.
    :meth:`for_host` builds the former.  :meth:`close` at the end.

    For an :attr:`~framework.accepting.Acceptor.exclusive` acceptor, or with
    *exclusive* (pool threads of one process that all wait for the listener),
    the wait is an ``epoll`` holding the listener with ``EPOLLEXCLUSIVE``, as
    nginx waits: a connection wakes one of the workers waiting for it.  With
    ``poll`` every idle worker wakes, and all but one find nothing.
    """

    def __init__(self, acceptor: Acceptor, wake_fd: int, on_wake: Callable[[], object], *,
                 exclusive: bool = False) -> None:
        self._acceptor = acceptor
        self._wake_fd = wake_fd
        self._on_wake = on_wake
        self._epoll: select.epoll | None = None
        #: The wait itself, poll's or epoll's: timeout in seconds (None: none).
        self._poll: Callable[[float | None], list[tuple[int, int]]]
        register: Callable[[int], object]
        unregister: Callable[[int], object]
        if (exclusive or acceptor.exclusive) and hasattr(select, "EPOLLEXCLUSIVE"):
            epoll = self._epoll = select.epoll()
            epoll.register(wake_fd, select.EPOLLIN)
            register = lambda fd: epoll.register(fd, select.EPOLLIN | select.EPOLLEXCLUSIVE)  # noqa: E731
            unregister = epoll.unregister
            self._poll = lambda timeout: epoll.poll(-1 if timeout is None else timeout)
        else:
            poller = select.poll()
            poller.register(wake_fd, select.POLLIN)
            register = lambda fd: poller.register(fd, select.POLLIN)  # noqa: E731
            unregister = poller.unregister
            self._poll = lambda timeout: poller.poll(None if timeout is None else math.ceil(timeout * 1000))
        self._listener = ListenerWatch(acceptor.fileno(), register, unregister)
        #: True when the last :meth:`wait` found *wake_fd* readable.
        self.woke = False

    def close(self) -> None:
        """Release the epoll descriptor, if the loop has one (idempotent)."""
        if self._epoll is not None:
            self._epoll.close()
            self._epoll = None
            self._listener.watching = False

    @classmethod
    def for_host(cls, host: Host) -> AcceptLoop:
        """The serving thread's loop: the listener beside the lifecycle's wakeup pipe."""
        return cls(host.acceptor, host.lifecycle.wakeup_fd(), host.lifecycle.dispatch)

    def wait(self, *, accepting: bool, timeout: float | None = None) -> bool:
        """Block until the listener or the wake-up descriptor is ready, or *timeout* seconds pass.

        *on_wake* runs here.  Returns True when the listener is readable.
        With *accepting* false, or during the acceptor's capacity back-off,
        the listener is not polled at all: a level-triggered poll on a
        listener we will not accept from would spin.
        """
        backoff = self._acceptor.backoff_remaining() if accepting else 0.0
        self._listener.update(self._acceptor.wants_polling(accepting))
        if backoff:
            timeout = backoff if timeout is None else min(timeout, backoff)
        listener_ready = self.woke = False
        for fd, _ in self._poll(timeout):
            if fd == self._wake_fd:
                self.woke = True
                self._on_wake()
            else:
                listener_ready = True
        return listener_ready


def wind_down(lifecycle: Lifecycle, loop: AcceptLoop, live: Callable[[], int], force: Callable[[], object],
              running: Callable[[], list[str]], collect: Callable[[], None] = lambda: None,
              interval: float | None = None) -> None:
    """The stop phase: wait while ``live()`` workers remain, until the graceful deadline.

    Workers (or SIGCHLD) wake *loop* as they end; *collect* runs after every
    wakeup (or every *interval* seconds).  At the deadline what *running()*
    describes is logged and *force* ends it, repeated every
    :data:`FORCE_INTERVAL` for up to :data:`FORCE_GRACE` seconds while workers remain.
    """
    while live() and not lifecycle.past_deadline():
        remaining = lifecycle.remaining()
        timeout = remaining if interval is None or remaining is None else min(remaining, interval)
        loop.wait(accepting=False, timeout=timeout)
        collect()
    if not live():
        return
    lifecycle.forced_end(running(), live())
    give_up = time.monotonic() + FORCE_GRACE
    while live() and time.monotonic() < give_up:
        force()
        loop.wait(accepting=False, timeout=FORCE_INTERVAL)
        collect()
    if live():
        log.error("%d worker(s) did not end within %g s of being stopped", live(), FORCE_GRACE)


@dataclasses.dataclass(frozen=True)
class DispatchingStrategy(Strategy):
    """A strategy whose serving thread accepts and hands each connection to a worker.

    At most *max_connections* workers serve at once (None: no bound).  At the
    bound the listener leaves the poll set, so further clients wait in the
    kernel's listen backlog, and it returns as soon as a worker ends and wakes
    the loop: nobody is refused, everybody is served in turn.
    """

    max_connections: int | None = None

    def __post_init__(self) -> None:
        if self.max_connections is not None and self.max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, not {self.max_connections}")

    def describe(self) -> str:
        """The name, with the bound when there is one: ``threading(max=4)``."""
        return self.name if self.max_connections is None else f"{self.name}(max={self.max_connections})"

    def capacity(self) -> int | None:
        """``max_connections``."""
        return self.max_connections


class DispatchingRun(Run):
    """The accept loop of a :class:`DispatchingStrategy`: accept, hand over, wind down at a stop."""

    def __init__(self, strategy: Strategy, host: Host, max_connections: int | None) -> None:
        super().__init__(strategy, host)
        self.max_connections = max_connections
        #: Connections accepted since the run started.
        self.accepted = 0

    @abc.abstractmethod
    def live(self) -> int:
        """Connections being served right now (workers busy)."""

    @abc.abstractmethod
    def start_worker(self, sock: socket.socket, peer: str) -> None:
        """Hand one accepted connection to a worker; the worker closes *sock*."""

    @abc.abstractmethod
    def force_stop(self) -> None:
        """The graceful deadline passed: end the connections still being served."""

    def begin(self) -> None:
        """Hook: runs in the serving thread before the first accept."""

    def collect(self) -> None:
        """Hook: runs after every wakeup of the loop (the forking strategy reaps here)."""

    def begin_stop(self) -> None:
        """Hook: a graceful stop began; tell workers that cannot see this process's lifecycle."""

    def end(self) -> None:
        """Hook: runs in the serving thread after the stop phase, even after an error."""

    def poll_interval(self) -> float | None:
        """Seconds between :meth:`collect` calls when nothing wakes the loop (None: only on wakeups)."""
        return None

    def has_room(self) -> bool:
        """True while one more connection may start."""
        return self.max_connections is None or self.live() < self.max_connections

    def serve(self) -> None:
        """Accept and dispatch until a stop is requested; then wind the workers down."""
        lifecycle = self.host.lifecycle
        acceptor = self.host.acceptor
        loop = AcceptLoop.for_host(self.host)
        self.begin()
        try:
            while not lifecycle.stopping:
                if loop.wait(accepting=self.has_room(), timeout=self.poll_interval()):
                    for sock, peer in acceptor.accept_batch(self._may_accept):
                        self.accepted += 1
                        self.start_worker(sock, peer)
                self.collect()
            self.begin_stop()
            wind_down(lifecycle, loop, self.live, self.force_stop, self.running, self.collect, self.poll_interval())
        finally:
            loop.close()
            self.end()

    def _may_accept(self) -> bool:
        return not self.host.lifecycle.stopping and self.has_room()


class LiveThreads:
    """The worker threads alive right now; each removes itself as it ends.

    Every thread blocks :data:`~framework.signals.SERVER_SIGNALS` first.  *on_exit* is called
    by each thread as its last act, with the number of threads still alive:
    the owner wakes its loop there when that matters.
    """

    def __init__(self, name: str, on_exit: Callable[[int], None] = lambda alive: None) -> None:
        self._name = name
        self._on_exit = on_exit
        self._threads: set[threading.Thread] = set()
        self._ending: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._started = 0
        # Thread creation failing (a ulimit, memory) fails again for every connection: say it once in a while.
        self._start_failures = LogThrottle()

    def __len__(self) -> int:
        return len(self._threads)

    def start(self, target: Callable[..., object], *args: object) -> bool:
        """Run ``target(*args)`` in a new thread; False when the thread could not start."""
        self._started += 1
        # Daemon, unless this interpreter refuses them (an isolated sub-interpreter: the
        # interpreters strategy's workers); the owner joins its threads either way.
        daemon = getattr(threading, "_daemon_threads_allowed", lambda: True)()
        thread = threading.Thread(target=self._run, args=(target, args), name=f"{self._name}-{self._started}",
                                  daemon=daemon)
        with self._lock:
            self._threads.add(thread)
        try:
            start_thread_without_signals(thread.start)
        except RuntimeError as exc:  # "can't start new thread": out of memory or a ulimit
            with self._lock:
                self._threads.discard(thread)
            self._start_failures.warning(f"cannot start a thread: {exc}")
            return False
        if self._start_failures.reporting:
            self._start_failures.reset()
        return True

    def _run(self, target: Callable[..., object], args: tuple[object, ...]) -> None:
        try:
            target(*args)
        except Exception:
            log.exception("worker thread %s failed", threading.current_thread().name)
        finally:
            current = threading.current_thread()
            with self._lock:
                self._threads.discard(current)
                alive = len(self._threads)
                # Still running for a few instructions: keep it for join().  The ones that
                # have finished meanwhile are forgotten in batches, not at every end (an
                # is_alive() per thread listed, per connection under threading).
                if len(self._ending) >= ENDING_KEPT:
                    self._ending = [thread for thread in self._ending if thread.is_alive()]
                self._ending.append(current)
            self._on_exit(alive)

    def join_ending(self, timeout: float) -> None:
        """Wait up to *timeout* seconds in all for the threads that ended their work to be gone.

        A thread leaves the live set (and may wake its owner, which starts the
        next one) a few instructions before the thread itself is over: the
        owner of a bound calls this first, so that no more threads exist at
        once than the bound, however slowly a descheduled thread finishes.
        """
        deadline = time.monotonic() + timeout
        with self._lock:
            ending = list(self._ending)
        for thread in ending:
            thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            self._ending = [thread for thread in self._ending if thread.is_alive()]

    def join(self, timeout: float) -> None:
        """Wait up to *timeout* seconds in all for the threads alive now, ending ones included."""
        deadline = time.monotonic() + timeout
        with self._lock:
            threads = [*self._threads, *self._ending]
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
