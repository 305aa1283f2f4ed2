"""HTTP semantics end to end, over real sockets, under every strategy.

Request bodies (chunked and sized, skipped within bounds), ``Expect:
100-continue``, several ranges, preconditions, precompressed siblings,
``Cache-Control``, UTF-8 names, and hostile header values that once raised.
"""

from __future__ import annotations

import gzip
import os
import select
import signal
import subprocess
import sys
import time
from urllib.parse import quote

import pytest

from servers.http.dates import http_date
from tests.http_support import (
    KIB,
    READ_HEADERS,
    SMALL,
    byteranges_parts,
    exchange,
    make_root,
    read_replies,
    request_with,
)
from tests.support import child_env

CSS = b"body { color: black; }\n" * 40
CSS_GZ = gzip.compress(CSS, mtime=0)
CSS_BR = b"not really brotli, but served as the br sibling\n"
UTF8_NAME = "h\u00e9llo w\u00f6rld \u65e5\u672c.txt"
UTF8_BODY = b"unicode name\n"


@pytest.fixture
def root(tmp_path):
    root = make_root(tmp_path)
    (root / "site.css").write_bytes(CSS)
    (root / "site.css.gz").write_bytes(CSS_GZ)
    (root / "only-gz.css").write_bytes(CSS)
    (root / "only-gz.css.gz").write_bytes(CSS_GZ)
    (root / "site.css.br").write_bytes(CSS_BR)
    (root / "noindex" / UTF8_NAME).write_bytes(UTF8_BODY)
    return root


