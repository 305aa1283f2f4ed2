"""Signals, wakeups and errno classes: every place the kernel interrupts us, in one module.

The rules this module enforces for the whole framework:

* **Handlers only record and wake.**  A handler appends the signal number to a
  queue; :func:`signal.set_wakeup_fd` makes the C-level handler write a byte to
  a :class:`Wakeup` pipe at the very moment the signal arrives, so a loop
  blocked in ``poll`` returns even when the signal lands between its last
  flag check and the system call (the classic race the self-pipe trick
  closes).  The loop then calls :meth:`SignalDispatcher.dispatch`, which runs
  the real actions in the loop's own context: logging, starting a shutdown,
  spawning workers.  Nothing is raised into a system call.
* **EINTR is Python's job first.**  Since PEP 475 CPython retries ``poll``,
  ``recv``, ``send``, ``accept``, ``sendfile`` and ``waitpid`` after a handler
  that does not raise, recomputing timeouts.  What is left to us is the
  wakeup above and :func:`retry_interrupted` for the rare call that still
  raises :class:`InterruptedError`.
* **SIGPIPE stays ignored.**  Writing to a vanished peer gives ``EPIPE``, which
  :func:`is_peer_gone` classifies as the normal end of a connection.
* **Accept errors are classified once** (:func:`classify_accept_error`):
  retry, capacity (log, back off, keep serving) or fatal.
"""

from __future__ import annotations

import _signal
import collections
import enum
import errno
import logging
import os
import signal
import threading
from collections.abc import Callable
from typing import TypeVar

_T = TypeVar("_T")

#: errno values that mean "the peer is gone": the end of one connection, not a fault.
PEER_GONE_ERRNOS = frozenset(
    {errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.ESHUTDOWN, errno.ECONNABORTED, errno.ETIMEDOUT,
     errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENETDOWN}
)

#: Every signal a server process handles: masters, workers and single processes alike.
#: Held (blocked) across ``fork()`` so a child cannot lose one before its own handlers
#: are in place, and blocked in worker threads so they all reach the main thread.
#: Plain numbers: ``pthread_sigmask`` walks the set at every fork and thread start, and a
#: ``Signals`` member touched in a forking parent is a page copied (small ints lie together).
SERVER_SIGNALS: frozenset[int] = frozenset(int(signum) for signum in (
    signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2,
    signal.SIGCHLD, signal.SIGTTIN, signal.SIGTTOU,
))

#: ``signal.pthread_sigmask`` without its wrapper, which turns every signal number into a
#: ``Signals`` member and back: some forty Python calls per use, where a thread is started
#: per connection (``threading``) or a process forked (``forking``).
raw_sigmask = _signal.pthread_sigmask

#: Signals that belong to a pre-forked master; a worker ignores them (TTIN/TTOU would
#: stop it, HUP end it).
MASTER_ONLY_SIGNALS = frozenset({signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU})

#: How much a drain of a wakeup pipe asks for at a time.  A read that returns less has
#: emptied the pipe: it is not followed by one that would raise BlockingIOError.
PIPE_READ_SIZE = 4096

#: accept() errors after which the next accept may well succeed.
ACCEPT_RETRY_ERRNOS = frozenset(
    {errno.EAGAIN, errno.EWOULDBLOCK, errno.ECONNABORTED, errno.EINTR, errno.EPROTO, errno.EPERM,
     errno.ENETDOWN, errno.ENOPROTOOPT, errno.EHOSTDOWN, errno.ENONET, errno.EHOSTUNREACH,
     errno.EOPNOTSUPP, errno.ENETUNREACH}
)

#: accept() errors that mean "out of a resource": keep serving, but back off.
ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class AcceptErrorKind(enum.Enum):
    """What an error from ``accept()`` means for the loop that got it."""

    RETRY = "retry"
    CAPACITY = "capacity"
    FATAL = "fatal"


