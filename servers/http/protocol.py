"""The HTTP/1.x connection: framing, keep-alive, pipelining, time limits, errors.

:class:`HttpProtocol` is sans-I/O: it is handed bytes in chunks split
anywhere and answers through its transport, one request at a time, in the
order they came (so pipelined requests are answered in order under either
driver).  What a GET or HEAD gets is decided by
:class:`~servers.http.site.StaticSite`; everything about the connection is
decided here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from framework.drivers.common import DEFAULT_LINGER
from framework.protocol import Protocol, Transport
from servers.http import responses
from servers.http.access_log import AccessLog
from servers.http.parser import KNOWN_METHODS, SERVED_METHODS, HeadParser, RequestError, RequestHead
from servers.http.site import StaticSite

log = logging.getLogger("forkthread.http")

#: Default ``--header-timeout``: seconds a whole request head may take to arrive.
DEFAULT_HEADER_TIMEOUT = 10.0
#: Largest request body read and thrown away to keep a connection after 405/501 (larger: close).
MAX_DISCARDED_BODY = 1 << 20

_ALLOW = f"Allow: {responses.ALLOW}\r\n"


def _never() -> bool:
    return False


class HttpProtocol(Protocol):
    """One HTTP connection serving *site*; the head of each request must arrive within *header_timeout*.

    *stopping* tells whether the server is shutting down: then each response
    says ``Connection: close`` and ends its connection, so that a graceful
    stop does not wait for keep-alive clients to go away by themselves.
    """

    def __init__(self, site: StaticSite, *, header_timeout: float = DEFAULT_HEADER_TIMEOUT,
                 access_log: AccessLog | None = None, stopping: Callable[[], bool] = _never) -> None:
        self.site = site
        self.header_timeout = header_timeout
        self.access_log = access_log
        self.stopping = stopping
        self.parser = HeadParser()
        #: Body bytes of the current request still to be read and dropped.
        self.to_discard = 0
        #: Whether the header deadline is running (it runs from a request's first byte to its blank line).
        self.timing = False

    def connection_made(self, transport: Transport) -> None:
        """Start the clock for the first request head."""
        self.transport = transport
        transport.set_deadline(self.header_timeout)
        self.timing = True

    def data_received(self, data: bytes) -> None:
        """Buffer *data* and answer every request it completes, in order."""
        parser = self.parser
        parser.feed(data)
        transport = self.transport
        while not transport.is_closing():
            if self.to_discard:
                self.to_discard -= parser.discard(self.to_discard)
                if self.to_discard:
                    return
            if not parser.buffered:
                return
            if not self.timing:
                transport.set_deadline(self.header_timeout)
                self.timing = True
            try:
                request = parser.next_head()
            except RequestError as refused:
                self._refuse(refused.status, refused.detail, refused.request_line)
                return
            if request is None:
                return
            transport.set_deadline(None)
            self.timing = False
            self._answer(request)

    def eof_received(self) -> bool | None:
        """The client is done sending: finish what is queued and close."""
        return None

    def server_stopping(self) -> None:
        """A graceful stop began: an idle keep-alive connection closes now.

        A request in progress is answered first; its response says
        ``Connection: close`` (see *stopping*) and ends the connection.
        """
        if not self.parser.buffered and not self.to_discard:
            self.transport.close()

    def deadline_expired(self) -> None:
        """A request head took longer than the header timeout: 408, then close."""
        if not self.timing or self.transport.is_closing():
            return  # a deadline cancelled too late to stop it: nothing was pending
        self.timing = False
        log.debug("%s: request head not complete within %g s", self.transport.peer, self.header_timeout)
        self._refuse(408, "", b"")

    # -- answering -------------------------------------------------------------

    def _answer(self, request: RequestHead) -> None:
        method = request.method
        if method not in SERVED_METHODS:
            self._not_served(request)
            return
        keep_alive = request.keep_alive and not request.chunked and not self.stopping()
        # A body on a GET means nothing here, but it must not be read as the next request.
        self.to_discard = request.content_length
        response = self.site.respond(request, keep_alive)
        transport = self.transport
        transport.write(response.head)
        if response.file is not None:
            transport.sendfile(response.file, response.offset, response.count)
        if self.access_log is not None:
            self.access_log.log(transport.peer, request.request_line, response.status, response.body_size)
        if not keep_alive:
            transport.close(linger=DEFAULT_LINGER if request.chunked else 0.0)

    def _not_served(self, request: RequestHead) -> None:
        """405 for a method HTTP defines (with ``Allow``), 501 for one it does not."""
        status = 405 if request.method in KNOWN_METHODS else 501
        # Keep the connection only when the body can be skipped cheaply and is on its way.
        keep_alive = (request.keep_alive and not request.chunked and request.content_length <= MAX_DISCARDED_BODY
                      and not (request.expects_continue and request.content_length) and not self.stopping())
        payload = responses.error_response(status, keep_alive=keep_alive,
                                           extra=_ALLOW if status == 405 else "")
        self.transport.write(payload)
        if self.access_log is not None:
            self.access_log.log(self.transport.peer, request.request_line, status,
                                len(responses.error_body(status)))
        if keep_alive:
            self.to_discard = request.content_length
        else:
            self.transport.close(linger=DEFAULT_LINGER)

    def _refuse(self, status: int, detail: str, request_line: bytes) -> None:
        """Answer a request that cannot be framed or parsed, then close gracefully."""
        log.debug("%s: %d %s", self.transport.peer, status, detail)
        self.transport.write(responses.error_response(status, detail))
        if self.access_log is not None:
            self.access_log.log(self.transport.peer, request_line, status, len(responses.error_body(status, detail)))
        self.transport.close(linger=DEFAULT_LINGER)