def request(path: str, *headers: str, method: str = "GET", body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: x", *headers, "", ""]
    return "\r\n".join(lines).encode("utf-8") + body


def assert_clean_log(server) -> None:
    log = server.log()
    assert "Traceback" not in log and "ERROR" not in log, log[-3000:]


# -- request bodies -----------------------------------------------------------------

CHUNKED = "Transfer-Encoding: chunked"


@pytest.mark.parametrize("piece", [None, 7], ids=["whole", "pieces"])
def test_chunked_bodies_keep_the_connection_in_sync(serve, strategy, root, piece):
    server = serve("http", "--root", str(root), strategy=strategy)
    data = (request("/x", CHUNKED, method="POST", body=b"5\r\nhello\r\n0\r\n\r\n")
            + request("/hello.txt", CHUNKED,
                      body=b"3;ext=\"a b\"\r\nabc\r\n00000A\r\n0123456789\r\n0\r\nX-T: 1\r\n\r\n")
            + request("/kib.bin", "Content-Length: 4", body=b"GET ")
            + request("/x", CHUNKED, method="PUT", body=b"1\r\nG\r\n0\r\n\r\n")
            + request("/hello.txt"))
    with server.connect() as sock:
        replies, closed = exchange(sock, data, ["POST", "GET", "GET", "PUT", "GET"], chunk=piece)
    assert [reply.status for reply in replies] == [405, 200, 200, 405, 200]
    assert replies[1].body == SMALL and replies[2].body == KIB and replies[4].body == SMALL
    assert not closed
    assert_clean_log(server)


@pytest.mark.parametrize("size_line", [b"f" * 3000, b"1" + b"0" * 16, b"5\n", b"zz"],
                         ids=["thousands-of-digits", "hex-overflow", "bare-lf", "not-hex"])
def test_unskippable_chunked_body_ends_the_connection_after_the_response(serve, strategy, root, size_line):
    server = serve("http", "--root", str(root), strategy=strategy)
    with server.connect() as sock:
        sock.sendall(request("/hello.txt", CHUNKED, body=size_line + b"\r\nhello\r\n0\r\n\r\n") + request("/kib.bin"))
        (reply,), _ = read_replies(sock, ["GET"], timeout=10)
        assert reply.status == 200 and reply.body == SMALL
        try:
            assert sock.recv(65536) == b"", "the connection ends: where the next request starts is unknown"
        except ConnectionResetError:
            pass  # closed with the next request unread: a reset is as clear an end
    assert_clean_log(server)


def test_too_large_body_is_answered_with_close(serve, strategy, root):
    server = serve("http", "--root", str(root), strategy=strategy)
    with server.connect() as sock:
        sock.sendall(request("/hello.txt", "Content-Length: 999999999999"))
        (reply,), closed = read_replies(sock, ["GET"], timeout=10)
    assert reply.status == 200 and reply.body == SMALL and reply.header("connection") == "close" and closed


def read_until(sock, marker: bytes, timeout: float = 10.0) -> bytes:
    """Bytes from *sock* until *marker* has arrived (a hang fails at *timeout*)."""
    data = b""
    deadline = time.monotonic() + timeout
    while marker not in data:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(65536)
        assert chunk, f"closed before {marker!r}: {data!r}"
        data += chunk
    return data


def test_expect_100_continue_is_answered(serve, strategy, root):
    server = serve("http", "--root", str(root), strategy=strategy)
    with server.connect() as sock:
        # A body the server will read (and drop): 100 first, then the response; the connection goes on.
        sock.sendall(request("/hello.txt", "Content-Length: 5", "Expect: 100-continue"))
        early = read_until(sock, SMALL)
        assert early.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n"), early[:80]
        sock.sendall(b"hello" + request("/kib.bin"))
        (reply,), closed = read_replies(sock, ["GET"])
        assert reply.body == KIB and not closed
    with server.connect() as sock:
        # A body it will not read: no 100, the final status at once, saying the connection ends.
        sock.sendall(request("/upload", "Content-Length: 100000", "Expect: 100-continue", method="POST"))
        (reply,), closed = read_replies(sock, ["POST"])
        assert reply.status == 405 and reply.header("connection") == "close" and closed
    assert_clean_log(server)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("framing", ["Content-Length: 100", CHUNKED])
def test_trickled_body_does_not_hold_the_server(serve, strategy, root, framing):
    """A body trickled a byte every 1.5 s (each byte resetting the idle timer) is cut at the body deadline."""
    server = serve("http", "--root", str(root), "--header-timeout", "1", "--timeout", "3", strategy=strategy)
    with server.connect() as slow, server.connect() as other:
        slow.sendall(request("/hello.txt", framing, body=b"1\r\n" if framing == CHUNKED else b"x"))
        (first,), _ = read_replies(slow, ["GET"])
        assert first.status == 200
        other.sendall(request("/kib.bin"))
        # Trickle for up to 40 s (long past the server's bounds) while waiting for the other client.
        served = None
        for _ in range(27):
            if select.select([other], [], [], 1.5)[0]:
                served, _ = read_replies(other, ["GET"])
                break
            try:
                slow.sendall(b"x")
            except OSError:
                pass  # cut already
        assert served is not None and served[0].body == KIB, "a trickled body held the server"
        slow.settimeout(10)
        try:
            assert slow.recv(65536) == b"", "the trickling client is disconnected"
        except ConnectionResetError:
            pass
    assert_clean_log(server)


# -- ranges -------------------------------------------------------------------------

def test_two_ranges_give_multipart_byteranges(serve, strategy, root):
    server = serve("http", "--root", str(root), strategy=strategy)
    hundred = "Range: bytes=" + ",".join(f"{i * 3}-{i * 3}" for i in range(100))
    with server.connect() as sock:
        replies, closed = exchange(sock, request("/kib.bin", "Range: bytes=0-1,5-6")
                                   + request("/kib.bin", "Range: bytes=700-709,0-3,2-5,-4")
                                   + request("/kib.bin", hundred)
                                   + request("/kib.bin", "Range: bytes=0-1,2-3"), ["GET"] * 4)
    two, three, many, adjacent = replies
    assert two.status == 206 and not closed
    parts = byteranges_parts(two)
    assert [data for _, data in parts] == [KIB[0:2], KIB[5:7]]
    assert [headers["content-range"] for headers, _ in parts] == ["bytes 0-1/1024", "bytes 5-6/1024"]
    assert all(headers["content-type"] == "application/octet-stream" for headers, _ in parts)
    assert int(two.header("content-length")) == len(two.body)
    # Overlapping ranges coalesce, sorted; no byte goes twice.
    assert [headers["content-range"] for headers, _ in byteranges_parts(three)] == [
        "bytes 0-5/1024", "bytes 700-709/1024", "bytes 1020-1023/1024"]
    assert [data for _, data in byteranges_parts(three)] == [KIB[0:6], KIB[700:710], KIB[1020:]]
    # A hundred ranges (CVE-2011-3192): ignored, the whole file once.
    assert many.status == 200 and many.body == KIB
    # Adjacent ranges make one: a plain 206.
    assert adjacent.status == 206 and adjacent.body == KIB[:4] and adjacent.header("content-range") == "bytes 0-3/1024"


def test_if_range_with_an_etag_and_with_a_date(serve, strategy, root):
    server = serve("http", "--root", str(root), strategy=strategy)
    with server.connect() as sock:
        (plain,), _ = exchange(sock, request("/kib.bin"), ["GET"])
        etag, modified = plain.header("etag"), plain.header("last-modified")
        older = http_date(os.stat(root / "kib.bin").st_mtime - 60)
        replies, _ = exchange(sock, b"".join(request("/kib.bin", "Range: bytes=0-1", f"If-Range: {value}")
                                             for value in (etag, modified, '"stale"', older)), ["GET"] * 4)
    assert [(reply.status, len(reply.body)) for reply in replies] == [(206, 2), (206, 2), (200, 1024), (200, 1024)]


@pytest.mark.timeout(60)
@pytest.mark.needs_tool("curl")  # tests/conftest.py: a skip, but a failure under CI=true
def test_curl_several_ranges(serve, strategy, root, tmp_path):
    server = serve("http", "--root", str(root), strategy=strategy)
    result = subprocess.run(["curl", "-sS", "--fail", "--max-time", "20", "--range", "0-1,5-6", "-D", "-",
                             f"http://{server.address}/kib.bin"], capture_output=True, timeout=30)
    assert result.returncode == 0, result.stderr
    head, _, body = result.stdout.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 206 ") and b"multipart/byteranges; boundary=" in head
    assert b"Content-Range: bytes 0-1/1024\r\n\r\n" + KIB[0:2] + b"\r\n--" in body
    assert b"Content-Range: bytes 5-6/1024\r\n\r\n" + KIB[5:7] + b"\r\n--" in body


@pytest.mark.timeout(60)
@pytest.mark.needs_tool("curl")  # tests/conftest.py: a skip, but a failure under CI=true
def test_curl_expect_100_continue(serve, strategy, root, tmp_path):
    server = serve("http", "--root", str(root), strategy=strategy)
    upload = tmp_path / "upload"
    upload.write_bytes(b"x" * 2000)
    result = subprocess.run(["curl", "-sS", "-v", "--max-time", "20", "-X", "GET", "-H", "Expect: 100-continue",
                             "--data-binary", f"@{upload}", f"http://{server.address}/hello.txt",
                             f"http://{server.address}/hello.txt"], capture_output=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout == SMALL * 2
    assert b"HTTP/1.1 100 Continue" in result.stderr


# -- preconditions ------------------------------------------------------------------

def test_if_match_and_if_unmodified_since_give_412(serve, strategy, root):
    server = serve("http", "--root", str(root), strategy=strategy)
    with server.connect() as sock:
        (plain,), _ = exchange(sock, request("/kib.bin"), ["GET"])
        etag = plain.header("etag")
        past = "Sun, 06 Nov 1994 08:49:37 GMT"
        future = http_date(time.time() + 86400)
        cases = [("If-Match: \"nope\"", 412), (f"If-Match: {etag}", 200), ("If-Match: *", 200),
                 (f"If-Unmodified-Since: {past}", 412), (f"If-Unmodified-Since: {future}", 200),
                 # 412 is decided before 304 (RFC 9110 section 13.2.2).
                 (f"If-Match: \"nope\"\r\nIf-None-Match: {etag}", 412),
                 (f"If-Match: {etag}\r\nIf-None-Match: {etag}", 304)]
        replies, closed = exchange(sock, b"".join(request("/kib.bin", header) for header, _ in cases),
                                   ["GET"] * len(cases))
    assert [reply.status for reply in replies] == [status for _, status in cases]
    assert not closed


# -- precompressed siblings ---------------------------------------------------------

def test_precompressed_siblings(serve, strategy, root):
    server = serve("http", "--root", str(root), strategy=strategy)
    with server.connect() as sock:
        replies, _ = exchange(sock, request("/only-gz.css", "Accept-Encoding: gzip, deflate")
                              + request("/only-gz.css")
                              + request("/only-gz.css", "Accept-Encoding: gzip;q=0, identity")
                              + request("/site.css", "Accept-Encoding: br, gzip")
                              + request("/only-gz.css", "Accept-Encoding: *, identity;q=0", "Range: bytes=0-9")
                              + request("/hello.txt", "Accept-Encoding: gzip"), ["GET"] * 6)
    gz, plain, refused, br, gz_range, no_sibling = replies
    assert gz.status == 200 and gz.body == CSS_GZ and gz.header("content-encoding") == "gzip"
    assert gz.header("vary") == "Accept-Encoding" and gz.header("content-type") == "text/css; charset=utf-8"
    assert gzip.decompress(gz.body) == CSS
    assert plain.body == CSS and plain.header("content-encoding") is None and plain.header("vary") == "Accept-Encoding"
    assert gz.header("etag") != plain.header("etag")
    assert refused.body == CSS and refused.header("content-encoding") is None
    assert br.body == CSS_BR and br.header("content-encoding") == "br"
    # A range and a validator apply to the representation sent.
    assert gz_range.status == 206 and gz_range.body == CSS_GZ[:10]
    assert gz_range.header("content-range") == f"bytes 0-9/{len(CSS_GZ)}"
    assert no_sibling.header("vary") is None and no_sibling.header("content-encoding") is None
    gz_tag = gz.header("etag")
    with server.connect() as sock:
        replies, _ = exchange(sock, request("/only-gz.css", "Accept-Encoding: gzip", f"If-None-Match: {gz_tag}")
                              + request("/only-gz.css", f"If-None-Match: {gz_tag}")
                              + request("/only-gz.css", "Accept-Encoding: gzip", f"If-Match: {plain.header('etag')}")
                              + request("/only-gz.css", "Accept-Encoding: gzip", "Range: bytes=0-3",
                                        f"If-Range: {plain.header('etag')}")
                              + request("/only-gz.css", "Accept-Encoding: gzip", "Range: bytes=0-3",
                                        f"If-Range: {gz_tag}"),
                              ["GET"] * 5)
    assert [reply.status for reply in replies] == [304, 200, 412, 200, 206]
    assert replies[3].body == CSS_GZ and replies[4].body == CSS_GZ[:4]
    assert replies[0].header("vary") == "Accept-Encoding"


# -- Cache-Control and names --------------------------------------------------------

def test_cache_control_on_successful_responses(serve, strategy, root):
    server = serve("http", "--root", str(root), "--listing", "--cache-control", "max-age=3600, public",
                   strategy=strategy)
    with server.connect() as sock:
        (plain,), _ = exchange(sock, request("/kib.bin"), ["GET"])
        replies, _ = exchange(sock, request("/kib.bin", "Range: bytes=0-1")
                              + request("/kib.bin", f"If-None-Match: {plain.header('etag')}")
                              + request("/noindex/") + request("/missing"), ["GET"] * 4)
    assert [reply.status for reply in [plain, *replies]] == [200, 206, 304, 200, 404]
    assert [reply.header("cache-control") for reply in [plain, *replies]] == ["max-age=3600, public"] * 4 + [None]


@pytest.mark.parametrize("value", ["max-age=1\r\nSet-Cookie: x=1", "a\nb", "a\x01b", ""])
def test_cache_control_with_control_characters_is_a_usage_error(value):
    result = subprocess.run([sys.executable, "-m", "framework", "serve", "http", "--bind", "127.0.0.1:0",
                             "--cache-control", value], capture_output=True, text=True, timeout=30, env=child_env())
    assert result.returncode == 2
    assert "--cache-control" in result.stderr and "Traceback" not in result.stderr


def test_utf8_names_are_served_and_listed(serve, strategy, root):
    server = serve("http", "--root", str(root), "--listing", strategy=strategy)
    with server.connect() as sock:
        replies, _ = exchange(sock, request("/noindex/" + quote(UTF8_NAME)) + request("/noindex/"), ["GET"] * 2)
    served, listing = replies
    assert served.status == 200 and served.body == UTF8_BODY
    page = listing.body.decode("utf-8")
    assert f'<a href="./{quote(UTF8_NAME)}">{UTF8_NAME}</a>' in page
    assert '<a href="./%3Cscript%3E%26.txt">&lt;script&gt;&amp;.txt</a>' in page


# -- values that once raised ----------------------------------------------------------

def test_long_numbers_and_out_of_range_dates_are_answered(serve, strategy, root):
    server = serve("http", "--root", str(root), strategy=strategy)
    digits = "9" * 4400
    cases = [(f"Range: bytes=0-{digits}", 206), (f"Range: bytes={digits}-", 416), (f"Range: bytes=-{digits}", 206),
             ("If-Modified-Since: Sat, 01 Jan 0000 00:00:00 GMT", 200),
             ("If-Modified-Since: Mon, 01 Jan 10000 00:00:00 GMT", 200),
             ("If-Unmodified-Since: Sat, 01 Jan 0000 00:00:00 GMT", 200),
             ("If-Unmodified-Since: Mon, 01 Jan 10000 00:00:00 GMT", 200),
             ("Range: bytes=0-1\r\nIf-Range: Sat, 01 Jan 0000 00:00:00 GMT", 200),
             ("Range: bytes=0-1\r\nIf-Range: Mon, 01 Jan 10000 00:00:00 GMT", 200),
             (f"If-Modified-Since: Sun, 06 Nov {digits} 08:49:37 GMT", 200)]
    with server.connect() as sock:
        replies, closed = exchange(sock, b"".join(request("/kib.bin", header) for header, _ in cases),
                                   ["GET"] * len(cases))
    assert [reply.status for reply in replies] == [status for _, status in cases] and not closed
    assert_clean_log(server)


def test_bare_lf_in_a_head_is_400_and_close(serve, strategy, root):
    server = serve("http", "--root", str(root), strategy=strategy)
    for data in (b"GET /hello.txt HTTP/1.1\nHost: x\n\n",
                 b"GET /hello.txt HTTP/1.1\r\nHost: x\r\nDummy: x\nContent-Length: 23\r\n\r\n"):
        with server.connect() as sock:
            (reply,), closed = exchange(sock, data + request("/hello.txt"), ["GET", "GET"])
        assert reply.status == 400 and closed
    assert_clean_log(server)


HOSTILE = [b"", b"9" * 5000, b"bytes=0-" + b"9" * 5000, b"bytes=-" + b"9" * 5000, b"bytes=" + b"0-0," * 3000,
           b"Sat, 01 Jan 0000 00:00:00 GMT", b"Mon, 01 Jan 10000 00:00:00 GMT", b"Sun, 06 Nov 99999999999 08:49:37 GMT",
           b"Sunday, 99-Foo-0 99:99:99 GMT", b", ".join([b'"x"'] * 3000), b"gzip;q=0.5," * 2000, b"\xff\xfe\xc3\xa9",
           b"\x00", b"\x01\x1b[2J\x7f", b"a\rb", b"100-continue, 100-continue", b"chunked, chunked", b"*;q=0"]


def test_hostile_header_values_over_real_sockets(serve, strategy, root):
    """Every header the server reads, with each hostile value: a well-formed answer, nothing in the log."""
    server = serve("http", "--root", str(root), strategy=strategy)
    for name in READ_HEADERS:
        for value in HOSTILE:
            with server.connect() as sock:
                replies, closed = exchange(sock, request_with(name, value), ["GET", "GET"])
            assert replies and all(100 <= reply.status <= 599 for reply in replies), (name, value[:40])
            if len(replies) == 2:
                assert replies[1].body == SMALL, (name, value[:40])
            else:
                assert closed, (name, value[:40])
    assert_clean_log(server)


def test_graceful_stop_waits_for_a_body_then_ends_the_connection(serve, strategy, root):
    server = serve("http", "--root", str(root), strategy=strategy)
    with server.connect() as sock:
        sock.sendall(request("/hello.txt", "Content-Length: 10", body=b"12345"))
        (reply,), _ = read_replies(sock, ["GET"])
        assert reply.body == SMALL
        server.send_signal(signal.SIGTERM)
        time.sleep(0.5)  # let the stop begin while the body is still coming (a hang fails below, not this)
        sock.sendall(b"67890")
        sock.settimeout(20)
        assert sock.recv(1) == b"", "the exchange is over: the connection ends"
    assert server.proc.wait(30) == 0
    assert_clean_log(server)
