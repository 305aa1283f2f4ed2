"""The HTTP/1.x connection: framing, keep-alive, pipelining, time limits, bodies, errors.

:class:`HttpProtocol` is sans-I/O: it is handed bytes in chunks split
anywhere and answers through its transport, one request at a time, in the
order they came (so pipelined requests are answered in order under either
driver).  What a request gets is decided by its :class:`Responder`: the
static-file site (:class:`~servers.http.site.StaticSite`: GET and HEAD,
answered at once) or an application (:mod:`servers.wsgi`: every method, its
body read by the application, its response possibly later, from another
thread).  Everything about the connection is decided here, once for both:
the parser and its limits, the smuggling defences, the header timeout, the
request bodies nobody reads (skipped within a size and a time bound, see
:mod:`~servers.http.body`), ``Expect: 100-continue`` for the requests the
site answers, keep-alive and the end of the connection.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol as _TypingProtocol

from framework.drivers.common import DEFAULT_LINGER
from framework.protocol import Protocol, Transport
from servers.http import responses
from servers.http.access_log import AccessLog
from servers.http.body import MAX_BODY, BodyError, ChunkedBody, LengthBody
from servers.http.parser import KNOWN_METHODS, MAX_HEAD, SERVED_METHODS, HeadParser, RequestError, RequestHead

log = logging.getLogger("forkthread.http")

#: Default ``--header-timeout``: seconds a whole request head, and then its body, may each take to arrive.
DEFAULT_HEADER_TIMEOUT = 10.0

# What the header-timeout clock is timing, if anything.
_IDLE, _HEAD, _BODY = "idle", "head", "body"

_ALLOW = f"Allow: {responses.ALLOW}\r\n"


def _never() -> bool:
    return False


class Responder(_TypingProtocol):
    """What answers the requests of a connection (the static site, or an application).

    A responder with :attr:`answers_later` false answers GET and HEAD at once
    in :meth:`answer` (its bodies are skipped by the connection).  One with
    :attr:`answers_later` true gets every request, reads its body itself
    from the connection (:meth:`HttpProtocol.take_body`), and ends each
    exchange with :meth:`HttpProtocol.exchange_done`, maybe later: until
    then the connection only buffers what comes.
    """

    #: True: every method is handed over, and the exchange ends by exchange_done().
    answers_later: bool

    def answer(self, connection: HttpProtocol, request: RequestHead, keep_alive: bool) -> None:
        """Answer *request* on *connection* (``Connection: keep-alive`` when *keep_alive*)."""


class HttpProtocol(Protocol):
    """One HTTP connection answered by *responder*; each request head must arrive within *header_timeout*.

    *stopping* tells whether the server is shutting down: then each response
    says ``Connection: close`` and ends its connection, so that a graceful
    stop does not wait for keep-alive clients to go away by themselves.
    """

    def __init__(self, responder: Responder, *, header_timeout: float = DEFAULT_HEADER_TIMEOUT,
                 access_log: AccessLog | None = None, stopping: Callable[[], bool] = _never) -> None:
        self.responder = responder
        self._answers_later = responder.answers_later
        self.header_timeout = header_timeout
        self.access_log = access_log
        self.stopping = stopping
        self.parser = HeadParser()
        #: The body of the current request, being read and dropped (None: none is pending).
        self.body: LengthBody | ChunkedBody | None = None
        #: What the deadline is running for: a request head (from its first byte to its
        #: blank line), a body (from the end of its head to its end), or nothing.
        self.timing = _IDLE
        #: An exchange a later-answering responder has not ended yet: input is only buffered.
        self.busy = False
        #: Called (by the driver's thread) when bytes arrive during a busy exchange.
        self.on_input: Callable[[], None] | None = None
        #: The peer half-closed during a busy exchange: close once it is over.
        self._eof_while_busy = False
        # Inside _next_requests (an exchange that ends at once must not start the next one itself).
        self._answering = False

    def connection_made(self, transport: Transport) -> None:
        """Start the clock for the first request head."""
        self.transport = transport
        transport.set_deadline(self.header_timeout)
        self.timing = _HEAD

    def data_received(self, data: bytes) -> None:
        """Buffer *data* and answer every request it completes, in order."""
        parser = self.parser
        parser.feed(data)
        if self.busy:
            if self.on_input is not None:
                self.on_input()
            elif parser.buffered > MAX_HEAD:
                # Pipelined requests while an application runs: keep them in the kernel, not here.
                self.transport.pause_reading()
            return
        self._next_requests()

    def _next_requests(self) -> None:
        """Answer every complete request buffered, in order, until one stays busy."""
        if self._answering:
            return  # an exchange ended inside _answer (a blocking job): the loop below goes on
        self._answering = True
        try:
            self._answer_buffered()
        finally:
            self._answering = False

    def _answer_buffered(self) -> None:
        parser = self.parser
        transport = self.transport
        while not transport.is_closing() and not self.busy:
            if self.body is not None and not self._skip_body():
                return
            if not parser.buffered:
                return
            if self.timing is _IDLE:
                transport.set_deadline(self.header_timeout)
                self.timing = _HEAD
            try:
                request = parser.next_head()
            except RequestError as refused:
                self._refuse(refused.status, refused.detail, refused.request_line)
                return
            if request is None:
                return
            transport.set_deadline(None)
            self.timing = _IDLE
            self._answer(request)

    def _skip_body(self) -> bool:
        """Drop what has come of the pending body; True once it is all gone."""
        assert self.body is not None
        try:
            done = self.parser.skip_body(self.body)
        except BodyError as refused:
            # The response went out already; where the next request would start is unknown.
            log.debug("%s: request body refused: %s", self.transport.peer, refused)
            self.transport.close(linger=DEFAULT_LINGER)
            return False
        if done:
            self.body = None
            self.transport.set_deadline(None)
            self.timing = _IDLE
            if self.stopping() and not self.parser.buffered:
                # A stop began while the body came (server_stopping waited for it): the exchange is over.
                self.transport.close()
                return False
        return done

    def eof_received(self) -> bool | None:
        """The client is done sending: finish what is queued and close (after a busy exchange ends)."""
        if self.busy:
            self._eof_while_busy = True
            if self.on_input is not None:
                self.on_input()
            return True
        return None

    @property
    def peer_closed(self) -> bool:
        """True once the peer half-closed while an exchange was busy (no more body will come)."""
        return self._eof_while_busy

    def server_stopping(self) -> None:
        """A graceful stop began: an idle keep-alive connection closes now.

        A request in progress is answered first; its response says
        ``Connection: close`` (see *stopping*) and ends the connection.
        """
        if not self.parser.buffered and self.body is None and not self.busy:
            self.transport.close()

    def deadline_expired(self) -> None:
        """A request head took longer than the header timeout (408, then close), or a body did (close).

        A body's deadline is a total time, not an idle time: trickling a byte
        now and then does not extend it.
        """
        timing, self.timing = self.timing, _IDLE
        if timing is _IDLE or self.transport.is_closing():
            return  # a deadline cancelled too late to stop it: nothing was pending
        if timing is _BODY:
            # Its response is sent: all that is left is to stop waiting for the rest.
            log.debug("%s: request body not complete within %g s", self.transport.peer, self.header_timeout)
            self.transport.close()
            return
        log.debug("%s: request head not complete within %g s", self.transport.peer, self.header_timeout)
        self._refuse(408, "", b"")

    # -- answering -------------------------------------------------------------

    def _answer(self, request: RequestHead) -> None:
        """Answer *request*, then arrange to skip its body or close, whichever keeps the framing."""
        keep_alive = request.keep_alive and not self.stopping()
        if self._answers_later:
            self.busy = True
            self.responder.answer(self, request, keep_alive)
            return
        served = request.method in SERVED_METHODS
        has_body = request.chunked or request.content_length > 0
        if has_body:
            # Read (and drop) a body only when that keeps the connection: it fits the bound, and
            # when we refuse the request, the client is not waiting for a 100 we will not send
            # (it would send the body or not: the next request's start would be a guess).
            keep_alive = keep_alive and request.content_length <= MAX_BODY \
                and (served or not request.expects_continue)
            if keep_alive and request.expects_continue and request.version >= (1, 1) \
                    and not self.parser.buffered:
                # RFC 9110 section 10.1.1: the body will be read, so ask for it.
                self.transport.write(responses.CONTINUE)
        if served:
            self.responder.answer(self, request, keep_alive)
        else:
            self._not_served(request, keep_alive)
        if not keep_alive:
            # With a body still coming, linger so that the client reads the response, not a reset.
            self.transport.close(linger=DEFAULT_LINGER if has_body else 0.0)
        elif has_body:
            self.body = ChunkedBody() if request.chunked else LengthBody(request.content_length)
            self.transport.set_deadline(self.header_timeout)
            self.timing = _BODY

    # -- exchanges a responder ends later --------------------------------------------

    def take_body(self, body: LengthBody | ChunkedBody, sink: Callable[[bytes | bytearray], object] | None) -> bool:
        """Hand *sink* what has come of the busy exchange's *body*; True once it is complete.

        Raises :class:`~servers.http.body.BodyError` when the body breaks its framing or bound.
        Called in the driver's thread only (where :meth:`data_received` runs).
        """
        return self.parser.skip_body(body, sink)

    def exchange_done(self, keep_alive: bool, unread: LengthBody | ChunkedBody | None = None) -> None:
        """The busy exchange is over: its response is written, *unread* is what is left of its body.

        With *keep_alive*, what is left of the body is skipped (within
        :data:`~servers.http.body.MAX_BODY`, else the connection closes) and
        the next buffered request is answered; otherwise the connection
        closes, lingering when a body is still coming.  Called in the
        driver's thread only.
        """
        self.busy = False
        self.on_input = None
        transport = self.transport
        if transport.is_closing():
            return
        transport.resume_reading()
        if unread is not None and isinstance(unread, LengthBody) and unread.remaining > MAX_BODY:
            keep_alive = False
        if not keep_alive or self._eof_while_busy:
            transport.close(linger=DEFAULT_LINGER if unread is not None and not self._eof_while_busy else 0.0)
            return
        if unread is None and not self.parser.buffered and self.stopping():
            transport.close()  # a stop began while the exchange ran (server_stopping waited for it)
            return
        if unread is not None:
            self.body = unread
            self.transport.set_deadline(self.header_timeout)
            self.timing = _BODY
        self._next_requests()

    def refuse_body(self, refused: BodyError) -> None:
        """The busy exchange's body broke its framing or bound before any response: 400 or 413, close."""
        self.busy = False
        self.on_input = None
        self._refuse(refused.status, str(refused), b"")

    def _not_served(self, request: RequestHead, keep_alive: bool) -> None:
        """405 for a method HTTP defines (with ``Allow``), 501 for one it does not."""
        status = 405 if request.method in KNOWN_METHODS else 501
        payload = responses.error_response(status, keep_alive=keep_alive,
                                           extra=_ALLOW if status == 405 else "")
        self.transport.write(payload)
        if self.access_log is not None:
            self.access_log.log(self.transport.peer, request.request_line, status,
                                len(responses.error_body(status)))

    def _refuse(self, status: int, detail: str, request_line: bytes) -> None:
        """Answer a request that cannot be framed or parsed, then close gracefully."""
        log.debug("%s: %d %s", self.transport.peer, status, detail)
        self.transport.write(responses.error_response(status, detail))
        if self.access_log is not None:
            self.access_log.log(self.transport.peer, request_line, status, len(responses.error_body(status, detail)))
        self.transport.close(linger=DEFAULT_LINGER)
