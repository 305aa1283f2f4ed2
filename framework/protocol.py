"""The sans-I/O contract between what a server says and how it is carried.

A :class:`Protocol` never touches a socket.  It is told about a connection's
life (``connection_made``, ``data_received``, ``eof_received``,
``connection_lost``) and answers through a :class:`Transport` (``write``,
``sendfile``, ``close``).  The shape follows :class:`asyncio.Protocol` so that
a Python programmer feels at home, and it means one protocol runs unchanged
under the blocking driver (iterative, forking, threading, pre-forked workers)
and the non-blocking one (poll), and can be unit-tested with
:class:`framework.testing.RecordingTransport`, fed one byte at a time.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Callable
from typing import IO, Any, ClassVar
from typing import Protocol as _TypingProtocol


class FileLike(_TypingProtocol):
    """Anything with a real file descriptor: what :meth:`Transport.sendfile` accepts."""

    def fileno(self) -> int:
        """Return the operating-system file descriptor."""


class Port(abc.ABC):
    """A blocking job's side of its connection (see :meth:`Transport.offload`).

    The job may run in another thread than the connection's driver: every
    method here is safe from the job's thread, and waits when it must.
    """

    @abc.abstractmethod
    def write(self, data: bytes) -> None:
        """Send *data*, waiting while the peer is slow to read (bounded buffering).

        Raises :class:`ConnectionAbortedError` once the connection has ended.
        """

    @abc.abstractmethod
    def sendfile(self, file: FileLike | IO[bytes], offset: int, count: int) -> None:
        """Send *count* bytes of *file* from *offset* (``sendfile(2)``, or through TLS), as :meth:`write`."""

    @abc.abstractmethod
    def call(self, callback: Callable[[], None]) -> None:
        """Run *callback* in the connection's driver thread (where the protocol's callbacks run)."""

    @abc.abstractmethod
    def wait_until(self, predicate: Callable[[], bool]) -> bool:
        """Wait until *predicate* holds, as the protocol receives input; False if the connection ended first.

        The protocol calls :meth:`wake` when what *predicate* looks at changed.
        """

    @abc.abstractmethod
    def wake(self) -> None:
        """Tell a job waiting in :meth:`wait_until` to look again."""


class Transport(abc.ABC):
    """One connection as a protocol sees it: a place to write bytes to.

    Every method is safe to call from inside any protocol callback.  After
    :meth:`close` (or :meth:`abort`) further writes are silently dropped: a
    protocol never has to guard against a peer that went away.
    """

    @abc.abstractmethod
    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Queue *data* for sending, in order with earlier writes and sendfiles."""

    @abc.abstractmethod
    def sendfile(self, file: FileLike | IO[bytes], offset: int = 0, count: int | None = None) -> None:
        """Send *count* bytes of *file* from *offset* (to its end when ``None``).

        The bytes go from the page cache to the socket with ``sendfile(2)``,
        never through a Python buffer.  The caller keeps ownership of *file*:
        the driver duplicates the descriptor when it has to keep it beyond
        this call, so the caller may close its own file as soon as it likes.
        """

    @abc.abstractmethod
    def close(self, *, linger: float = 0.0) -> None:
        """Finish sending what is queued, then end the connection gracefully.

        Input the peer sent that nobody read is drained first, so the close
        sends FIN rather than a reset.  With *linger* > 0 (use it after an
        error response that leaves a request unread) the sending side is
        shut down and the peer's input is discarded for up to *linger*
        seconds until its end-of-file, so that the peer reads the response
        instead of a reset.
        """

    @abc.abstractmethod
    def abort(self) -> None:
        """End the connection at once, dropping anything still queued."""

    @abc.abstractmethod
    def is_closing(self) -> bool:
        """Return True once :meth:`close` or :meth:`abort` has been called."""

    @abc.abstractmethod
    def set_deadline(self, seconds: float | None) -> None:
        """Call :meth:`Protocol.deadline_expired` in *seconds* (``None`` cancels).

        This is how a sans-I/O protocol expresses time limits of its own (an
        HTTP server's header timeout, for example) without owning a clock.
        """

    @property
    @abc.abstractmethod
    def peer(self) -> str:
        """The peer's address as text (``HOST:PORT``, ``[V6]:PORT`` or ``unix``)."""

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """Return optional information, asyncio style (``"peername"``, ``"sockname"``)."""
        return default

    def offload(self, job: Callable[[Port], None]) -> None:
        """Run *job*, which may block (an application), with its :class:`Port` to this connection.

        A blocking transport runs it at once, in the connection's own thread;
        a non-blocking one runs it on its event loop's bounded pool of threads
        and returns at once (see :mod:`framework.drivers.offload`).
        """
        raise NotImplementedError(f"{type(self).__name__} cannot run blocking jobs")

    def pause_reading(self) -> None:  # noqa: B027 (a hook with a default, not an abstract method)
        """Deliver no more ``data_received`` until :meth:`resume_reading`: back-pressure, asyncio style.

        For a protocol whose input becomes other connections' output (a chat
        room): while they cannot take more, the sender is not read, so its
        own kernel buffers fill and it is slowed, not its readers.  The
        event-loop driver stops watching the socket.  The default does
        nothing: the blocking driver reads only between callbacks, so there a
        callback that waits for room *is* the back-pressure.
        """

    def resume_reading(self) -> None:  # noqa: B027
        """Read again after :meth:`pause_reading` (the default does nothing, as there)."""


