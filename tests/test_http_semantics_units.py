"""Edge cases of the parsing behind bodies, ranges, dates, content coding and preconditions (no sockets)."""

from __future__ import annotations

import argparse

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from servers.http.body import MAX_BODY, BodyError, ChunkedBody, LengthBody
from servers.http.coding import choose_coding, weights
from servers.http.conditional import if_range_holds, precondition_status
from servers.http.dates import http_date, parse_http_date
from servers.http.multipart import byteranges
from servers.http.ranges import MAX_RANGES, Unsatisfiable, parse_ranges
from servers.http.server import _field_value

EPOCH_1994 = 784111777  # Sun, 06 Nov 1994 08:49:37 GMT
ETAG = '"5f-400"'


def skip(body, data: bytes, piece: int | None = None) -> tuple[bool, bytes]:
    """Feed *data* to *body* whole or in *piece*-byte pieces; (ended, what is left after it)."""
    buffer = bytearray()
    done = False
    step = piece or len(data) or 1
    for start in range(0, len(data), step):
        buffer += data[start:start + step]
        done = body.consume(buffer)
        if done:
            buffer += data[start + step:]
            break
    return done, bytes(buffer)


# -- bodies ------------------------------------------------------------------------

NEXT = b"GET / HTTP/1.1\r\n\r\n"


@pytest.mark.parametrize("piece", [None, 1, 3])
@pytest.mark.parametrize("body", [
    b"0\r\n\r\n",
    b"5\r\nhello\r\n0\r\n\r\n",
    b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    b"A\r\n0123456789\r\n0\r\n\r\n",                        # hexadecimal, upper case
    b"0000000000000000000000000000005\r\nhello\r\n0\r\n\r\n",  # leading zeros do not count
    b"5;ext\r\nhello\r\n0;a=b;c=\"quoted \\\" ;\"\r\n\r\n",  # extensions, a quoted string with an escape
    b"5 ; ext = v\r\nhello\r\n0\r\n\r\n",                     # BWS around extensions
    b"5\r\nhello\r\n0\r\nExpires: never\r\nX-Sum: 1\r\n\r\n",  # trailer fields
])
def test_chunked_body_ends_where_it_says(body, piece):
    done, left = skip(ChunkedBody(), body + NEXT, piece)
    assert done and left == NEXT


@pytest.mark.parametrize("body", [
    b"x\r\n",                         # not hexadecimal
    b"-5\r\n",                        # no sign
    b"0x5\r\n",                       # no prefix
    b"\r\n",                          # no size at all
    b"5\nhello\r\n",                  # bare LF ends the size line
    b"5\r\nhelloXY",                  # data not followed by CRLF
    b"5;\r\n",                        # empty extension
    b"5;a=\r\n",                      # extension without its value
    b"5;a=\"open\r\n",                # unterminated quoted string
    b"5;a\x00\r\n",                   # control byte
    b"0\r\nbad field\r\n\r\n",        # malformed trailer
    b"0\r\n folded: x\r\n\r\n",       # obsolete folding in a trailer
    b"1" + b"0" * 16 + b"\r\n",       # 2**64: over any limit
    b"f" * 4000 + b"\r\n",            # thousands of significant digits: no int() of them
    b"0" * 5000 + b"5\r\n",           # a size line longer than any sane one
    b"5" * 5000,                      # ... even before its end arrives
])
def test_broken_or_oversized_chunking_is_refused(body):
    with pytest.raises(BodyError):
        skip(ChunkedBody(), body)


def test_chunked_body_is_bounded_on_the_wire():
    one_chunk = b"400\r\n" + b"x" * 1024 + b"\r\n"
    with pytest.raises(BodyError):
        skip(ChunkedBody(limit=4096), one_chunk * 4 + b"0\r\n\r\n")
    assert skip(ChunkedBody(limit=4096), one_chunk * 3 + b"0\r\n\r\n") == (True, b"")
    with pytest.raises(BodyError):
        skip(ChunkedBody(), b"%x\r\n" % (MAX_BODY + 1))


def test_trailer_section_is_bounded():
    many = b"".join(b"T%d: x\r\n" % i for i in range(200))
    with pytest.raises(BodyError):
        skip(ChunkedBody(), b"0\r\n" + many + b"\r\n")


def test_length_body_takes_exactly_its_bytes():
    assert skip(LengthBody(5), b"hello" + NEXT, 2) == (True, NEXT)
    assert skip(LengthBody(5), b"hel") == (False, b"")


# -- ranges ------------------------------------------------------------------------

