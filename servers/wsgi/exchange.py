"""One request to a WSGI application: body gathered, application called, response written, ``close()`` called.

:class:`WsgiResponder` is the :class:`~servers.http.protocol.Responder` of
one connection; each request becomes an :class:`Exchange`.  The parts that
touch the connection run in its driver's thread: the body is gathered there
as it arrives (:mod:`servers.wsgi.input`), then the application is handed
to :meth:`~framework.protocol.Transport.offload` -- run at once in the
connection's own thread or process under the blocking models, on the event
loop's pool of threads under poll -- and writes through its
:class:`~framework.protocol.Port`, whose writes wait while the client is
slow to read.  When the application is done, the exchange ends in the
driver's thread again (:meth:`~servers.http.protocol.HttpProtocol.exchange_done`).

Failures: an application that raises before its response started gets a
500 and one logged traceback (a broken ``start_response`` call: one logged
line); after the head went out, the connection is closed.  The iterable's
``close()`` is called in every case, the client's disappearance included
(its next write raises inside the exchange).
"""

from __future__ import annotations

import functools
import io
import logging
from typing import IO, Any

from framework.protocol import Port
from servers.http import responses
from servers.http.body import BodyError, BodyTooLarge, ChunkedBody, LengthBody
from servers.http.parser import RequestHead
from servers.http.protocol import HttpProtocol
from servers.wsgi.environ import EnvironFactory, ServerFacts
from servers.wsgi.input import EMPTY_INPUT, BodyUnreadable, Spool, WsgiInput
from servers.wsgi.loading import Application
from servers.wsgi.response import FileWrapper, Response, ResponseError

log = logging.getLogger("forkthread.wsgi")

# Where a request body stands.
_PENDING, _COMPLETE, _BROKEN = 0, 1, 2


class WsgiResponder:
    """Answers the requests of one connection with *app*."""

    #: Every method goes to the application, which reads the body; its response may come later.
    answers_later = True

    __slots__ = ("app", "environs", "facts", "max_body")

    def __init__(self, app: Application, facts: ServerFacts, max_body: int) -> None:
        self.app = app
        self.facts = facts
        self.max_body = max_body
        self.environs: EnvironFactory | None = None

    def answer(self, connection: HttpProtocol, request: RequestHead, keep_alive: bool) -> None:
        """Start the exchange of *request* (it ends with ``connection.exchange_done``)."""
        if self.environs is None:
            self.environs = EnvironFactory(self.facts, connection.transport.peer)
        Exchange(self, connection, request, keep_alive).begin()


