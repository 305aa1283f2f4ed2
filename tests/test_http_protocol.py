"""The HTTP protocol sans-I/O: fed whole, line by line and byte by byte; every response parsed by h11."""

from __future__ import annotations

import os
import time

import pytest

from framework.testing import RecordingTransport
from servers.http.access_log import AccessLog
from servers.http.dates import http_date
from servers.http.files import FileCache
from servers.http.protocol import HttpProtocol
from servers.http.site import StaticSite
from tests.http_support import BIG, KIB, SMALL, byteranges_parts, make_root, parse_responses, pieces_of

CHUNKINGS = pytest.mark.parametrize("chunk", [None, -1, 1], ids=["whole", "lines", "bytes"])


@pytest.fixture
def root(tmp_path):
    return make_root(tmp_path)


@pytest.fixture
def site(root):
    return StaticSite(str(root))


def run(site, data: bytes, methods: list[str] | None = None, chunk=None, **options):
    """Feed *data* to a fresh protocol; return (responses parsed by h11, transport)."""
    transport = RecordingTransport()
    protocol = HttpProtocol(site, **options)
    protocol.connection_made(transport)
    for piece in pieces_of(data, chunk):
        if transport.is_closing():
            break
        protocol.data_received(piece)
    methods = methods or ["GET"]
    replies = parse_responses(transport.output(), methods, eof=transport.closed)
    return replies, transport


def get(path: str, *headers: str, method: str = "GET", version: str = "1.1") -> bytes:
    lines = [f"{method} {path} HTTP/{version}", "Host: test", *headers, "", ""]
    return "\r\n".join(lines).encode("latin-1")


@CHUNKINGS
def test_get_index_with_every_header(site, chunk):
    (reply,), transport = run(site, get("/"), chunk=chunk)
    assert reply.status == 200
    assert reply.body == b"<h1>index</h1>\n"
    assert reply.header("content-type") == "text/html; charset=utf-8"
    assert reply.header("content-length") == "15"
    assert reply.header("server").startswith("forkthread/")
    assert reply.header("etag").startswith('"')
    assert reply.header("last-modified").endswith(" GMT")
    assert abs(time.time() - time.mktime(time.strptime(reply.header("date"), "%a, %d %b %Y %H:%M:%S GMT"))
               + time.timezone) < 5
    assert not transport.closed


@CHUNKINGS
def test_big_file_byte_exact(site, chunk):
    replies, _ = run(site, get("/big.bin") * 2, ["GET", "GET"], chunk=chunk)
    assert [r.body == BIG for r in replies] == [True, True]


def test_text_types_get_charset_binary_does_not(site):
    replies, _ = run(site, get("/hello.txt") + get("/style.css") + get("/kib.bin"), ["GET"] * 3)
    assert [r.header("content-type") for r in replies] == [
        "text/plain; charset=utf-8", "text/css; charset=utf-8", "application/octet-stream"]


@CHUNKINGS
def test_head_has_headers_but_no_body(site, chunk):
    (reply, after), transport = run(site, get("/big.bin", method="HEAD") + get("/hello.txt"), ["HEAD", "GET"],
                                    chunk=chunk)
    assert reply.status == 200 and reply.body == b""
    assert reply.header("content-length") == str(len(BIG))
    assert after.body == SMALL
    assert b"\r\n\r\n" + BIG[:16] not in transport.output()


@pytest.mark.parametrize(("version", "headers", "closed"), [
    ("1.1", [], False),
    ("1.1", ["Connection: close"], True),
    ("1.1", ["Connection: keep-alive, Close"], True),
    ("1.0", [], True),
    ("1.0", ["Connection: keep-alive"], False),
])
def test_keep_alive_rules(site, version, headers, closed):
    (reply,), transport = run(site, get("/hello.txt", *headers, version=version))
    assert reply.status == 200
    assert transport.closed is closed
    assert reply.header("connection") == ("close" if closed else "keep-alive")