def classify_accept_error(exc: OSError) -> AcceptErrorKind:
    """Sort an ``accept()`` failure into retry, capacity or fatal.

    Linux passes pending network errors of the new connection up through
    ``accept`` (see accept(2), "Error handling"); those are retried, like
    ``EAGAIN`` when another process won the race for the connection.
    """
    if isinstance(exc, (BlockingIOError, InterruptedError)) or exc.errno in ACCEPT_RETRY_ERRNOS:
        return AcceptErrorKind.RETRY
    if exc.errno in ACCEPT_CAPACITY_ERRNOS:
        return AcceptErrorKind.CAPACITY
    return AcceptErrorKind.FATAL


def is_peer_gone(exc: BaseException) -> bool:
    """Return True when *exc* only says that the other end of a connection went away."""
    if isinstance(exc, (BrokenPipeError, ConnectionResetError, ConnectionAbortedError)):
        return True
    return isinstance(exc, OSError) and exc.errno in PEER_GONE_ERRNOS


def retry_interrupted(call: Callable[[], _T]) -> _T:
    """Call *call* again while it raises :class:`InterruptedError`.

    PEP 475 makes this unnecessary for the standard library's own system call
    wrappers; it remains for calls into code that does not follow it.
    """
    while True:
        try:
            return call()
        except InterruptedError:
            continue


def ignore_sigpipe() -> None:
    """Make sure SIGPIPE is ignored, so a dead peer gives EPIPE instead of killing us.

    CPython ignores it at start-up already; an embedding program may not have.
    Only the main thread may change signal dispositions.
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)


class _Pipe:
    """A non-blocking, close-on-exec pipe whose read end a loop polls."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def fileno(self) -> int:
        """The descriptor to poll for readability."""
        return self.read_fd

    def close(self) -> None:
        """Close both ends (idempotent)."""
        for fd in (self.read_fd, self.write_fd):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.read_fd = self.write_fd = -1


class Wakeup(_Pipe):
    """A self-pipe: written to wake a loop blocked in ``poll``, drained by that loop.

    :meth:`wake` is safe from any thread and from a signal handler; a full
    pipe already means "awake".
    """

    def wake(self) -> None:
        """Make the read end readable."""
        try:
            os.write(self.write_fd, b"\0")
        except (BlockingIOError, OSError):
            pass  # a full pipe is already a pending wakeup; a closed one has nobody to wake

    def drain(self) -> bytes:
        """Empty the pipe and return what was in it (signal numbers, for set_wakeup_fd).

        A read that returns less than it asked for has emptied the pipe: one
        more would only raise BlockingIOError, which costs several times the
        read itself (a byte written meanwhile wakes the next poll anyway).
        """
        chunks = []
        while True:
            try:
                chunk = os.read(self.read_fd, PIPE_READ_SIZE)
            except (BlockingIOError, OSError):
                break
            chunks.append(chunk)
            if len(chunk) < PIPE_READ_SIZE:
                break
        return b"".join(chunks)


class LateWakeup(Wakeup):
    """A forked child's wakeup pipe, made when a loop of the child first asks for it.

    A child serving one connection often never waits: the request came with
    the connection and the answer fits in the socket buffer.  Its own pipe,
    and the signals routed to it, then wait for the first :meth:`fileno`:
    three system calls and, in a child, a dozen pages copied from the parent,
    spared.  Until then the process's signal wakeup descriptor is still the
    parent's pipe (a signal caught here wakes the parent, which finds nothing
    in its own queue), :meth:`wake` is remembered, and :meth:`drain` finds
    nothing.  The making closes the parent's descriptors, and writes a byte
    if a wake or a recorded signal came first, so that a loop that looked
    before the pipe existed is still woken.  The first :meth:`fileno` must
    come from the main thread when signals are routed (``set_wakeup_fd``).
    """

    def __init__(self, parents: Wakeup, signals_pending: Callable[[], bool] | None) -> None:  # no pipe yet
        self.read_fd = self.write_fd = -1
        #: The parent's pipe, which this one replaces in the child.
        self.replaces = parents
        #: The dispatcher's pending(), when signals are routed to this pipe; else None.
        self._signals_pending = signals_pending
        self._woken = False

    def fileno(self) -> int:
        """The descriptor to poll (the pipe made now if not yet)."""
        if self.read_fd < 0:
            self._make()
        return self.read_fd

    def _make(self) -> None:
        read_fd, write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        if self._signals_pending is not None:
            signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        # write_fd first, then the flag; wake() does the reverse: one of the two writes.
        self.write_fd = write_fd
        self.read_fd = read_fd
        self.replaces.close()  # the parent's pipe: no longer the process's wakeup descriptor
        # A signal caught before set_wakeup_fd wrote to the parent's pipe; its handler has
        # run by now (between two bytecodes), so the queue shows it.
        if self._woken or (self._signals_pending is not None and self._signals_pending()):
            super().wake()

    def wake(self) -> None:
        """Make the read end readable (at its making, if it is not made yet)."""
        self._woken = True
        if self.write_fd >= 0:
            super().wake()

    def drain(self) -> bytes:
        """Empty the pipe, if there is one yet."""
        return super().drain() if self.read_fd >= 0 else b""

    def close(self) -> None:
        """Close the pipe, or the parent's descriptors if it was never made (idempotent)."""
        if self.read_fd < 0:
            self.replaces.close()
        super().close()