@pytest.mark.parametrize(("header", "spans"), [
    (b"bytes=0-1,4-5", [(0, 1), (4, 5)]),
    (b"bytes=4-5,0-1", [(0, 1), (4, 5)]),           # sorted
    (b"bytes=0-3,2-5", [(0, 5)]),                   # overlapping: one
    (b"bytes=0-1,2-3", [(0, 3)]),                   # adjacent: one
    (b"bytes=0-0,0-0,0-0", [(0, 0)]),               # the same byte three times: once
    (b"bytes=-2,0-1", [(0, 1), (8, 9)]),            # suffix among others
    (b"bytes=0-1, ,4-5", [(0, 1), (4, 5)]),         # empty items are allowed
    (b"bytes=0-1,50-60", [(0, 1)]),                 # an unsatisfiable one is dropped
    (b"bytes=0-" + b"9" * 5000, [(0, 9)]),          # 5,000 digits: past the end
    (b"bytes=" + b"0" * 5000 + b"1-2", [(1, 2)]),   # leading zeros
    (b"bytes=" + b"1" * 5000 + b"-", None),         # raises Unsatisfiable (checked below)
    (b"bytes=0-1,a-b", None),                       # one invalid item: the header is ignored
    (b"bytes=\xff-1", None),
    (b"bytes=\xd9\xa1-2", None),                    # Arabic-Indic digit: not a digit here
    (b"bytes=" + b",".join(b"%d-%d" % (i * 2, i * 2) for i in range(5)), [(i * 2, i * 2) for i in range(5)]),
    (b"bytes=" + b"0-0," * (MAX_RANGES + 1), None),  # too many ranges: whole file
    (b"bytes=" + b"," * 100_000 + b"0-1", None),    # thousands of empty items
])
def test_parse_ranges(header, spans):
    if header.startswith(b"bytes=111"):
        with pytest.raises(Unsatisfiable):
            parse_ranges(header, 10)
        return
    assert parse_ranges(header, 10) == spans


def test_range_cap_is_on_the_ranges_listed():
    at_cap = b"bytes=" + b",".join(b"%d-%d" % (i * 2, i * 2) for i in range(MAX_RANGES))
    assert len(parse_ranges(at_cap, 1000)) == MAX_RANGES
    assert parse_ranges(at_cap + b",900-901", 1000) is None


def test_multipart_frame_lengths_add_up():
    frame = byteranges([(0, 1), (4, 5)], "text/plain", 10)
    boundary = frame.content_type.partition("boundary=")[2]
    assert frame.content_type.startswith("multipart/byteranges; ") and boundary
    assert frame.parts[0][0].startswith(f"--{boundary}\r\n".encode())
    assert frame.parts[1][0].startswith(f"\r\n--{boundary}\r\n".encode())
    assert b"Content-Range: bytes 4-5/10\r\n" in frame.parts[1][0]
    assert frame.tail == f"\r\n--{boundary}--\r\n".encode()
    assert frame.length == sum(len(head) + count for head, _, count in frame.parts) + len(frame.tail)
    assert byteranges([(0, 1)], "x/y", 2).content_type != frame.content_type, "a fresh boundary each time"


# -- dates ------------------------------------------------------------------------

@pytest.mark.parametrize("text", [
    "Sat, 01 Jan 0000 00:00:00 GMT", "Mon, 01 Jan 10000 00:00:00 GMT", "Mon, 01 Jan 99999 00:00:00 GMT",
    "Sun, 06 Nov " + "1" * 5000 + " 08:49:37 GMT", "Sun, 06 Nov 1994 " + "9" * 5000 + ":00:00 GMT",
    "Sun, 06-Nov-0 08:49:37 GMT", "Sun Nov  6 08:49:37 0", "Sun, ٠٦ Nov 1994 08:49:37 GMT",
    "Sun, 06 Nov 1994 08:49:37 GMT" + " " * 100, "Sun, 06 Nov +994 08:49:37 GMT", "Sun, 6_0 Nov 1994 08:49:37 GMT",
    "", " ", "\x00", "Sun, 06 Nov 1994 24:00:00 GMT",
])
def test_out_of_range_or_malformed_dates_are_not_dates(text):
    assert parse_http_date(text) is None


def test_valid_dates_in_every_form():
    assert parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT") == EPOCH_1994
    assert parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT") == EPOCH_1994
    assert parse_http_date("Sun Nov  6 08:49:37 1994") == EPOCH_1994
    assert parse_http_date("Fri, 31 Dec 9999 23:59:59 GMT") is not None


# -- content coding ----------------------------------------------------------------

@pytest.mark.parametrize(("header", "chosen"), [
    (None, None),                                  # nothing said: the file as it is
    (b"", None),                                   # empty: identity only
    (b"gzip", "gzip"),
    (b"gzip, br", "br"),                           # equal weights: br preferred
    (b"br;q=0.5, gzip", "gzip"),
    (b"GZIP;Q=1.0", "gzip"),
    (b"x-gzip", "gzip"),
    (b"*", "br"),
    (b"*;q=0.5, br;q=0", "gzip"),
    (b"gzip;q=0", None),
    (b"gzip;q=0.5", None),                         # identity (q=1 by default) wins
    (b"gzip;q=0.5, identity;q=0", "gzip"),
    (b"gzip;q=0.5, *;q=0", "gzip"),
    (b"gzip;q=1.5", None),                         # malformed weight: the member is ignored
    (b"gzip;q=0.1234", None),
    (b"gzip;q=\xd9\xa1", None),                    # a non-ASCII digit
    (b"gzip;q=", None),
    (b"deflate, compress", None),                  # nothing on offer
    (b"," * 5000 + b"gzip", "gzip"),               # thousands of empty members
    (b"\xff\xfe, gzip", "gzip"),
])
def test_choose_coding(header, chosen):
    assert choose_coding(header, ["br", "gzip"]) == chosen


