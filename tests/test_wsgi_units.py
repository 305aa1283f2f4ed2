"""The WSGI server sans-I/O: the HTTP core with the WSGI responder fed whole and byte by byte; its pieces alone."""

from __future__ import annotations

import io

import pytest

from framework.testing import RecordingTransport
from servers.http.protocol import HttpProtocol
from servers.wsgi.environ import ServerFacts, path_of
from servers.wsgi.exchange import WsgiResponder, file_wrapper
from servers.wsgi.input import SPOOL_MEMORY, Spool, WsgiInput
from servers.wsgi.loading import AppLoadError, load_app
from servers.wsgi.server import ErrorStream
from tests.http_support import parse_responses, pieces_of
from tests.wsgi_apps.plain import app as plain_app

FACTS = ServerFacts(root_path="", forwarded_allow=frozenset(), multithread=False, multiprocess=False,
                    url_scheme="http", server_name="127.0.0.1", server_port="8000", errors=ErrorStream(),
                    file_wrapper=file_wrapper)


def run(data: bytes, methods: list[str], chunk: int | None = None, app=plain_app, max_body: int = 1 << 30):
    transport = RecordingTransport()
    protocol = HttpProtocol(WsgiResponder(app, FACTS, max_body))
    protocol.connection_made(transport)
    for piece in pieces_of(data, chunk):
        if transport.is_closing():
            break
        protocol.data_received(piece)
    return parse_responses(transport.output(), methods, eof=transport.closed), transport


def post(path: str, body: bytes, *headers: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: t", *headers]
    if not any(h.lower().startswith("transfer-encoding") for h in headers):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join([*lines, "", ""])).encode() + body


CHUNKINGS = pytest.mark.parametrize("chunk", [None, -1, 1], ids=["whole", "lines", "bytes"])


@CHUNKINGS
def test_pipelined_bodies_length_and_chunked(chunk):
    data = (post("/echo", b"hello") + post("/echo-lines", b"", "Transfer-Encoding: chunked")
            + b"3\r\na\nb\r\n0\r\nTrailer: x\r\n\r\n" + b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    replies, transport = run(data, ["POST", "POST", "GET"], chunk)
    assert [reply.body for reply in replies] == [b"hello", b"2\na\nb", b"Hello, World!"]
    assert not transport.closed


@CHUNKINGS
def test_a_broken_chunked_body_is_400_before_the_app(chunk):
    called = []

    def app(environ, start_response):
        called.append(environ["PATH_INFO"])
        start_response("200 OK", [])
        return [b""]

    replies, transport = run(post("/x", b"", "Transfer-Encoding: chunked") + b"0x5\r\nhello\r\n0\r\n\r\n", ["POST"],
                             chunk, app=app)
    assert [reply.status for reply in replies] == [400] and transport.closed and not called


def test_a_body_over_the_bound_is_413():
    replies, transport = run(post("/echo", b"x" * 100), ["POST"], max_body=10)
    assert replies[0].status == 413 and transport.closed
    chunked = post("/echo", b"", "Transfer-Encoding: chunked") + b"64\r\n" + b"x" * 100 + b"\r\n0\r\n\r\n"
    replies, transport = run(chunked, ["POST"], max_body=10)
    assert replies[0].status == 413 and transport.closed


def test_head_and_204_carry_no_body():
    data = b"HEAD /stream?size=1000 HTTP/1.1\r\nHost: t\r\n\r\nGET /nocontent HTTP/1.1\r\nHost: t\r\n\r\n"
    (head, empty), transport = run(data, ["HEAD", "GET"])
    assert head.status == 200 and head.body == b"" and empty.status == 204 and empty.body == b""
    assert b"0\r\n\r\n" not in transport.output()  # no chunked framing for either


def test_http10_without_length_ends_with_the_connection():
    _, transport = run(b"GET /stream?size=100 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", ["GET"])
    head, _, body = transport.output().partition(b"\r\n\r\n")
    assert b"Connection: close" in head and b"Content-Length" not in head and b"chunked" not in head
    assert len(body) == 100 and transport.closed


def test_exc_info_replaces_a_response_not_yet_sent():
    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        try:
            raise ValueError("late failure")
        except ValueError:
            import sys

            start_response("503 Service Unavailable", [("Content-Length", "4")], sys.exc_info())
        return [b"busy"]

    (reply,), _ = run(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n", ["GET"], app=app)
    assert reply.status == 503 and reply.body == b"busy"


def test_second_start_response_without_exc_info_is_500():
    def app(environ, start_response):
        start_response("200 OK", [])
        start_response("200 OK", [])
        return [b"x"]

    (reply,), transport = run(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n", ["GET"], app=app)
    assert reply.status == 500 and transport.closed


def test_close_is_called_when_the_app_raises_mid_body():
    closed = []

    class Body:
        def __iter__(self):
            yield b"one"
            raise RuntimeError("mid-body")

        def close(self):
            closed.append(True)

    def app(environ, start_response):
        start_response("200 OK", [])
        return Body()

    _, transport = run(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n", ["GET"], app=app)
    assert closed == [True] and transport.closed and not transport.output().endswith(b"0\r\n\r\n")


@pytest.mark.parametrize(("target", "path", "query"), [
    (b"/a%20b?x=1", b"/a%20b", b"x=1"),
    (b"/forums/1/topics/2375?page=1#posts-17408", b"/forums/1/topics/2375", b"page=1"),  # gunicorn's 005
    (b"/p#f?not-a-query", b"/p", b""),
    (b"http://h:1/p/q?z", b"/p/q", b"z"),
    (b"http://h", b"/", b""),
    (b"*", b"*", b""),
    (b"h:443", b"", b""),
])
def test_path_of(target, path, query):
    assert path_of(target) == (path, query)


def test_spool_moves_to_a_file_past_its_memory_and_reads_back():
    spool = Spool()
    data = bytes(range(256)) * (SPOOL_MEMORY // 256 + 100)
    for start in range(0, len(data), 7777):
        spool.write(data[start:start + 7777])
    stream = WsgiInput(spool.reader())
    assert stream.read(10) == data[:10] and stream.read() == data[10:]
    spool.close()


def test_input_readline_with_a_size():
    stream = WsgiInput(io.BytesIO(b"abc\ndef\n"))
    assert stream.readline(2) == b"ab" and stream.readline() == b"c\n" and list(stream) == [b"def\n"]


@pytest.mark.parametrize(("target", "says"), [("json:nothing", "has no"), ("os:sep", "not callable"),
                                              ("9bad:app", "expected"), ("json:dumps()", "factory raised")])
def test_load_app_errors_are_one_line(target, says):
    with pytest.raises(AppLoadError, match=says):
        load_app(target)