class Exchange:
    """One request and its response."""

    __slots__ = ("body_error", "body_state", "connection", "dispatched", "input", "keep_alive", "port", "reader",
                 "request", "responder", "spool")

    def __init__(self, responder: WsgiResponder, connection: HttpProtocol, request: RequestHead,
                 keep_alive: bool) -> None:
        self.responder = responder
        self.connection = connection
        self.request = request
        self.keep_alive = keep_alive
        self.reader: LengthBody | ChunkedBody | None = None
        self.spool: Spool | None = None
        self.body_state = _COMPLETE
        self.body_error: BodyError | None = None
        self.dispatched = False
        self.input: Any = EMPTY_INPUT
        self.port: Port | None = None

    # -- the driver's thread ---------------------------------------------------------

    def begin(self) -> None:
        """Gather the body (or, for ``Expect: 100-continue``, wait for the application to ask), then call it."""
        request = self.request
        if not request.chunked and not request.content_length:
            self._dispatch()
            return
        max_body = self.responder.max_body
        if not request.chunked and request.content_length > max_body:
            self.connection.refuse_body(BodyTooLarge(f"body of {request.content_length} bytes over {max_body}"))
            return
        self.reader = ChunkedBody(max_body) if request.chunked else LengthBody(request.content_length)
        self.spool = Spool()
        self.body_state = _PENDING
        if request.expects_continue and request.version >= (1, 1):
            self.input = WsgiInput(None, self._fetch_body)
            self._dispatch()
            return
        self.connection.on_input = self._gather
        self._gather()

    def _gather(self) -> None:
        """Take what came of the body (the connection calls this as input arrives)."""
        connection = self.connection
        assert self.reader is not None and self.spool is not None
        try:
            done = connection.take_body(self.reader, self.spool.write)
        except BodyError as refused:
            self._body_broken(refused)
            return
        if done:
            connection.on_input = None
            self.reader = None
            self.body_state = _COMPLETE
            if self.dispatched:
                assert self.port is not None
                self.port.wake()
                return
            self.input = WsgiInput(self.spool.reader())
            self._dispatch()
        elif connection.peer_closed:
            self._body_broken(None)

    def _body_broken(self, refused: BodyError | None) -> None:
        """The body broke its framing or bound (*refused*), or the client stopped sending it (None)."""
        self.connection.on_input = None
        if self.spool is not None and not self.dispatched:
            self.spool.close()
        if not self.dispatched:
            if refused is None:
                self.connection.transport.close()
            else:
                log.debug("%s: request body refused: %s", self.connection.transport.peer, refused)
                self.connection.refuse_body(refused)
            return
        self.body_error = refused or BodyError("the client stopped sending the body")
        self.body_state = _BROKEN
        assert self.port is not None
        self.port.wake()

    def _dispatch(self) -> None:
        self.dispatched = True
        self.connection.transport.offload(self._run)

    def _begin_body(self) -> None:
        """The application asks for the body it was called without: 100 Continue, then gather it."""
        connection = self.connection
        if connection.transport.is_closing():
            return
        connection.transport.write(responses.CONTINUE)
        connection.on_input = self._gather
        # A client may send the body without waiting for the 100: what came may have paused reading.
        connection.transport.resume_reading()
        self._gather()

    def _end(self, keep_alive: bool, response: Response) -> None:
        """The application is done: log, release the spool, let the connection go on (driver's thread)."""
        connection = self.connection
        if self.spool is not None:
            self.spool.close()
        if connection.access_log is not None and response.code:
            connection.access_log.log(connection.transport.peer, self.request.request_line, response.code,
                                      response.sent)
        unread = None
        if self.body_state != _COMPLETE:
            connection.on_input = None
            unread = self.reader
            # A body never asked for (Expect) may never come: the connection cannot wait for it.
            keep_alive = False
        connection.exchange_done(keep_alive, unread)

    # -- the application's thread ---------------------------------------------------------

    def _fetch_body(self) -> io.BufferedIOBase:
        """``wsgi.input``'s first read under ``Expect: 100-continue``: ask for the body and wait for it."""
        port = self.port
        assert port is not None and self.spool is not None
        port.call(self._begin_body)
        if not port.wait_until(lambda: self.body_state != _PENDING):
            raise ConnectionAbortedError("the connection ended before the request body came")
        if self.body_state == _BROKEN:
            error = self.body_error
            raise BodyUnreadable(error.status if error is not None else 400, str(error))
        return self.spool.reader()

    def _run(self, port: Port) -> None:
        """Call the application and write its response; end the exchange in the driver's thread."""
        self.port = port
        responder = self.responder
        assert responder.environs is not None
        environ = responder.environs.environ(self.request)
        environ["wsgi.input"] = self.input
        if self.spool is not None and self.body_state == _COMPLETE:
            environ["CONTENT_LENGTH"] = str(self.spool.size)
        response = Response(self.request, self.keep_alive, port.write, port.sendfile)
        keep_alive = False
        try:
            keep_alive = self._call(responder.app, environ, response)
        finally:
            port.call(functools.partial(self._end, keep_alive, response))

    def _call(self, app: Application, environ: dict[str, Any], response: Response) -> bool:
        """Run *app* to the end of its response; True when the connection may carry another request."""
        try:
            result = app(environ, response.start_response)
        except Exception as exc:
            return self._failed(exc, response)
        try:
            if type(result) is list and len(result) == 1 and response.status is not None \
                    and type(result[0]) is bytes:
                response.send_whole(result[0])  # the common case: head and body in one write
            elif type(result) is FileWrapper and response.send_file(result.filelike):
                pass
            else:
                for data in result:
                    response.write(data)
            response.finish()
        except ConnectionError as gone:
            log.debug("%s: client gone during the response: %s", self.connection.transport.peer, gone)
            return False
        except Exception as exc:
            return self._failed(exc, response)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                try:
                    close()
                except Exception as exc:
                    log.error("%s: the application's close() failed: %r", self.request.request_line.decode(
                        "latin-1"), exc, exc_info=exc)
        return response.keeps_alive()

    def _failed(self, exc: Exception, response: Response) -> bool:
        """The application (or its body) failed: 500 before the head went out, else the connection ends."""
        line = self.request.request_line.decode("latin-1")
        if isinstance(exc, ConnectionError):
            log.debug("%s: client gone: %s", line, exc)
            return False
        if isinstance(exc, BodyUnreadable):
            status = exc.status
            log.debug("%s: request body unreadable: %s", line, exc)
        elif isinstance(exc, ResponseError):
            status = 500
            log.error("%s: application error: %s", line, exc)
        else:
            status = 500
            log.error("%s: application raised %r", line, exc, exc_info=exc)
        if response.head_sent:
            return False  # the status is out: only the end of the connection can say something went wrong
        response.code, response.sent = status, len(responses.error_body(status))
        assert self.port is not None
        try:
            self.port.write(responses.error_response(status, keep_alive=False))
        except ConnectionError:
            pass
        return False


def file_wrapper(filelike: IO[bytes], blksize: int = 65536) -> FileWrapper:
    """``wsgi.file_wrapper``."""
    return FileWrapper(filelike, blksize)