def test_weights_keep_the_first_weight_of_a_coding():
    assert weights(b"gzip;q=0.2, gzip;q=0.9, identity") == {"gzip": 200, "identity": 1000}


# -- preconditions (RFC 9110 section 13.2.2 order) --------------------------------

OLD = "Sun, 06 Nov 1994 08:49:37 GMT"


@pytest.mark.parametrize(("fields", "status"), [
    ({b"if-match": b'"other"'}, 412),
    ({b"if-match": b'W/"5f-400"'}, 412),                     # If-Match compares strongly
    ({b"if-match": b'"x", "5f-400"'}, None),
    ({b"if-match": b"*"}, None),
    ({b"if-unmodified-since": OLD.encode()}, 412),            # modified since then
    ({b"if-unmodified-since": http_date(EPOCH_1994 + 10).encode()}, None),
    ({b"if-unmodified-since": b"garbage"}, None),              # not a date: ignored
    ({b"if-unmodified-since": b"Sat, 01 Jan 0000 00:00:00 GMT"}, None),
    ({b"if-match": b"*", b"if-unmodified-since": OLD.encode()}, None),  # If-Match decides alone
    ({b"if-match": b'"other"', b"if-none-match": ETAG.encode()}, 412),  # 412 before 304
    ({b"if-none-match": b'W/"5f-400"'}, 304),                 # weak comparison
    ({b"if-none-match": b'"other"', b"if-modified-since": http_date(EPOCH_1994 + 10).encode()}, None),
    ({b"if-modified-since": http_date(EPOCH_1994 + 10).encode()}, 304),
    ({b"if-modified-since": b"Mon, 01 Jan 10000 00:00:00 GMT"}, None),
    ({b"if-none-match": b", " * 5000}, None),                  # thousands of empty members
])
def test_precondition_order(fields, status):
    assert precondition_status(fields, ETAG, EPOCH_1994 + 5) == status


@pytest.mark.parametrize(("value", "holds"), [
    (None, True),
    (ETAG.encode(), True),
    (b'W/"5f-400"', False),                        # a weak tag never matches
    (b'"other"', False),
    (http_date(EPOCH_1994).encode(), True),        # the date exactly
    (http_date(EPOCH_1994 - 1).encode(), False),
    (b"Sat, 01 Jan 0000 00:00:00 GMT", False),
    (b"9" * 5000, False),
    (b"", False),
])
def test_if_range(value, holds):
    assert if_range_holds(value, ETAG, EPOCH_1994) is holds


# -- --cache-control ---------------------------------------------------------------

@pytest.mark.parametrize("value", ["max-age=3600", "public, max-age=60", "no-store"])
def test_cache_control_values_accepted(value):
    assert _field_value(value) == value


@pytest.mark.parametrize("value", ["", " ", "max-age=1\r\nSet-Cookie: x", "a\nb", "a\x00", "a\x7f", "caf\xe9"])
def test_cache_control_values_refused(value):
    with pytest.raises(argparse.ArgumentTypeError):
        _field_value(value)


# -- chunked framing, generated -----------------------------------------------------

_TOKENS = st.text(alphabet="abcXYZ019!#$%&'*+-.^_`|~", min_size=1, max_size=6)
_EXTENSION = st.one_of(_TOKENS, st.tuples(_TOKENS, _TOKENS).map("=".join),
                       st.tuples(_TOKENS, st.text(alphabet="ab ;,=\\\"\t", max_size=8)).map(
                           lambda pair: f'{pair[0]}="{pair[1].replace(chr(92), "").replace(chr(34), "")}"'))


@st.composite
def chunked_bodies(draw) -> bytes:
    """A valid chunked body: any chunk sizes (hex case, leading zeros), extensions and trailer fields."""
    out = bytearray()
    for data in [*draw(st.lists(st.binary(min_size=1, max_size=40), max_size=6)), b""]:
        size = "0" * draw(st.integers(0, 20)) + format(len(data), draw(st.sampled_from(["x", "X"])))
        extensions = "".join(";" + extension for extension in draw(st.lists(_EXTENSION, max_size=3)))
        out += f"{size}{extensions}\r\n".encode() + data + (b"\r\n" if data else b"")
    for name, value in draw(st.lists(st.tuples(_TOKENS, _TOKENS), max_size=3)):
        out += f"{name}: {value}\r\n".encode()
    return bytes(out + b"\r\n")


@settings(max_examples=300, deadline=None)
@given(chunked_bodies(), st.integers(1, 50))
def test_generated_chunked_bodies_end_exactly(body, piece):
    assert skip(ChunkedBody(), body + NEXT, piece) == (True, NEXT)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.integers(1, 50))
def test_any_bytes_end_a_chunked_body_or_refuse_it(data, piece):
    try:
        _, left = skip(ChunkedBody(limit=200), data, piece)
    except BodyError:
        return
    assert len(left) <= len(data)