def test_a_stopping_server_ends_keep_alive_after_the_response(site):
    stopping = []
    data = get("/hello.txt") + get("/kib.bin") + get("/index.html")
    transport = RecordingTransport()
    protocol = HttpProtocol(site, stopping=lambda: bool(stopping))
    protocol.connection_made(transport)
    protocol.data_received(data[:len(get("/hello.txt"))])
    stopping.append(True)
    protocol.data_received(data[len(get("/hello.txt")):])
    replies = parse_responses(transport.output(), ["GET", "GET", "GET"])
    assert [(r.status, r.header("connection")) for r in replies] == [(200, "keep-alive"), (200, "close")]
    assert transport.closed


@CHUNKINGS
def test_pipelined_requests_answered_in_order(site, chunk):
    data = get("/hello.txt") + get("/kib.bin") + get("/missing") + get("/index.html", "Connection: close")
    replies, transport = run(site, data, ["GET"] * 4, chunk=chunk)
    assert [(r.status, r.body[:4]) for r in replies] == [
        (200, b"hell"), (200, KIB[:4]), (404, b"404 "), (200, b"<h1>")]
    assert transport.closed


def test_empty_lines_before_a_request_are_ignored(site):
    (reply,), _ = run(site, b"\r\n\r\n" + get("/hello.txt"))
    assert reply.status == 200


@pytest.mark.parametrize("data", [
    b"GET /hello.txt HTTP/1.1\nHost: x\n\n",
    b"GET /hello.txt HTTP/1.1\r\nHost: x\n\r\n",
    b"GET /hello.txt HTTP/1.1\r\nHost: x\r\n\n",
    b"GET /hello.txt HTTP/1.1\r\nHost: x\r\nDummy: x\nContent-Length: 23\r\n\r\n",
])
def test_bare_lf_in_a_head_is_400_and_close(site, data):
    # A front end that ends lines only at CRLF would frame these differently (request smuggling).
    (reply,), transport = run(site, data + get("/hello.txt"))
    assert reply.status == 400 and reply.header("connection") == "close"
    assert transport.closed and SMALL not in transport.output()


def test_absolute_form_target(site):
    (reply,), _ = run(site, get("http://test/hello.txt"))
    assert reply.body == SMALL


def test_query_and_fragment_ignored(site):
    replies, _ = run(site, get("/hello.txt?x=1&y=../../etc") + get("/hello.txt#frag"), ["GET", "GET"])
    assert [r.body for r in replies] == [SMALL, SMALL]


# -- ranges -----------------------------------------------------------------------

@pytest.mark.parametrize(("spec", "status", "span"), [
    ("bytes=0-9", 206, (0, 9)),
    ("bytes=1000-", 206, (1000, 1023)),
    ("bytes=-24", 206, (1000, 1023)),
    ("bytes=-5000", 206, (0, 1023)),
    ("bytes=1020-5000", 206, (1020, 1023)),
    ("bytes=5-2", 200, None),          # invalid: ignored
    ("items=0-1", 200, None),          # other unit: ignored
    ("bytes=0-1,2-6", 206, (0, 6)),    # adjacent ranges coalesce into one
    ("bytes=5-9,0-7", 206, (0, 9)),    # overlapping ranges too, whatever their order
])
@CHUNKINGS
def test_single_range(site, spec, status, span, chunk):
    (reply,), _ = run(site, get("/kib.bin", f"Range: {spec}"), chunk=chunk)
    assert reply.status == status
    if span is None:
        assert reply.body == KIB and "content-range" not in reply.headers
    else:
        first, last = span
        assert reply.body == KIB[first:last + 1]
        assert reply.header("content-range") == f"bytes {first}-{last}/1024"
        assert reply.header("content-length") == str(last - first + 1)


@CHUNKINGS
def test_several_ranges_give_multipart_byteranges(site, chunk):
    (reply,), _ = run(site, get("/kib.bin", "Range: bytes=10-19, 0-3, -2"), chunk=chunk)
    assert reply.status == 206 and int(reply.header("content-length")) == len(reply.body)
    parts = byteranges_parts(reply)
    assert [(headers["content-range"], data) for headers, data in parts] == [
        ("bytes 0-3/1024", KIB[:4]), ("bytes 10-19/1024", KIB[10:20]), ("bytes 1022-1023/1024", KIB[1022:])]


