"""The blocking driver: one protocol, one socket, the calling thread, until the connection ends.

Two ways to wait for the peer:

* **In recv** -- the way of ``socketserver`` and every C tutorial, and the
  cheapest there is: one ``recv`` and one ``send`` per exchange.  A
  connection waits in a blocking ``recv`` while nothing but the peer, the
  idle timeout or the graceful deadline can end the wait: on plain TCP or
  Unix (not TLS), with no protocol deadline running, for a protocol that
  leaves :meth:`~framework.protocol.Protocol.server_stopping` and
  :meth:`~framework.protocol.Protocol.between_messages` as they are by
  default (always between messages: a stop only has to close it once it
  is idle).  The kernel keeps the idle and send timeouts (``SO_RCVTIMEO``,
  ``SO_SNDTIMEO``); a stop reaches the thread as the end of its input once
  the connection is idle, and the graceful deadline as a shutdown of its
  socket, from the :class:`~framework.drivers.watch.ConnectionWatch` (which
  a stop hands every connection waiting in recv in a worker thread, and
  which watches the main thread's: iterative, a forking child, whose
  signal actions it runs meanwhile) and from
  :meth:`framework.lifecycle.ActiveConnections.abort_all`.  The main thread moves to recv only after a few
  requests (:data:`REQUESTS_BEFORE_RECV`): a forked child serving one
  request would pay the setup for nothing.  Once the protocol sets a
  deadline or takes the socket, the connection waits in poll from then on.
* **In poll**, otherwise.  The socket is non-blocking.  Every call is tried
  first and the thread waits -- a ``poll`` on the socket plus, in the main
  thread, the process's wakeup pipe and, between exchanges, the stop latch
  -- only when it would block.

Waiting in poll buys what a plain blocking ``recv`` cannot give:

* idle and send timeouts (``--timeout``), and the protocol's own deadlines;
* signals handled while a connection is in flight (SIGUSR1's status line,
  SIGTERM starting a graceful stop) without interrupting the transfer;
* a graceful stop told to the protocol between exchanges, in any thread
  (the lifecycle's stop latch), once what the peer sent is read and the
  connection has been quiet for
  :data:`~framework.drivers.common.STOP_IDLE_GRACE` (a request on its way
  to a connection just accepted is answered), and its deadline enforced in
  the main thread; in other threads :meth:`framework.lifecycle.ActiveConnections.abort_all`
  shuts the socket down, which ends the wait;

and pays for little of it on an exchange that does not wait: between two
exchanges the driver reads two flags (a signal recorded, a stop begun) and
looks at the clock only when a protocol deadline or a graceful stop runs.
The poll object is made at the first wait, so a connection that never
waits (a request that came with the connection, an answer that fits in
the socket buffer) makes none.

Given an :class:`ssl.SSLSocket` (made with ``do_handshake_on_connect=False``),
the connection first completes the TLS handshake in the same wait loop, so a
client that never finishes it is dropped after the idle timeout and signals
are handled meanwhile (:meth:`BlockingConnection.handshake`).  OpenSSL's
"want read / want write" count as would-block; file bodies are read in
chunks and written through TLS unless kernel TLS lets ``sendfile(2)`` run
on the socket; a graceful close sends close_notify.
"""

from __future__ import annotations

import array
import functools
import logging
import math
import os
import select
import socket
import time
from collections.abc import Callable
from typing import IO, Any

from framework.address import close_socket
from framework.drivers.common import (
    DEFAULT_LINGER,
    LINGER_MAX_BYTES,
    RECV_SIZE,
    ConnectionTimeout,
    HandlerError,
    OutOfDescriptors,
    ShortFileError,
    ends_quietly,
    has_unread_input,
    is_tls_socket,
    poll_timeout_ms,
    sendfile_some,
    socket_extra_info,
    stop_grace_left,
)
from framework.drivers.watch import ConnectionWatch
from framework.lifecycle import Lifecycle
from framework.protocol import FileLike, Port, Protocol, Transport

log = logging.getLogger("forkthread")

#: File bytes read and encrypted per step when sendfile(2) cannot be used (TLS in user space).
TLS_FILE_CHUNK = 65536

#: Requests a main-thread connection serves waiting in poll before it waits in recv (see _choose_wait).
REQUESTS_BEFORE_RECV = 2

