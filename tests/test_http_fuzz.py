"""Property tests: whatever bytes arrive, split however, the protocol answers well-formed HTTP or nothing."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from framework.testing import RecordingTransport
from servers.http.protocol import HttpProtocol
from servers.http.site import StaticSite
from tests.http_support import StrictClient, make_root

# No HEAD: its responses have no body, and telling which fuzzed request was a HEAD is guesswork.
PIECES = [b"GET", b"POST", b" ", b"/", b"/hello.txt", b"/sub", b"%2e", b"..", b"?", b"HTTP/1.1", b"HTTP/1.0",
          b"HTTP/2.0", b"\r\n", b"\n", b"\r", b"Host: x", b"Content-Length: 3", b"Content-Length: 1",
          b"Transfer-Encoding: chunked", b"Connection: close", b"Range: bytes=0-1", b"If-None-Match: *", b":",
          b"\t", b"\x00", b"\xff", b"abc"]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    return StaticSite(str(make_root(tmp_path_factory.mktemp("fuzz"))))


def check(site, data: bytes, cuts: list[int]) -> None:
    transport = RecordingTransport()
    protocol = HttpProtocol(site)
    protocol.connection_made(transport)
    start = 0
    for cut in [*sorted(set(cuts)), len(data)]:
        if transport.is_closing():
            break
        if cut > start:
            protocol.data_received(data[start:cut])
            start = cut
    if not transport.is_closing():
        protocol.eof_received()
    output = transport.output()
    if not output:
        return  # nothing complete arrived: nothing to answer
    # What was written must be whole, well-formed HTTP/1.1 responses, nothing after a "close" one.
    client = StrictClient()
    pending: bytes | None = output
    while True:
        client.expect("GET")
        replies = client.feed(pending)
        pending = None
        assert replies, f"incomplete response in {output[:300]!r}"
        trailing, _ = client.conn.trailing_data
        if client.closing or not trailing:
            break
    assert not client.conn.trailing_data[0], "bytes after the last response"
    if client.closing:
        assert transport.closed


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(PIECES), max_size=30), st.lists(st.integers(0, 400), max_size=10))
def test_any_request_gets_wellformed_answers(site, parts, cuts):
    check(site, b"".join(parts), cuts)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=300), st.lists(st.integers(0, 300), max_size=10))
def test_random_bytes_never_break_the_protocol(site, data, cuts):
    check(site, data, cuts)