class Latch(_Pipe):
    """A pipe that becomes readable once, and stays so: "stop" for loops in any thread.

    A :class:`Wakeup` is drained by the one loop that owns it; a latch is
    never drained, so every thread polling it sees it, however many there are
    and whenever they look.  :meth:`set` is safe from any thread and from a
    signal handler, and idempotent.

    The pipe is made when a loop first asks for :meth:`fileno`: a process
    whose loops only read :meth:`is_set` (a child serving one connection in
    its main thread hears of a stop through its wakeup pipe) never makes one.
    """

    def __init__(self) -> None:  # no super().__init__(): the pipe is made on demand
        self.read_fd = self.write_fd = -1
        self._set = False
        self._closed = False
        self._making = threading.Lock()

    def fileno(self) -> int:
        """The descriptor to poll (made now if needed; readable if already set; -1 once closed)."""
        if self.read_fd < 0 and not self._closed:
            with self._making:
                if self.read_fd < 0 and not self._closed:
                    read_fd, self.write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
                    self.read_fd = read_fd
                    # set() before the write end existed wrote nothing: write for it.
                    # (set() stores the flag before it reads write_fd, we the reverse.)
                    if self._set:
                        self._write()
        return self.read_fd

    def close(self) -> None:
        """Close both ends (idempotent); no pipe is made afterwards."""
        # Without the lock: a forked child closes the parent's latch, and a lock
        # another thread of the parent held at the fork would stay held here.
        self._closed = True
        super().close()

    def kept_by_child(self) -> bool:
        """After ``fork()``, in the child: True when the child may keep this latch as its own.

        So it may while no pipe was made (one would be shared with the
        parent: a stop of either would be seen by both), no stop was set,
        and no thread of the parent's was making the pipe at the fork (its
        lock would stay held).  Otherwise the child makes a new latch.
        """
        return self.read_fd < 0 and not self._closed and not self._set and not self._making.locked()

    def is_set(self) -> bool:
        """True once :meth:`set` was called (in this process)."""
        return self._set

    def set(self) -> None:
        """Make the read end readable for good."""
        if self._set:
            return
        self._set = True
        if self.write_fd >= 0:
            self._write()

    def _write(self) -> None:
        try:
            os.write(self.write_fd, b"\0")
        except OSError:
            pass  # closed: nobody is left to tell


SignalAction = Callable[[int], None]


