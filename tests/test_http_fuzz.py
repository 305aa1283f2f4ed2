"""Property tests: whatever bytes arrive, split however, the protocol answers well-formed HTTP or nothing."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from framework.testing import RecordingTransport
from servers.http.protocol import HttpProtocol
from servers.http.site import StaticSite
from tests.http_support import READ_HEADERS, StrictClient, make_root, parse_responses, request_with

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


# -- hostile values in every header the server reads -------------------------------------------

_MONTHS = ["Jan", "Feb", "Dec", "jan", "Foo", ""]


@st.composite
def http_dates(draw) -> bytes:
    """Dates in the three forms, with any numbers in them (year 0, year 10**9, day 99, hour 25)."""
    day, year = draw(st.integers(0, 10**4)), draw(st.integers(0, 10**9))
    hour, minute = draw(st.integers(0, 99)), draw(st.integers(0, 99))
    month = draw(st.sampled_from(_MONTHS))
    form = draw(st.sampled_from([
        "Sun, {d:02} {m} {y} {h:02}:{n:02}:00 GMT", "Sunday, {d:02}-{m}-{y} {h:02}:{n:02}:00 GMT",
        "Sun {m} {d:2} {h:02}:{n:02}:00 {y}"]))
    return form.format(d=day, m=month, y=year, h=hour, n=minute).encode("ascii")


def _digits(count: int) -> bytes:
    return b"9" * count


# Values an attacker would try: thousands of digits, out-of-range dates, thousands of list items,
# nothing at all, bytes over 127, control bytes (CR and LF included: those must give 400).
HOSTILE_VALUES = st.one_of(
    st.just(b""),
    st.integers(0, 6000).map(_digits),
    st.tuples(st.sampled_from([b"bytes=0-", b"bytes=", b"bytes=-", b"bytes=1-2,", b"0x", b"-", b"+"]),
              st.integers(0, 6000)).map(lambda pair: pair[0] + _digits(pair[1])),
    http_dates(),
    st.tuples(st.sampled_from([b"0-1", b"\"x\"", b"W/\"x\"", b"gzip;q=0.5", b"close", b"chunked", b"*", b"",
                               b"100-continue", b"identity;q=0", b"br;q=1.0001"]),
              st.integers(0, 3000)).map(lambda pair: b",".join([pair[0]] * pair[1])),
    st.binary(max_size=64),
    st.binary(min_size=1, max_size=32).map(lambda raw: bytes(0x80 | byte for byte in raw)),
    st.sampled_from([b"\x00", b"\x7f", b"\t", b" ", b"\x1b[2J", b"a\rb", b"a\nb", b"\xc3\xa9", b"\xff" * 10]),
)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow, HealthCheck.data_too_large])
@given(name=st.sampled_from(READ_HEADERS), value=HOSTILE_VALUES, cuts=st.lists(st.integers(0, 400), max_size=4))
def test_hostile_header_values_get_wellformed_answers(site, caplog, name, value, cuts):
    caplog.clear()
    with caplog.at_level("DEBUG"):
        check(site, request_with(name, value), cuts)  # any exception here fails the test
    assert not [record for record in caplog.records if record.levelno >= 40], caplog.text


# -- pipelining: every request gets its own response, in order -------------------------------------

PIPELINED = [
    b"GET /hello.txt HTTP/1.1\r\nHost: x\r\n\r\n",
    b"HEAD /kib.bin HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /missing HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /sub HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /kib.bin HTTP/1.1\r\nHost: x\r\nRange: bytes=-10\r\n\r\n",
    b"GET /kib.bin HTTP/1.1\r\nHost: x\r\nRange: bytes=5000-\r\n\r\n",
    b"GET /kib.bin HTTP/1.1\r\nHost: x\r\nIf-Match: \"no\"\r\n\r\n",
    b"GET /kib.bin HTTP/1.1\r\nHost: x\r\nIf-None-Match: *\r\n\r\n",
    b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
    b"DELETE /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2;e=1\r\nab\r\n0\r\nT: 1\r\n\r\n",
    b"GET /hello.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nxy",
    b"BREW /pot HTTP/1.1\r\nHost: x\r\n\r\n",
    b"\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",
]


def _answers(site, data: bytes, methods: list[str], cuts: list[int]) -> list[tuple[int, bytes]]:
    transport = RecordingTransport()
    protocol = HttpProtocol(site)
    protocol.connection_made(transport)
    points = sorted({0, len(data), *(cut % (len(data) + 1) for cut in cuts)})
    for start, end in itertools.pairwise(points):
        protocol.data_received(data[start:end])
    return [(reply.status, reply.body) for reply in parse_responses(transport.output(), methods, eof=False)]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(range(len(PIPELINED))), min_size=1, max_size=20),
       st.lists(st.integers(0, 2000), max_size=10))
def test_pipelined_requests_each_get_their_own_response_in_order(site, picks, cuts):
    methods = ["HEAD" if PIPELINED[pick].startswith(b"HEAD") else "GET" for pick in picks]
    alone = [_answers(site, PIPELINED[pick], [method], [])[0] for pick, method in zip(picks, methods, strict=True)]
    together = _answers(site, b"".join(PIPELINED[pick] for pick in picks), methods, cuts)
    assert together == alone