class Protocol:
    """What a server says on one connection.  Subclass and override what you need.

    The driver calls, in this order: :meth:`connection_made` once, then
    :meth:`data_received` for every chunk (chunks may be split anywhere, down
    to single bytes), then :meth:`eof_received` when the peer half-closes, and
    finally :meth:`connection_lost` exactly once.
    """

    transport: Transport

    #: True when the class overrides neither :meth:`server_stopping` nor
    #: :meth:`between_messages`: a stop then needs nothing of the protocol's, so a
    #: blocking driver may wait in ``recv``.  Worked out for each class as it is
    #: made (setting it has no effect), so that a connection -- a forked child's
    #: one and only -- reads it rather than works it out.
    leaves_stop_to_driver: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.leaves_stop_to_driver = (cls.server_stopping is Protocol.server_stopping
                                     and cls.between_messages is Protocol.between_messages)

    def connection_made(self, transport: Transport) -> None:
        """Called once with the transport of a new connection."""
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        """Called with every chunk of bytes the peer sends."""

    def eof_received(self) -> bool | None:
        """Called when the peer has finished sending (it half-closed).

        Return a true value to keep the connection open for writing (the
        protocol then calls :meth:`Transport.close` when it is done);
        return ``None`` or False to have the transport closed once every
        queued byte has been sent.
        """
        return None

    def deadline_expired(self) -> None:
        """Called when a deadline set with :meth:`Transport.set_deadline` passes.

        The default closes the connection.
        """
        self.transport.close()

    def between_messages(self) -> bool:
        """True when the connection is idle between messages: nothing half received, nothing being answered.

        A graceful stop closes such a connection (:meth:`server_stopping`), as
        nginx closes idle keep-alive connections, instead of waiting for the
        client to leave.  The default, True, fits a protocol that deals with
        every chunk as it comes (echo); one that keeps part of a message
        between calls of :meth:`data_received` (a line still without its
        newline, a length-prefixed message not complete yet) says False then.
        """
        return True

    def server_stopping(self) -> None:
        """Called once when a graceful stop began while this connection is open.

        The driver calls it between exchanges, once nothing the peer sent is
        left unread and the connection has been quiet (nothing received or
        sent) for :data:`~framework.drivers.common.STOP_IDLE_GRACE` seconds
        -- at once if it already was -- so a request already on its way is
        answered.  The default closes the connection when
        :meth:`between_messages` says so; otherwise it runs on until it ends
        by itself or the graceful deadline passes.  Override to do more (an
        HTTP server also answers a request in progress with ``Connection: close``).
        """
        if self.between_messages():
            self.transport.close()

    def connection_lost(self, exc: BaseException | None) -> None:
        """Called once when the connection is over.

        *exc* is None for an orderly end, otherwise what ended it: a
        :class:`ConnectionError` for a vanished peer, :class:`TimeoutError`
        for an idle or shutdown timeout.
        """


def file_size(file: FileLike | IO[bytes]) -> int:
    """Return the size in bytes of an open file, by descriptor."""
    return os.fstat(file.fileno()).st_size