class SignalDispatcher:
    """Install signal handlers that only record, and run their actions later, in the loop.

    ``install({SIGTERM: stop, SIGUSR1: status})`` replaces the handlers (main
    thread only), points :func:`signal.set_wakeup_fd` at *wakeup*, and
    :meth:`restore` puts everything back.  The loop calls :meth:`dispatch`
    whenever *wakeup* is readable.
    """

    def __init__(self, wakeup: Wakeup) -> None:
        self.wakeup = wakeup
        self._pending: collections.deque[int] = collections.deque()
        self._actions: dict[int, SignalAction] = {}
        self._previous: dict[int, signal.Handlers | int | Callable[..., object] | None] = {}
        self._previous_wakeup_fd: int | None = None
        #: Called in the main thread right after a signal is recorded, or None.  A helper
        #: thread that runs :meth:`dispatch` while the main thread is busy in code that
        #: never polls the wakeup pipe (a blocking handler) listens here: unlike the
        #: wakeup byte, which the C-level handler writes first, this comes after the
        #: signal is in the queue.  It must only record or wake (it runs in a signal handler).
        self.on_record: Callable[[], None] | None = None
        #: Called instead, when no *on_record* listens: a program that must hear its signals even
        #: while the main thread is stuck in user code (a protocol callback that never returns)
        #: starts a helper there (:class:`framework.lifecycle.LastResort`).  The same rules apply.
        self.unheard: Callable[[int], None] | None = None
        #: The signals *unheard* is called for (a SIGCHLD per connection under forking
        #: need not call into Python a second time).
        self.unheard_signals: frozenset[int] = frozenset()

    @property
    def installed(self) -> bool:
        """True between :meth:`install` and :meth:`restore`."""
        return self._previous_wakeup_fd is not None

    def install(self, actions: dict[int, SignalAction]) -> None:
        """Record *actions* and route their signals here.  Main thread only."""
        self._actions.update(actions)
        if self._previous_wakeup_fd is None:
            self.wakeup.fileno()  # made now, if it is made late (LateWakeup)
            self._previous_wakeup_fd = signal.set_wakeup_fd(self.wakeup.write_fd, warn_on_full_buffer=False)
        for signum in actions:
            if signum not in self._previous:
                self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._record)

    def handles(self, signum: int) -> bool:
        """True when *signum* is routed here with an action."""
        return self.installed and signum in self._actions

    def _record(self, signum: int, frame: object) -> None:
        # Runs between two bytecodes of the main thread: append (atomic) and go.
        # The C-level handler has already written to the wakeup pipe.
        self._pending.append(signum)
        on_record = self.on_record
        if on_record is not None:
            on_record()
        elif self.unheard is not None and signum in self.unheard_signals:
            self.unheard(signum)

    def pending(self) -> bool:
        """True when a recorded signal waits for :meth:`dispatch`."""
        return bool(self._pending)

    def dispatch(self) -> None:
        """Drain the wakeup pipe and run the action of every recorded signal, in order."""
        self.wakeup.drain()
        while self._pending:
            signum = self._pending.popleft()
            action = self._actions.get(signum)
            if action is not None:
                try:
                    action(signum)
                except Exception:  # a failing action (a status line) must not end the loop's connection
                    logging.getLogger("forkthread").exception("action for signal %d failed", signum)

    def restore(self) -> None:
        """Put back the handlers and wakeup descriptor that were there before :meth:`install`."""
        for signum, previous in self._previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()
        self._actions.clear()
        if self._previous_wakeup_fd is not None:
            signal.set_wakeup_fd(self._previous_wakeup_fd)
            self._previous_wakeup_fd = None

    def reset_in_child(self) -> None:
        """After ``fork()``: forget the parent's queue; the caller installs anew.

        The child inherits the parent's handlers and wakeup descriptor; a child
        that does not want them calls :meth:`restore` or installs its own.
        """
        self._pending.clear()


def start_thread_without_signals(start: Callable[[], _T]) -> _T:
    """Call *start*, which starts a thread, with :data:`SERVER_SIGNALS` blocked in the calling thread.

    A new thread inherits its creator's signal mask, so it is born with the
    server's signals blocked and every one of them reaches the main thread
    (CPython runs Python handlers there anyway).  Blocking them in the new
    thread's own first instructions instead leaves a window in which the
    kernel may deliver a signal to it; CPython's C handler then only records
    it, and a main thread blocked in a system call (a blocking handler in
    ``recv``) is never interrupted to run the Python handler: a SIGTERM
    would wait for that call to return.  The mask also keeps the threads'
    system calls from being interrupted by a signal storm meant for the
    main thread.  Safe in a signal handler.  Returns what *start* returns.
    """
    previous = raw_sigmask(signal.SIG_BLOCK, SERVER_SIGNALS)
    try:
        return start()
    finally:
        raw_sigmask(signal.SIG_SETMASK, previous)
