"""Taking connections off a listening socket, with accept errors handled once for everyone."""

from __future__ import annotations

import array
import errno
import logging
import select
import socket
import time
from collections.abc import Callable, Iterator

from framework.address import format_peer
from framework.logthrottle import LogThrottle
from framework.signals import AcceptErrorKind, classify_accept_error

log = logging.getLogger("forkthread")

#: Back-off after a capacity error (EMFILE...), doubling up to the maximum.
BACKOFF_START = 0.01
BACKOFF_MAX = 1.0
#: A capacity condition is logged when it starts and then at most this often.
CAPACITY_LOG_INTERVAL = 10.0
#: Connections accepted per listener wakeup before a loop looks at its other descriptors again.
ACCEPT_BATCH = 64
#: For this many accepts of a batch, whether another connection waits is asked with a
#: zero-timeout poll before accept() is tried.  An accept that finds none raises
#: BlockingIOError, which in Python costs about ten times that poll (measured: 4.9 against
#: 0.5 µs); a long batch, which only a backlog makes, tries accept() and pays that once.
PEEK_LIMIT = 8


#: How long one wait in ``accept`` lasts at most on a listener :func:`wait_in_accept` prepared:
#: how late a worker that waits there notices its own stop (a recycle, a reload; the whole
#: server's stop shuts the listener down, which ends every wait at once).
ACCEPT_WAIT = 0.2


def wait_in_accept(listener: socket.socket, seconds: float | None = ACCEPT_WAIT) -> None:
    """Make *listener* blocking, each ``accept`` on it waiting *seconds* at most (None: undo both).

    The blocking flag and the timeout (``SO_RCVTIMEO``, which bounds a
    blocking ``accept``: ``EAGAIN`` when it passes) belong to the socket, so
    they hold for every process and thread sharing it: whoever makes a
    shared listener so does it once, before the others get it.
    """
    microseconds = 0 if seconds is None else round(seconds * 1_000_000)
    # struct timeval: two C longs on Linux.  With array, not struct, whose shared library a
    # forking server would copy at every fork (tests/test_connection_cost.py).
    timeval = array.array("l", divmod(microseconds, 1_000_000)).tobytes()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
    listener.setblocking(seconds is not None)


def stop_listening(listener: socket.socket) -> None:
    """Make the kernel refuse new connections to *listener*; see :meth:`Acceptor.stop`."""
    try:
        listener.shutdown(socket.SHUT_RD)
    except OSError:
        pass  # not listening or already closed: nothing to refuse