_READ = select.POLLIN | select.POLLPRI
_WRITE = select.POLLOUT
_FAIL = select.POLLERR | select.POLLHUP | select.POLLNVAL
_INF = math.inf


#: What send() takes as it is: a constant, where ``(bytes, bytearray)`` would build a
#: tuple on every write (measurable per round trip in a forked child's cold caches).
_BYTES_LIKE = (bytes, bytearray)


#: What means "try again when the socket is ready" over plain TCP (one tuple for every connection).
_WOULD_BLOCK: tuple[type[Exception], ...] = (BlockingIOError,)


class BlockingConnection(Transport):
    """A :class:`Transport` over one socket, driven by :meth:`run` in the calling thread.

    *idle_timeout* bounds every wait for the peer (to send a request or to
    read our response); *lifecycle* supplies the graceful deadline and the
    stop latch, and with *watch_wakeup* (main thread only) its wakeup pipe
    is polled and its recorded signals dispatched too.  Given a *watch*, the
    main thread too may wait in recv: the watch runs the signal actions and
    enforces the graceful deadline meanwhile.
    """

    # The state every connection starts in, as class attributes: an instance gets its own
    # value at the first change only (each store, per connection, counts).
    _stop_told = False
    #: Made at the first wait (see _poll_for); which events it watches on the socket; latch registered?
    _poller: Any = None
    _wakeup_fd = -1
    _polled = -1
    _latch_polled = False
    _closing = False
    _linger = 0.0
    _eof = False
    _error: BaseException | None = None
    _protocol: Protocol | None = None
    _protocol_deadline: float | None = None
    #: Waiting in recv (the socket blocking, the kernel keeping the time limits); see the module docstring.
    _in_recv = False
    #: Main thread: requests still to serve waiting in poll before it waits in recv (0: not, or never).
    _requests_before_recv = 0
    #: Over TLS (an :class:`ssl.SSLSocket`): set in ``__init__`` with the four below.
    _tls = False
    #: Flags of the first try of a send: never wait there.
    _try_flags: int = socket.MSG_DONTWAIT
    #: What means "try again when the socket is ready" (OpenSSL's want read/write too).
    _would_block: tuple[type[Exception], ...] = _WOULD_BLOCK
    #: Of those, what means "wait until readable" even while sending (OpenSSL's want read).
    _wants_read: tuple[type[Exception], ...] = ()
    #: File bodies go through TLS in user space: sendfile(2) cannot encrypt (unless kernel TLS).
    _copy_files = False
    #: Closed with the C close: a plain ``socket.socket`` nobody else holds.  Not one of a class with a
    #: ``close()`` of its own (an SSLSocket, a connection a pre-forked master passed, which tells
    #: it), nor one given to the protocol (``get_extra_info("socket")``), which may have made files of it.
    _own_close = False

    def __init__(
        self,
        sock: socket.socket,
        peer: str,
        *,
        lifecycle: Lifecycle,
        idle_timeout: float | None = None,
        watch_wakeup: bool = False,
        watch: ConnectionWatch | None = None,
    ) -> None:
        self.sock = sock
        self._peer = peer
        self._fd = sock.fileno()
        self._lifecycle = lifecycle
        self._idle_timeout = idle_timeout
        self._watch_wakeup = watch_wakeup
        self._watch = watch
        # The stop latch tells a connection in any thread that a graceful stop
        # began, so the protocol can close an idle connection at once.  The
        # main thread polls the wakeup pipe instead, which every stop request
        # writes after setting the latch, and reads the latch's flag.
        self._latch = lifecycle.stop_latch
        self._poll_latch = not watch_wakeup
        #: The kernel's time limits are set (in recv, once a call would wait: see _enter_recv).
        self._limits_armed = idle_timeout is None
        #: Read the socket itself, past TLS (only to discard input when closing).
        self._raw_recv = sock.recv
        self._own_close = type(sock) is socket.socket
        # The type first: an accepted socket is a plain socket.socket, and the call costs more than the test.
        if not self._own_close and is_tls_socket(sock):
            import ssl  # loaded already: the socket is an SSLSocket

            self._tls = True
            self._try_flags = 0  # an SSLSocket takes no flags (and never waits in recv)
            self._would_block = (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError)
            self._wants_read = (ssl.SSLWantReadError,)
            self._raw_recv = functools.partial(socket.socket.recv, sock)
            self._copy_files = True

    # -- Transport -------------------------------------------------------

    @property
    def peer(self) -> str:
        """The peer's address as text."""
        return self._peer

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """``peername``, ``sockname``, ``socket`` or ``ssl_object`` (the SSLSocket), asyncio style."""
        if name == "ssl_object":
            return self.sock if self._tls else default
        if name == "socket":
            self._wait_in_poll()  # the protocol may share the socket (and its blocking mode) with another thread
            self._own_close = False  # and make files of it: closed by socket.close(), which waits for them
        return socket_extra_info(self.sock, name, default)

    def is_closing(self) -> bool:
        """True once close() or abort() was called, or the peer vanished."""
        return self._closing or self._error is not None

    def set_deadline(self, seconds: float | None) -> None:
        """Arrange for ``protocol.deadline_expired()`` in *seconds* (None cancels)."""
        self._protocol_deadline = None if seconds is None else time.monotonic() + seconds
        if seconds is not None:
            self._wait_in_poll()  # only poll's timeout can wake the thread for it

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Send all of *data* before returning (waiting as the peer reads)."""
        if self._closing or self._error is not None or not data:
            return
        if not isinstance(data, _BYTES_LIKE):
            data = memoryview(data).cast("B")
        # Most writes fit in the socket buffer: one send, no copy, no wait.
        try:
            sent = self.sock.send(data, self._try_flags)
        except self._would_block:
            sent = 0
        except OSError as exc:
            self._fail(exc)
            return
        if sent < len(data):
            if not self._limits_armed and self._in_recv:
                self._arm_limits()  # the rest waits in send, as long as the kernel's limit allows
            try:
                self._send_all(memoryview(data)[sent:])
            except OSError as exc:
                self._fail(exc)

    def _send_all(self, view: memoryview) -> None:
        """Send *view* to its end, waiting as the peer reads; stop early only if the connection ended."""
        while view:
            try:
                sent = self.sock.send(view)
            except self._would_block as exc:
                if not self._wait(_READ if isinstance(exc, self._wants_read) else _WRITE):
                    return
                continue
            view = view[sent:]

    def sendfile(self, file: FileLike | IO[bytes], offset: int = 0, count: int | None = None) -> None:
        """Send *count* bytes of *file* from *offset* with ``sendfile(2)``."""
        if self._closing or self._error is not None:
            return
        file_fd = file.fileno()
        if count is None:
            count = os.fstat(file_fd).st_size - offset
        if not self._limits_armed and self._in_recv:
            self._arm_limits()  # sendfile(2) may wait, and takes no flags
        try:
            while count > 0:
                if self._copy_files:
                    sent = self._send_file_chunk(file_fd, offset, count)
                    if self._error is not None:
                        return
                    offset += sent
                    count -= sent
                    continue
                try:
                    sent = sendfile_some(self._fd, file_fd, offset, count)
                except BlockingIOError:
                    if not self._wait(_WRITE):
                        return
                    continue
                offset += sent
                count -= sent
        except ShortFileError as exc:
            # The promised length can no longer be kept: the framing is broken.
            log.warning("%s: %s; aborting the connection", self._peer, exc)
            self._fail(exc)
        except OSError as exc:
            self._fail(exc)

    def offload(self, job: Callable[[Port], None]) -> None:
        """Run *job* now, in this connection's thread, with a port that reads and writes this socket."""
        from framework.drivers.offload import DirectPort

        job(DirectPort(self._pump, self.write, self.sendfile, self.is_closing))

    def _pump(self) -> bool:
        """Wait for the peer's next bytes and hand them to the protocol; False when no more can come.

        For a job that waits for input inside a protocol callback (:meth:`offload`).
        """
        protocol = self._protocol
        assert protocol is not None
        while not self._closing and self._error is None and not self._eof:
            try:
                data = self.sock.recv(RECV_SIZE)
            except self._would_block as exc:
                if self._in_recv:  # a blocking socket says "would block" only when SO_RCVTIMEO ran out
                    self._error = ConnectionTimeout(f"idle for {self._idle_timeout:g} s")
                    return False
                if not self._wait(_READ if isinstance(exc, self._wants_read) or not self._tls else _WRITE):
                    return False
                continue
            except OSError as exc:
                self._fail(exc)
                return False
            if data:
                protocol.data_received(data)
                return True
            self._eof = True
            protocol.eof_received()
        return False

    def _send_file_chunk(self, file_fd: int, offset: int, count: int) -> int:
        """Read one bounded chunk of the file and send it through TLS; return its length."""
        data = os.pread(file_fd, min(count, TLS_FILE_CHUNK), offset)
        if not data:
            raise ShortFileError(f"file ended {count} bytes early")
        self._send_all(memoryview(data))
        return len(data)

    def close(self, *, linger: float = 0.0) -> None:
        """End the connection once the queue is sent (writes are synchronous here).

        With *linger* > 0 the sending side is shut down first and the peer's
        input is read and discarded for up to *linger* seconds, until its
        end-of-file: use it after an error response that leaves unread input.
        """
        self._closing = True
        if linger > self._linger:
            self._linger = linger

    def abort(self) -> None:
        """End the connection at once."""
        self._closing = True
        self._error = self._error or ConnectionAbortedError("aborted by the protocol")

    # -- internals ---------------------------------------------------------

    def _fail(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc
        if not ends_quietly(exc):
            raise exc

    def _poll_for(self, events: int, watch_latch: bool) -> Any:
        """The poll object, watching the socket for *events*, and the latch with *watch_latch*."""
        poller = self._poller
        if poller is None:
            poller = self._poller = select.poll()
            if self._watch_wakeup:
                self._wakeup_fd = self._lifecycle.wakeup_fd()
                poller.register(self._wakeup_fd, select.POLLIN)
        if events != self._polled:
            poller.register(self._fd, events)  # register() of a registered fd modifies it
            self._polled = events
        if watch_latch != self._latch_polled:
            if watch_latch:
                poller.register(self._latch.fileno(), select.POLLIN)
            else:
                poller.unregister(self._latch.fileno())
            self._latch_polled = watch_latch
        return poller

    def _wait(self, events: int, *, between: bool = False, stoppable: bool = False, until: float = _INF) -> bool:
        """Wait until the socket is ready for *events*; run signal actions meanwhile.

        True when the socket is ready (or failed: the next call will say how).
        False when the caller must look again before calling: a time limit
        passed (then the connection has ended, ``_error`` says why), or, in
        a wait *between* exchanges (for a request, or after the peer's EOF)
        or a *stoppable* one (the TLS handshake), a graceful stop began, or,
        between exchanges, the protocol's deadline came.  A wait inside an
        exchange (a write) goes on through a stop: the stop is told when the
        exchange is done (in _serve).  Given *until*, a stop that began is not
        a reason to return: the wait for input goes on until then (the stop is
        told once the connection has been quiet a while: see _serve).
        """
        if self._in_recv:
            # A blocking socket only says "would block" when SO_SNDTIMEO ran out.
            self._error = ConnectionTimeout(f"peer read nothing for {self._idle_timeout:g} s")
            return False
        # The latch is never drained: watch it only until the protocol has been
        # told, or every poll would return at once.
        watch_stop = (between or stoppable) and not self._stop_told and until == _INF
        poller = self._poller
        watch_latch = self._poll_latch and watch_stop
        if poller is None or events != self._polled or self._latch_polled != watch_latch:
            poller = self._poll_for(events, watch_latch)
        lifecycle = self._lifecycle
        wakeup_fd = self._wakeup_fd
        idle_timeout = self._idle_timeout
        now = time.monotonic()
        idle_deadline = _INF if idle_timeout is None else now + idle_timeout
        while True:
            # The protocol's deadline counts while waiting for the peer or idling
            # after its EOF, not while the peer is slow to read our output.
            deadline = min(idle_deadline, lifecycle.deadline, until)  # the graceful deadline is inf until a stop
            protocol_deadline = self._protocol_deadline if between else None
            if protocol_deadline is not None and protocol_deadline < deadline:
                deadline = protocol_deadline
            timeout = None if deadline == _INF else max(0, math.ceil((deadline - now) * 1000))
            for fd, revents in poller.poll(timeout):
                if fd == self._fd:
                    if revents & (events | _FAIL):
                        return True
                elif fd == wakeup_fd:
                    lifecycle.dispatch()
            if watch_stop and self._latch.is_set():
                return False  # a stop began: _serve tells the protocol
            now = time.monotonic()
            if now >= lifecycle.deadline:
                self._past_graceful_deadline()
                return False
            if protocol_deadline is not None and now >= protocol_deadline:
                return False  # _serve calls the protocol's deadline_expired
            if now >= until:
                return False
            if now >= idle_deadline:
                self._error = ConnectionTimeout(f"idle for {idle_timeout:g} s")
                return False

    def run(self, protocol: Protocol) -> BaseException | None:
        """Drive *protocol* until the connection is over; return what ended it.

        Returns None for an orderly end, the exception for a vanished peer or a
        timeout.  A protocol that raises gets :meth:`Protocol.connection_lost`
        with the exception and the caller gets :class:`HandlerError`.  Over
        TLS the handshake comes first; a connection that fails it returns what
        ended it and its protocol never hears of it.
        """
        self._choose_wait(protocol)
        self._protocol = protocol
        if self._tls:
            ended = self._start_tls()
            if ended is not None:
                return ended
        try:
            self._call(protocol.connection_made, self)
            if self._in_recv:
                self._serve_in_recv(protocol)
            self._serve(protocol)
        except HandlerError as fault:
            self._error = fault.original
            self._finish(abort=True)
            self._lost(protocol)
            if isinstance(fault.original, OutOfDescriptors):
                # The process's condition, already warned about (throttled), not the protocol's fault.
                return fault.original
            raise
        self._finish(abort=self._error is not None)
        self._lost(protocol)
        return self._error

    def handshake(self) -> None:
        """Complete the TLS handshake of the connection's :class:`ssl.SSLSocket` in the driver's wait loop.

        Each wait lasts at most the idle timeout, and none begins once the
        handshake has taken that long (so it ends within twice the idle
        timeout however the peer trickles it); signals are handled meanwhile.
        Raises :class:`ssl.SSLError` when the peer does not speak acceptable
        TLS, and the driver's internal :class:`_Ended` on a time limit or a stop
        (the reason in ``_error``).  :func:`tls_handshake` is the hook built on
        it for anything that needs a handshaken SSLSocket of its own, such as a
        blocking request handler.
        """
        import ssl  # loaded already: the socket is an SSLSocket

        assert isinstance(self.sock, ssl.SSLSocket)
        # A peer that trickles its handshake byte by byte must not renew the limit
        # forever: past the idle timeout since the start, no new wait begins.
        limit = None if self._idle_timeout is None else time.monotonic() + self._idle_timeout
        while True:
            try:
                self.sock.do_handshake()
                break
            except ssl.SSLWantReadError:
                events = _READ
            except ssl.SSLWantWriteError:
                events = _WRITE
            if limit is not None and time.monotonic() >= limit:
                self._error = ConnectionTimeout(f"TLS handshake not complete after {self._idle_timeout:g} s")
                raise _Ended
            if not self._wait(events, stoppable=True):
                if self._error is None:
                    self._error = ConnectionAbortedError("server stopping during the TLS handshake")
                raise _Ended
        from framework.drivers.tls import ktls_sending

        self._copy_files = not ktls_sending(self.sock)

    def _start_tls(self) -> BaseException | None:
        """Run :meth:`handshake`; on failure close the socket and return what ended it."""
        try:
            self.handshake()
            return None
        except _Ended:
            pass  # the reason is recorded
        except OSError as exc:  # ssl.SSLError included: a quiet end
            self._error = exc
        try:
            self._drain_input()  # what OpenSSL left unread (plain text...): close with FIN, not a reset
        finally:
            self.sock.close()
        return self._error or ConnectionAbortedError("TLS handshake not completed")

    @staticmethod
    def _call(callback: Any, *args: Any) -> Any:
        try:
            return callback(*args)
        except HandlerError:
            raise
        except Exception as exc:  # a fault in the protocol: this connection only
            raise HandlerError(exc) from exc

    def _choose_wait(self, protocol: Protocol) -> None:
        """Wait in recv or in poll (see the module docstring); make the socket blocking or not to match.

        A worker thread that may wait in recv does so from the start.  The
        main thread waits in poll for its first requests: waiting in recv
        costs it a setup (the watch, the kernel's time limits) that a forked
        child serving one request would pay for nothing, and whose every
        first touch there copies a page of the parent's.  It moves to recv
        after :data:`REQUESTS_BEFORE_RECV` requests, once the connection has
        shown that it stays.
        """
        may_wait_in_recv = ((not self._watch_wakeup or self._watch is not None) and not self._tls
                            and protocol.leaves_stop_to_driver)
        if may_wait_in_recv and not self._watch_wakeup:
            self._enter_recv()
        elif self.sock.gettimeout() is None:  # blocking, as our acceptor hands it over
            self.sock.setblocking(False)
        self._requests_before_recv = REQUESTS_BEFORE_RECV if may_wait_in_recv and self._watch_wakeup else 0

    def _enter_recv(self) -> None:
        """From now on wait in recv: the socket blocks, with the idle limit as the kernel's time limits.

        The limits are set by :meth:`_arm_limits` before the first call that
        would wait: until then every call is tried with ``MSG_DONTWAIT``, and a
        short connection -- its request in at once, its answer fitting in the
        socket buffer -- makes no ``setsockopt`` at all.
        """
        sock = self.sock
        if sock.gettimeout() is not None:  # a socket from our acceptor is blocking already
            sock.setblocking(True)
        self._in_recv = True

    def _arm_limits(self) -> None:
        """Set the idle limit as the kernel's receive and send time limits (once, before a call that would wait)."""
        self._limits_armed = True
        assert self._idle_timeout is not None
        seconds, fraction = divmod(self._idle_timeout, 1)
        # struct timeval: two longs (array, not struct: see _UCRED_SIZE in framework.address).
        limit = array.array("l", (int(seconds), int(fraction * 1_000_000))).tobytes()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, limit)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, limit)

    def _serve_in_recv(self, protocol: Protocol) -> None:
        """Read and hand over, waiting in recv, while only the peer and the time limits can end a wait.

        Returns when the connection is over, or when it must wait in poll from
        now on (:meth:`_wait_in_poll`: the protocol set a deadline, or took the
        socket); :meth:`_serve` carries on.  A stop reaches it as the end of
        its input, which the watch makes once the connection is idle (the
        protocol is then told of the stop); its deadline ends the wait by
        shutting the socket down.
        """
        recv = self.sock.recv
        data_received = protocol.data_received
        watch = self._watch if self._watch_wakeup else None
        if watch is not None:  # the main thread: the watch runs signal actions and the deadline meanwhile
            watch.attach(self.sock, True)  # a plain protocol: its input ends once idle at a stop
        try:
            while self._in_recv and not self._closing and self._error is None:
                try:
                    data = recv(RECV_SIZE) if self._limits_armed else recv(RECV_SIZE, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    if not self._limits_armed:  # nothing yet: wait, within the limits
                        self._arm_limits()
                        continue
                    self._error = ConnectionTimeout(f"idle for {self._idle_timeout:g} s")  # SO_RCVTIMEO ran out
                    return
                except OSError as exc:
                    self._fail(exc)
                    return
                if not data:
                    if self._lifecycle.past_deadline():  # abort_all shut the socket down
                        self._past_graceful_deadline()
                    elif self._latch.is_set() and not self._stop_told:
                        # The watch ended the input of a connection idle at a stop (or the
                        # peer closed meanwhile): the protocol hears of the stop.
                        self._tell_stop(protocol)
                        if not self._closing:
                            self._end_of_input(protocol)
                    else:
                        self._end_of_input(protocol)
                    return
                try:  # _call(data_received, data), inlined: once per exchange
                    data_received(data)
                except HandlerError:
                    raise
                except Exception as exc:  # a fault in the protocol: this connection only
                    raise HandlerError(exc) from exc
        finally:
            if watch is not None:
                watch.detach(self.sock, True)
            if self._closing or self._error is not None:
                self._in_recv = False  # over: the socket may stay blocking (it is only drained, without waiting)
            else:
                self._wait_in_poll()  # the connection goes on (after an EOF the protocol keeps it open)

    def _wait_in_poll(self) -> None:
        """From now on wait in poll: the socket becomes non-blocking."""
        self._requests_before_recv = 0
        if self._in_recv:
            self._in_recv = False
            self.sock.setblocking(False)

    def _end_of_input(self, protocol: Protocol) -> None:
        """The peer's EOF: the protocol says whether the connection stays half open."""
        self._eof = True
        if not self._call(protocol.eof_received):
            self._closing = True

    def _serve(self, protocol: Protocol) -> None:
        """Read and hand over until the connection ends.

        Each turn first looks at what may have happened meanwhile -- a signal
        recorded (main thread), a stop begun, the protocol's deadline -- with
        flag checks, then tries ``recv`` and waits only when it would block:
        a request usually arrived already, with the connection or while the
        previous answer was written.
        """
        recv = self.sock.recv
        latch = self._latch
        lifecycle = self._lifecycle
        signals_pending = lifecycle.signals.pending if self._watch_wakeup else None
        data_received = protocol.data_received
        # Whether to try recv before polling: yes for the first request, which
        # usually came with the connection, and while the peer sends more than
        # one read takes; no once a read found nothing (a failed recv raises,
        # which costs more than the poll it would have saved).
        optimistic = True
        # Once a stop began: when the protocol is told of it, if nothing more comes (see below).
        tell_at = _INF
        while not self._closing and self._error is None:
            if signals_pending is not None and signals_pending():
                lifecycle.dispatch()
            if latch.is_set():
                if time.monotonic() >= lifecycle.deadline:
                    self._past_graceful_deadline()
                    break
                if not self._stop_told:
                    # What the peer sent before the stop is read first: the stop is told
                    # once the socket has nothing more (below), never mid-response.
                    optimistic = True
            if self._protocol_deadline is not None and time.monotonic() >= self._protocol_deadline:
                self._protocol_deadline = None
                self._call(protocol.deadline_expired)
                continue
            if self._eof:
                if not self._stop_told and latch.is_set():
                    self._tell_stop(protocol)
                    continue
                # The protocol keeps the connection after EOF: only its deadline can move it.
                if self._protocol_deadline is None or self._sleep_after_eof():
                    break
                continue
            if not optimistic and not self._wait(_READ, between=True):
                continue
            try:
                data = recv(RECV_SIZE)
            except self._would_block:
                if not self._stop_told and latch.is_set():
                    # Nothing is left unread.  A connection quiet for a moment is told now; one
                    # that was just accepted, or just answered, may have a request on its way.
                    now = time.monotonic()
                    if tell_at == _INF:
                        tell_at = now + stop_grace_left(self.sock)
                    if now >= tell_at:
                        self._tell_stop(protocol)
                    else:
                        self._wait(_READ, between=True, until=tell_at)
                    continue
                if optimistic:
                    optimistic = False
                    self._wait(_READ, between=True)
                continue
            except OSError as exc:
                self._fail(exc)
                break
            if data:
                # A full buffer says more is waiting: read before polling again.
                # OpenSSL may hold more of what the socket already gave, out of poll's sight.
                optimistic = self._tls or len(data) == RECV_SIZE
                try:  # _call(data_received, data), inlined: once per exchange
                    data_received(data)
                except HandlerError:
                    raise
                except Exception as exc:  # a fault in the protocol: this connection only
                    raise HandlerError(exc) from exc
                if self._requests_before_recv:
                    self._requests_before_recv -= 1
                    if not self._requests_before_recv:  # a connection that stays
                        self._enter_recv()
                        self._serve_in_recv(protocol)
            else:
                self._end_of_input(protocol)

    def _past_graceful_deadline(self) -> None:
        """The graceful deadline ends the connection (the main thread says so: nobody else serves here)."""
        self._error = ConnectionTimeout("server stopping: graceful timeout passed")
        if self._watch_wakeup:
            self._lifecycle.forced_end([self._peer])

    def _tell_stop(self, protocol: Protocol) -> None:
        """Tell the protocol, once, that a stop began: between exchanges, with nothing left unread."""
        self._stop_told = True
        self._call(protocol.server_stopping)

    def _sleep_after_eof(self) -> bool:
        """Wait after the peer's EOF; True when the connection is over (the peer vanished)."""
        # Poll for nothing but errors: after EOF the socket stays readable forever.
        if not self._wait(0, between=True):
            return False
        # The socket reported an error or hang-up: the peer is gone.
        self._error = ConnectionResetError("peer gone while the protocol held the connection")
        return True

    def _finish(self, abort: bool) -> None:
        """Close the socket: at once after an error, gracefully otherwise."""
        try:
            if not abort and self._tls:
                self._close_notify()
            if not abort and not self._eof:
                self._drain_input()
        finally:
            if self._own_close:
                close_socket(self.sock)  # nobody else holds it: the C close, without socket.close()'s two frames
            else:
                self.sock.close()  # its class's own (an SSLSocket's...), or one that waits for files made of it

    def _close_notify(self) -> None:
        """Send our close_notify alert; the peer's is not awaited."""
        unwrap = getattr(self.sock, "unwrap")  # noqa: B009 (an SSLSocket's)
        try:
            unwrap()
        except (OSError, ValueError):
            pass  # sent, and the peer's not there yet (want read) or the peer is gone

    def _drain_input(self) -> None:
        """Read what the peer still sends so closing sends FIN, not RST."""
        if self._linger <= 0 and not has_unread_input(self._fd):
            return  # nothing to read, and no wait for the peer's end-of-file
        deadline = -_INF
        budget = LINGER_MAX_BYTES
        poller = None
        try:
            if self._linger > 0:
                self.sock.shutdown(socket.SHUT_WR)
                deadline = time.monotonic() + self._linger
            while budget > 0:
                try:
                    data = self._raw_recv(RECV_SIZE, socket.MSG_DONTWAIT)  # the socket may be blocking
                except BlockingIOError:
                    if deadline == -_INF or time.monotonic() >= deadline:
                        return
                    if poller is None:
                        # The socket alone: a wakeup or the latch must not cut a linger short.
                        poller = select.poll()
                        poller.register(self._fd, _READ)
                    if not poller.poll(poll_timeout_ms(deadline)):
                        return
                    continue
                if not data:
                    return
                budget -= len(data)
        except OSError:
            pass  # the peer is gone: nothing left to protect

    def _lost(self, protocol: Protocol) -> None:
        # The protocol holds this transport, and this its protocol: let go of it here, so that
        # reference counting frees both (a cycle would wait for the collector, paid per connection).
        self._protocol = None
        try:
            protocol.connection_lost(self._error)
        except Exception as exc:
            raise HandlerError(exc) from exc


class _Ended(Exception):
    """Internal: the TLS handshake cannot complete (a time limit or a stop); the reason is in ``_error``."""


def serve_connection(
    sock: socket.socket,
    peer: str,
    protocol: Protocol,
    *,
    lifecycle: Lifecycle,
    idle_timeout: float | None,
    watch_wakeup: bool,
    watch: ConnectionWatch | None = None,
) -> BaseException | None:
    """Run *protocol* over *sock* until the connection is over; see :meth:`BlockingConnection.run`."""
    connection = BlockingConnection(
        sock, peer, lifecycle=lifecycle, idle_timeout=idle_timeout, watch_wakeup=watch_wakeup, watch=watch
    )
    return connection.run(protocol)


def tls_handshake(
    sock: socket.socket,
    peer: str,
    *,
    lifecycle: Lifecycle,
    idle_timeout: float | None,
    watch_wakeup: bool,
) -> BaseException | None:
    """Complete the TLS handshake of *sock* in the driver's wait loop, for code that then uses it itself.

    *sock* is an :class:`ssl.SSLSocket` made with
    ``do_handshake_on_connect=False`` (as :meth:`framework.server.Server.serve_connection`
    makes it).  Returns None once the handshake is complete (the socket is
    left non-blocking: call ``settimeout`` for a blocking request handler),
    or what ended it, with the socket closed.
    """
    sock.setblocking(False)
    connection = BlockingConnection(
        sock, peer, lifecycle=lifecycle, idle_timeout=idle_timeout, watch_wakeup=watch_wakeup
    )
    return connection._start_tls()


__all__ = [
    "DEFAULT_LINGER", "BlockingConnection", "ConnectionTimeout", "HandlerError", "serve_connection", "tls_handshake",
]