def test_too_many_ranges_give_the_whole_file(site):
    spec = ",".join(f"{i * 2}-{i * 2}" for i in range(33))
    (reply,), _ = run(site, get("/kib.bin", f"Range: bytes={spec}"))
    assert reply.status == 200 and reply.body == KIB


@pytest.mark.parametrize("spec", ["bytes=1024-", "bytes=5000-6000", "bytes=-0"])
def test_unsatisfiable_range_is_416(site, spec):
    (reply, after), transport = run(site, get("/kib.bin", f"Range: {spec}") + get("/hello.txt"), ["GET", "GET"])
    assert reply.status == 416
    assert reply.header("content-range") == "bytes */1024"
    assert after.body == SMALL and not transport.closed


def test_range_on_empty_file_is_416(site):
    (reply,), _ = run(site, get("/empty.txt", "Range: bytes=0-"))
    assert reply.status == 416 and reply.header("content-range") == "bytes */0"


def test_if_range_decides(site):
    (full,), _ = run(site, get("/kib.bin"))
    (partial,), _ = run(site, get("/kib.bin", "Range: bytes=0-1", f"If-Range: {full.header('etag')}"))
    (stale,), _ = run(site, get("/kib.bin", "Range: bytes=0-1", 'If-Range: "other"'))
    assert (partial.status, partial.body) == (206, KIB[:2])
    assert (stale.status, stale.body) == (200, KIB)


def test_head_ignores_range(site):
    (reply,), _ = run(site, get("/kib.bin", "Range: bytes=0-1", method="HEAD"), ["HEAD"])
    assert reply.status == 200 and reply.header("content-length") == "1024"


# -- conditional requests ---------------------------------------------------------------

def test_conditional_get(site):
    (first,), _ = run(site, get("/hello.txt"))
    etag, modified = first.header("etag"), first.header("last-modified")
    future, past = http_date(time.time() + 3600), http_date(0)
    cases = {
        f"If-None-Match: {etag}": 304,
        f'If-None-Match: "nope", {etag}': 304,
        f"If-None-Match: W/{etag}": 304,
        "If-None-Match: *": 304,
        'If-None-Match: "nope"': 200,
        f"If-Modified-Since: {modified}": 304,
        f"If-Modified-Since: {future}": 304,
        f"If-Modified-Since: {past}": 200,
        "If-Modified-Since: yesterday": 200,
    }
    for header, status in cases.items():
        (reply,), _ = run(site, get("/hello.txt", header))
        assert reply.status == status, header
        if status == 304:
            assert reply.body == b"" and reply.header("etag") == etag
    # If-None-Match decides first: a mismatch wins over a satisfied If-Modified-Since.
    (reply,), _ = run(site, get("/hello.txt", 'If-None-Match: "nope"', f"If-Modified-Since: {future}"))
    assert reply.status == 200


def checking_site(root, valid_for: float = 0.0) -> StaticSite:
    """A site whose file cache checks files with stat after *valid_for* seconds (0: on every request)."""
    return StaticSite(str(root), cache=FileCache(valid_for=valid_for))


def test_changed_file_gets_new_etag(root):
    site = checking_site(root)
    (first,), _ = run(site, get("/hello.txt"))
    path = root / "hello.txt"
    path.write_bytes(b"changed!\n")
    os.utime(path, ns=(1, 10**18))
    (second,), _ = run(site, get("/hello.txt", f"If-None-Match: {first.header('etag')}"))
    assert second.status == 200 and second.body == b"changed!\n"


# -- errors ---------------------------------------------------------------------------