class Acceptor:
    """Accepts from one non-blocking listener; classifies and absorbs accept errors.

    On a capacity error (out of descriptors or memory) the connection stays in
    the kernel's backlog and :meth:`backoff_remaining` tells the loop how long
    to leave the listener out of its poll set: a level-triggered poll on a
    listener we cannot accept from would otherwise spin at 100% CPU.
    """

    def __init__(self, listener: socket.socket, *, shared: bool = False, exclusive: bool = False,
                 stopped_by_process_stop: bool = False, waits_in_accept: bool = False) -> None:
        self.listener = listener
        #: Other processes or interpreters accept from this listener too (a pre-forked pool's
        #: ``shared`` and ``lock`` modes, sub-interpreter workers): one that polled it readable
        #: may find the connection gone, so every accept of a batch is peeked at first.
        self.shared = shared or exclusive or waits_in_accept
        #: The listener is blocking, with a receive timeout (:func:`wait_in_accept`): a serving
        #: thread that can (:meth:`~framework.strategies.base.Strategy.waits_in_accept`) waits
        #: in :meth:`accept` itself, and looks at its stop between two waits.
        self.waits_in_accept = waits_in_accept
        #: Waits on this listener may be exclusive (``EPOLLEXCLUSIVE``, see
        #: :class:`~framework.strategies.dispatching.AcceptLoop`): a connection wakes one
        #: waiting process, not all of them.  The process woken must take it, so whoever
        #: sets this also serves what is waiting before the process leaves (a pre-forked
        #: worker does: :func:`~framework.strategies.prefork_worker.drain`).
        self.exclusive = exclusive
        # Read once, and kept as plain numbers: ``listener.type`` converts to an enum on
        # every read, and an enum member passed on per connection is one more object
        # touched (under forking: a page copied, as the parent's pages are shared with children).
        self._family = int(listener.family)
        self._type = int(listener.type)
        self._proto = listener.proto
        self._backoff = 0.0
        self._resume_at = 0.0
        self._capacity_warnings = LogThrottle(CAPACITY_LOG_INTERVAL)
        # A poll set holding the listener alone, for waiting(): made at the first question.
        self._peek: select.poll | None = None
        #: True once the listener stopped listening (:meth:`stop`, here or in another process).
        self.stopped = False
        #: This process's stop calls :meth:`stop` (the server's own acceptor, not a pre-forked
        #: worker's): a thread may then block in ``accept`` itself, since the stop's
        #: ``shutdown`` ends a blocked ``accept`` (``EINVAL``).
        self.stopped_by_process_stop = stopped_by_process_stop

    def fileno(self) -> int:
        """The descriptor to poll for readability before calling :meth:`accept`."""
        return self.listener.fileno()

    def backoff_remaining(self) -> float:
        """Seconds before accepting is worth trying again (0.0: now).

        Once the listener is stopped this never reaches 0: a shut-down listener
        polls as always ready (POLLHUP), so a loop must not watch it any more.
        """
        if self.stopped:
            return BACKOFF_MAX
        if not self._resume_at:
            return 0.0
        remaining = self._resume_at - time.monotonic()
        if remaining <= 0:
            self._resume_at = 0.0
            return 0.0
        return remaining

    def wants_polling(self, has_room: bool = True) -> bool:
        """True when a loop should watch the listener now.

        Not when the loop has no room for another connection (its clients
        then wait in the kernel's backlog), during a capacity back-off, or
        once the listener is stopped: a level-triggered poll on a listener we
        will not accept from would spin.
        """
        return has_room and self.backoff_remaining() == 0.0

    def waiting(self) -> bool:
        """True when a connection is waiting to be accepted now: a zero-timeout poll, no accept tried.

        Also true for a stopped or broken listener (it polls as ready), where
        :meth:`accept` then says None or raises.  With other processes or
        threads accepting from the same listener, one of them may take the
        connection first: :meth:`accept` may still find none.
        """
        peek = self._peek
        if peek is None:
            peek = self._peek = select.poll()
            peek.register(self.fileno(), select.POLLIN)
        return bool(peek.poll(0))

    def accept_batch(
        self, has_room: Callable[[], bool], limit: int = ACCEPT_BATCH
    ) -> Iterator[tuple[socket.socket, str]]:
        """Accept waiting connections while *has_room()*, at most *limit* per call.

        Call it when a poll found the listener readable.  Taking a batch per
        wakeup saves a poll per connection under load; the limit keeps one
        busy listener from starving the loop's other work.  After the first
        accept (from the first, on a :attr:`shared` listener), the next
        :data:`PEEK_LIMIT` look with :meth:`waiting` first.
        """
        peek_from = 0 if self.shared else 1
        for taken in range(limit):
            if not has_room():
                return
            if peek_from <= taken < PEEK_LIMIT and not self.waiting():
                return
            accepted = self.accept()
            if accepted is None:
                return
            yield accepted

    def accept(self) -> tuple[socket.socket, str] | None:
        """Accept one connection: ``(socket, peer text)``, or None when there is none now.

        The new socket is close-on-exec and blocking (its driver chooses).  A fatal error (the
        listener itself is broken) is raised.
        """
        if self.stopped:
            return None
        try:
            fd, addr = self.listener._accept()  # type: ignore[attr-defined]
        except BlockingIOError:
            return None  # the end of every batch: none waiting now (classified as RETRY, without the call)
        except OSError as exc:
            if exc.errno == errno.EINVAL and (self.stopped or self.shared or not self._listening()):
                # Stopped while this accept waited, here or by another process sharing the
                # listener (a pre-forked master); a Unix listener still says SO_ACCEPTCONN then.
                self.stopped = True
                return None
            kind = classify_accept_error(exc)
            if kind is AcceptErrorKind.RETRY:
                return None
            if kind is AcceptErrorKind.CAPACITY:
                self._back_off(exc)
                return None
            raise
        # _accept() skips socket.accept()'s extra fcntl: Linux accept4() already
        # made it close-on-exec, and non-blocking is set once, by the driver.
        conn = socket.socket(self._family, self._type, self._proto, fileno=fd)
        if self._backoff:
            self._recovered()
        # The connection itself too: a Unix peer is named by its pid and uid (SO_PEERCRED).
        return conn, format_peer(self._family, addr, conn)

    def stop(self) -> None:
        """Stop listening, so that the kernel refuses new connections from now on.

        ``shutdown(SHUT_RD)`` on a listening TCP socket resets the connections
        still in its backlog (nobody accepted them) and answers new ones with
        a reset (``ECONNREFUSED``); a Unix listener refuses new connects too.
        The descriptor stays valid, so this is safe while another thread polls
        or accepts on it, and the address stays reported until the socket is
        closed.  Connections already accepted are not touched.
        """
        self.stopped = True
        stop_listening(self.listener)

    def _listening(self) -> bool:
        try:
            return bool(self.listener.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
        except OSError:
            return False

    def _back_off(self, exc: OSError) -> None:
        self._backoff = min(BACKOFF_MAX, self._backoff * 2 if self._backoff else BACKOFF_START)
        self._resume_at = time.monotonic() + self._backoff
        self._capacity_warnings.warning(f"accept: {exc.strerror or exc}; backing off, still serving")

    def _recovered(self) -> None:
        # The throttle is not reset: a condition that comes and goes with every connection
        # (each accepted one fails for want of a second descriptor) would be logged every time.
        if self._backoff >= BACKOFF_MAX:
            log.warning("accept: recovered, accepting again")
        self._backoff = 0.0


class ListenerWatch:
    """Keeps a listener in a poll set exactly while it is wanted there.

    *register* and *unregister* add and remove the descriptor from whatever
    the loop polls (``select.poll``, an event loop).  :meth:`update` is
    called once per loop turn with :meth:`Acceptor.wants_polling`'s answer.
    """

    def __init__(self, fd: int, register: Callable[[int], object], unregister: Callable[[int], object]) -> None:
        self._fd = fd
        self._register = register
        self._unregister = unregister
        #: True while the listener is in the poll set.
        self.watching = False

    def update(self, wanted: bool) -> None:
        """Add the listener to the poll set or take it out, when that changes."""
        if wanted != self.watching:
            (self._register if wanted else self._unregister)(self._fd)
            self.watching = wanted