BAD_REQUESTS = {
    "garbage": (b"hello\r\n\r\n", 400),
    "two spaces": (b"GET  / HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "no version": (b"GET /\r\nHost: x\r\n\r\n", 400),
    "lower-case version": (b"GET / http/1.1\r\nHost: x\r\n\r\n", 400),
    "bad version": (b"GET / HTTP/1.x\r\nHost: x\r\n\r\n", 400),
    "HTTP/2": (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505),
    "HTTP/3": (b"GET / HTTP/3.0\r\nHost: x\r\n\r\n", 505),
    "HTTP/0.9": (b"GET / HTTP/0.9\r\nHost: x\r\n\r\n", 505),
    "missing Host": (b"GET / HTTP/1.1\r\n\r\n", 400),
    "two Hosts": (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    "obs-fold": (b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n", 400),
    "space before colon": (b"GET / HTTP/1.1\r\nHost : x\r\n\r\n", 400),
    "no colon": (b"GET / HTTP/1.1\r\nHost: x\r\nnocolon\r\n\r\n", 400),
    "NUL in value": (b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n", 400),
    "CR in value": (b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n", 400),
    "bad Content-Length": (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1x\r\n\r\n", 400),
    "negative Content-Length": (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400),
    "conflicting Content-Length": (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
    "repeated Content-Length": (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx", 400),
    "Content-Length list": (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1, 1\r\n\r\nx", 400),
    "Content-Length and chunked": (
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    "chunked not last": (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 400),
    "unknown coding": (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: magic, chunked\r\n\r\n", 501),
    "TE in 1.0": (b"GET / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    "control in target": (b"GET /a\x01b HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "non-ASCII target": (b"GET /\xc3\xa9 HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "long request line": (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    "huge head": (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-A: " + b"a" * 70000 + b"\r\n\r\n", 431),
    "many fields": (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-A: a\r\n" * 101 + b"\r\n", 431),
}


@pytest.mark.parametrize("name", list(BAD_REQUESTS))
@CHUNKINGS
def test_bad_requests_get_a_wellformed_error_and_close(site, name, chunk):
    data, status = BAD_REQUESTS[name]
    if chunk == 1 and len(data) > 20000:
        chunk = 997  # byte by byte through 70 KiB is slow and proves nothing more
    (reply,), transport = run(site, data + get("/hello.txt"), chunk=chunk)
    assert reply.status == status
    assert reply.body.startswith(f"{status} ".encode())
    assert reply.header("connection") == "close"
    assert transport.closed and transport.linger > 0, "close gracefully so the client reads the error"
    assert SMALL not in transport.output()


# Refused, but the framing is intact: the connection goes on.
POLITE_REFUSALS = {
    "relative target": (b"GET hello.txt HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "unknown method": (b"BREW / HTTP/1.1\r\nHost: x\r\n\r\n", 501),
    "lower-case get": (b"get / HTTP/1.1\r\nHost: x\r\n\r\n", 501),
    "unknown method with body": (b"BREW / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc", 501),
}


@pytest.mark.parametrize("name", list(POLITE_REFUSALS))
@CHUNKINGS
def test_refusals_that_keep_the_connection(site, name, chunk):
    data, status = POLITE_REFUSALS[name]
    (reply, after), transport = run(site, data + get("/hello.txt"), ["GET", "GET"], chunk=chunk)
    assert reply.status == status and reply.body.startswith(f"{status} ".encode())
    assert after.body == SMALL and not transport.closed


def test_limits_are_inclusive(site):
    line = b"GET /" + b"a" * (8192 - 14) + b" HTTP/1.1"
    assert len(line) == 8192
    fields = b"Host: x\r\n" + b"X-A: a\r\n" * 99
    (reply,), _ = run(site, line + b"\r\n" + fields + b"\r\n")
    assert reply.status == 404


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"])
def test_known_methods_get_405_with_allow(site, method):
    (reply,), transport = run(site, get("/hello.txt", method=method))
    assert reply.status == 405
    assert reply.header("allow") == "GET, HEAD"
    assert not transport.closed


@CHUNKINGS
def test_405_body_is_consumed_and_connection_kept(site, chunk):
    body = b"GET /secret HTTP/1.1\r\n\r\n"  # looks like a request: must not be read as one
    data = (f"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
            + get("/hello.txt"))
    replies, transport = run(site, data, ["POST", "GET"], chunk=chunk)
    assert [r.status for r in replies] == [405, 200]
    assert replies[1].body == SMALL and not transport.closed


@CHUNKINGS
def test_405_with_chunked_body_skips_it_and_keeps_the_connection(site, chunk):
    data = b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    replies, transport = run(site, data + get("/hello.txt"), ["POST", "GET"], chunk=chunk)
    assert [r.status for r in replies] == [405, 200] and replies[1].body == SMALL and not transport.closed


def test_get_with_body_skips_it(site):
    data = b"GET /hello.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nxxxxx" + get("/kib.bin")
    replies, _ = run(site, data, ["GET", "GET"], chunk=1)
    assert [r.body for r in replies] == [SMALL, KIB]


@CHUNKINGS
def test_chunked_bodies_with_extensions_and_trailers_keep_the_connection(site, chunk):
    body = b"4;a=1;b=\"x y\"\r\nGET \r\n000\r\nX-Checksum: 1\r\nX-Other: 2\r\n\r\n"
    data = get("/hello.txt", "Transfer-Encoding: chunked") + body + get("/kib.bin")
    replies, transport = run(site, data, ["GET", "GET"], chunk=chunk)
    assert [r.body for r in replies] == [SMALL, KIB] and not transport.closed


def test_broken_chunked_body_ends_the_connection_after_the_response(site):
    data = get("/hello.txt", "Transfer-Encoding: chunked") + b"5\r\nhelloXX" + get("/kib.bin")
    (reply,), transport = run(site, data)
    assert reply.body == SMALL and transport.closed and transport.linger > 0


def test_body_over_the_bound_is_never_read(site):
    (reply,), transport = run(site, get("/hello.txt", "Content-Length: 1048577") + b"x" * 10)
    assert reply.body == SMALL and reply.header("connection") == "close" and transport.closed


def test_body_deadline_is_a_total_time(site):
    transport = RecordingTransport()
    protocol = HttpProtocol(site, header_timeout=2.5)
    protocol.connection_made(transport)
    protocol.data_received(get("/hello.txt", "Content-Length: 100"))
    assert transport.deadline == 2.5, "the body's clock starts at the end of its head"
    transport.deadline = None
    for _ in range(5):  # trickled bytes do not restart the clock
        protocol.data_received(b"x")
        assert transport.deadline is None and not transport.closed
    written = transport.output()
    protocol.deadline_expired()
    assert transport.closed and transport.output() == written, "closed, with nothing more to say"


def test_body_done_stops_the_clock_until_the_next_head(site):
    transport = RecordingTransport()
    protocol = HttpProtocol(site, header_timeout=2.5)
    protocol.connection_made(transport)
    protocol.data_received(get("/hello.txt", "Content-Length: 2") + b"xy")
    assert transport.deadline is None
    protocol.deadline_expired()  # fired too late to be cancelled: nothing happens
    assert not transport.closed


@pytest.mark.parametrize(("headers", "version", "continues"), [
    (("Content-Length: 5", "Expect: 100-continue"), "1.1", True),
    (("Transfer-Encoding: chunked", "Expect: 100-CONTINUE"), "1.1", True),
    (("Content-Length: 5", "Expect: 100-continue"), "1.0", False),     # HTTP/1.0 knows no 100
    (("Content-Length: 0", "Expect: 100-continue"), "1.1", False),     # no body to ask for
    (("Content-Length: 5000000", "Expect: 100-continue"), "1.1", False),  # over the bound: never read
])
def test_expect_100_continue(site, headers, version, continues):
    transport = RecordingTransport()
    protocol = HttpProtocol(site)
    protocol.connection_made(transport)
    protocol.data_received(get("/hello.txt", *headers, version=version))
    output = transport.output()
    assert output.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 ") is continues
    assert output.split(b"\r\n\r\n", 2)[-1 if continues else 1] == SMALL


def test_no_100_when_the_body_is_already_arriving(site):
    (reply,), transport = run(site, get("/hello.txt", "Content-Length: 5", "Expect: 100-continue") + b"hello")
    assert not transport.output().startswith(b"HTTP/1.1 100") and reply.body == SMALL and not transport.closed


def test_refused_request_expecting_100_gets_its_final_status_and_close(site):
    (reply,), transport = run(site, get("/x", "Content-Length: 5", "Expect: 100-continue", method="POST"), ["POST"])
    assert reply.status == 405 and reply.header("connection") == "close" and transport.closed
    assert b" 100 " not in transport.output()


def test_stopping_while_a_body_is_skipped_closes_once_it_ends(site):
    stopping = []
    transport = RecordingTransport()
    protocol = HttpProtocol(site, stopping=lambda: bool(stopping))
    protocol.connection_made(transport)
    protocol.data_received(get("/hello.txt", "Content-Length: 4") + b"xy")
    stopping.append(True)
    protocol.server_stopping()
    assert not transport.closed, "the body is still coming"
    protocol.data_received(b"zw")
    assert transport.closed, "the exchange is over: nothing holds the stop up"


# -- header timeout (slowloris) ------------------------------------------------------------

def test_header_deadline_armed_per_request_and_408_on_expiry(site):
    transport = RecordingTransport()
    protocol = HttpProtocol(site, header_timeout=2.5)
    protocol.connection_made(transport)
    assert transport.deadline == 2.5
    protocol.data_received(get("/hello.txt"))
    assert transport.deadline is None, "a complete head stops the clock"
    protocol.data_received(b"GET /hel")
    assert transport.deadline == 2.5, "the first byte of the next request starts it again"
    protocol.deadline_expired()
    replies = parse_responses(transport.output(), ["GET", "GET"])
    assert [r.status for r in replies] == [200, 408]
    assert transport.closed and transport.linger > 0


# -- paths ---------------------------------------------------------------------------------

TRAVERSALS = [
    "/../secret.txt", "/../../secret.txt", "/%2e%2e/secret.txt", "/%2E%2E/secret.txt", "/.%2e/secret.txt",
    "/..%2fsecret.txt", "/..%2Fsecret.txt", "/sub/..%2f..%2fsecret.txt", "/..\\secret.txt", "/..%5csecret.txt",
    "/%5c..%5csecret.txt", "/hello.txt%00.html", "/%00", "/sub/../../secret.txt", "/link-out", "/dir-out/secret.txt",
    "/dir-out/", "//../secret.txt", "/%252e%252e/secret.txt", "/%c0%ae%c0%ae/secret.txt",
]


@pytest.mark.parametrize("path", TRAVERSALS)
@pytest.mark.parametrize("follow", [False, True])
def test_traversal_reveals_nothing(root, path, follow):
    site = StaticSite(str(root), follow_symlinks=follow, listing=True)
    (reply,), transport = run(site, get(path))
    assert reply.status in (400, 403, 404), path
    assert b"SECRET" not in transport.output()


def test_symlink_inside_root_needs_follow(root):
    (refused,), _ = run(StaticSite(str(root)), get("/link-in"))
    (served,), _ = run(StaticSite(str(root), follow_symlinks=True), get("/link-in"))
    assert refused.status == 404
    assert (served.status, served.body) == (200, SMALL)


def test_symlink_swapped_in_after_caching_is_noticed(root, tmp_path):
    site = checking_site(root)
    (first,), _ = run(site, get("/hello.txt"))
    assert first.body == SMALL
    (root / "hello.txt").unlink()
    (root / "hello.txt").symlink_to(tmp_path / "secret.txt")
    (second,), transport = run(site, get("/hello.txt"))
    assert second.status == 404 and b"SECRET" not in transport.output()


@pytest.mark.parametrize("name", ["hello.txt", "big.bin"])
def test_swap_within_the_validity_window_serves_the_old_file_never_the_new_target(root, tmp_path, name):
    site = checking_site(root, valid_for=3600.0)  # never checked again during the test
    old = (root / name).read_bytes()
    (first,), _ = run(site, get(f"/{name}"))
    (root / name).unlink()
    (root / name).symlink_to(tmp_path / "secret.txt")
    (second,), transport = run(site, get(f"/{name}"))
    assert first.body == second.body == old and b"SECRET" not in transport.output()


def test_change_is_noticed_once_the_validity_window_passed(root):
    site = checking_site(root, valid_for=0.05)
    (first,), _ = run(site, get("/hello.txt"))
    (root / "hello.txt").write_bytes(b"changed, longer\n")
    time.sleep(0.2)  # past the window: the next request checks the file again
    (second,), _ = run(site, get("/hello.txt"))
    assert (first.body, second.body) == (SMALL, b"changed, longer\n")
    assert first.header("etag") != second.header("etag")


@pytest.mark.parametrize(("path", "location"), [
    ("/sub", "/sub/"),
    ("/sub?a=1", "/sub/?a=1"),
    ("//evil.com", "/evil.com/"),
    ("///evil.com", "/evil.com/"),
    ("//evil.com?x", "/evil.com/?x"),
    ("/%2Fevil.com", None),
])
def test_directory_redirect_never_leaves_the_host(site, path, location):
    (reply,), _ = run(site, get(path))
    if location is None:
        assert reply.status == 404
    else:
        assert reply.status == 301
        assert reply.header("location") == location
        assert not reply.header("location").startswith("//")


def test_directory_with_slash_serves_index(site):
    (reply,), _ = run(site, get("/sub/"))
    assert reply.body == b"<h1>sub</h1>\n"


def test_name_falls_back_to_name_html(site):
    replies, _ = run(site, get("/page") + get("/page/") + get("/hello.txt/"), ["GET"] * 3)
    assert [(r.status, r.body[:3]) for r in replies] == [(200, b"<p>"), (404, b"404"), (404, b"404")]


def test_percent_decoding(site):
    (reply,), _ = run(StaticSite(site.root, listing=True), get("/noindex/a%20b.txt"))
    assert reply.body == b"spaced\n"


def test_listing_off_is_404_and_on_escapes_names(root):
    (off,), _ = run(StaticSite(str(root)), get("/noindex/"))
    (on,), _ = run(StaticSite(str(root), listing=True), get("/noindex/"))
    assert off.status == 404
    assert on.status == 200 and on.header("content-type") == "text/html; charset=utf-8"
    assert b"&lt;script&gt;&amp;.txt" in on.body and b"<script>" not in on.body
    assert b'href="./%3Cscript%3E%26.txt"' in on.body
    assert b'href="./a%20b.txt"' in on.body


def test_root_must_be_a_directory(tmp_path):
    with pytest.raises(ValueError, match="not a directory"):
        StaticSite(str(tmp_path / "missing"))


# -- access log ----------------------------------------------------------------------------

def test_access_log_common_log_format_with_escapes(site, tmp_path):
    log_path = tmp_path / "access.log"
    log = AccessLog.open(str(log_path))
    try:
        data = get("/hello.txt") + b"GET /\x1b[31mred HTTP/1.1\r\nHost: x\r\n\r\n"
        run(site, data, ["GET", "GET"], access_log=log)
    finally:
        log.close()
    first, second = log_path.read_text("ascii").splitlines()
    assert first.startswith("127.0.0.1 - - [")
    assert first.endswith('] "GET /hello.txt HTTP/1.1" 200 13')
    assert second.endswith('"GET /\\x1b[31mred HTTP/1.1" 400 43') or '\\x1b[31mred' in second
    assert "\x1b" not in log_path.read_text("ascii")


def test_reused_responses_keep_method_keep_alive_and_selecting_fields_apart(site):
    """A plain request's response is reused within the second: never across HEAD/GET, keep-alive or a Range."""
    (first,), _ = run(site, get("/kib.bin"))
    (again,), _ = run(site, get("/kib.bin"))
    (head,), _ = run(site, get("/kib.bin", method="HEAD"), ["HEAD"])
    (ranged,), _ = run(site, get("/kib.bin", "Range: bytes=0-9"))
    (matched,), _ = run(site, get("/kib.bin", f"If-None-Match: {first.header('etag')}"))
    (closing,), transport = run(site, get("/kib.bin", "Connection: close"))
    assert (first.status, first.body, first.header("connection")) == (200, KIB, "keep-alive")
    assert (again.status, again.body) == (200, KIB)
    assert (head.status, head.body, head.header("content-length")) == (200, b"", str(len(KIB)))
    assert (ranged.status, ranged.body) == (206, KIB[:10])
    assert matched.status == 304
    assert (closing.status, closing.body, closing.header("connection")) == (200, KIB, "close") and transport.closed
