"""Unit tests of the HTTP server's small parts: dates, content types, the file cache, ranges, escaping."""

from __future__ import annotations

import os
import sys
import threading
import time

import pytest

from servers.http.access_log import clf_time, escape, peer_host
from servers.http.dates import DateCache, http_date, parse_http_date
from servers.http.files import FileCache, NotServable, content_type
from servers.http.parser import HeadParser, RequestError
from servers.http.ranges import Unsatisfiable, parse_ranges

EPOCH_1994 = 784111777  # Sun, 06 Nov 1994 08:49:37 GMT, RFC 9110's example


def test_http_date_format():
    assert http_date(EPOCH_1994) == "Sun, 06 Nov 1994 08:49:37 GMT"
    assert DateCache().now().endswith(" GMT")


@pytest.mark.parametrize("text", [
    "Sun, 06 Nov 1994 08:49:37 GMT", "Sunday, 06-Nov-94 08:49:37 GMT", "Sun Nov  6 08:49:37 1994",
    "sun, 06 nov 1994 08:49:37 GMT",
])
def test_parse_three_date_forms(text):
    assert parse_http_date(text) == EPOCH_1994


@pytest.mark.parametrize("text", [
    "", "yesterday", "Sun, 06 Nov 1994 08:49:37 UTC", "Sun, 32 Nov 1994 08:49:37 GMT",
    "Sun, 06 Foo 1994 08:49:37 GMT", "Sun, 06 Nov 1994 24:00:00 GMT", "Sun, 06 Nov 1994 -1:00:00 GMT",
    "Sun, 06 Nov 1994 08:49 GMT", "Sunday, 06-Nov 08:49:37 GMT",
])
def test_invalid_dates_are_none(text):
    assert parse_http_date(text) is None


def test_rfc850_two_digit_years():
    assert parse_http_date("Thursday, 01-Jan-70 00:00:00 GMT") == 0
    assert time.gmtime(parse_http_date("Friday, 01-Jan-38 00:00:00 GMT")).tm_year == 2038


@pytest.mark.parametrize(("name", "expected"), [
    ("a.html", "text/html; charset=utf-8"), ("a.txt", "text/plain; charset=utf-8"),
    ("a.js", "text/javascript; charset=utf-8"), ("a.json", "application/json; charset=utf-8"),
    ("a.png", "image/png"), ("a", "application/octet-stream"), ("a.weird", "application/octet-stream"),
    ("a.tar.gz", "application/gzip"), ("a.svg", "image/svg+xml; charset=utf-8"),
])
def test_content_types(name, expected):
    assert content_type(name) in (expected, expected.replace("text/javascript", "application/javascript"))


def test_cache_hit_revalidates_identity(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"one")
    cache = FileCache(valid_for=0)
    entry = cache.open(b"/f", str(path))
    assert cache.get(b"/f") is entry
    path.write_bytes(b"three")  # another size: another file as far as validators go
    assert cache.get(b"/f") is None
    assert cache.open(b"/f", str(path)).size == 5
    path.unlink()
    assert cache.get(b"/f") is None


def test_cache_entries_expire_and_are_bounded(tmp_path):
    cache = FileCache(ttl=0.05, max_entries=3)
    for i in range(5):
        (tmp_path / str(i)).write_bytes(b"x")
        cache.open(str(i).encode(), str(tmp_path / str(i)))
    assert len(cache) == 3 and cache.get(b"0") is None and cache.get(b"4") is not None
    time.sleep(0.1)
    assert cache.get(b"4") is None


def test_cache_refuses_what_is_not_a_regular_file(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "link").symlink_to(tmp_path / "fifo")
    cache = FileCache()
    with pytest.raises(NotServable):
        cache.open(b"/fifo", str(tmp_path / "fifo"))  # and does not hang opening it
    with pytest.raises(NotServable):
        cache.open(b"/link", str(tmp_path / "link"))
    with pytest.raises(NotServable):
        cache.open(b"/dir", str(tmp_path))
    assert len(cache) == 0


def test_evicted_entry_stays_usable_while_referenced(tmp_path):
    (tmp_path / "a").write_bytes(b"aaa")
    cache = FileCache(max_entries=1)
    entry = cache.open(b"/a", str(tmp_path / "a"))
    (tmp_path / "b").write_bytes(b"b")
    cache.open(b"/b", str(tmp_path / "b"))
    assert cache.get(b"/a") is None
    assert os.pread(entry.fileno(), 3, 0) == b"aaa"


@pytest.mark.parametrize(("header", "size", "expected"), [
    (b"bytes=0-0", 10, (0, 0)), (b"bytes=9-", 10, (9, 9)), (b"bytes=-1", 10, (9, 9)),
    (b"BYTES = 2-3", 10, (2, 3)), (b"bytes=0-1,", 10, (0, 1)), (b"bytes=", 10, None), (b"bytes=-", 10, None),
    (b"bytes=a-b", 10, None), (b"bytes=1-2-3", 10, None), (b"0-1", 10, None), (b"bytes=+1-2", 10, None),
])
def test_parse_range(header, size, expected):
    assert parse_ranges(header, size) == (None if expected is None else [expected])


@pytest.mark.parametrize(("header", "size"), [(b"bytes=10-", 10), (b"bytes=-0", 10), (b"bytes=-5", 0)])
def test_unsatisfiable_ranges(header, size):
    with pytest.raises(Unsatisfiable):
        parse_ranges(header, size)


def test_log_escaping_and_peer_host():
    assert escape(b'GET /"\\\r\n\x00\x7f\xff HTTP/1.1') == 'GET /\\"\\\\\\x0d\\x0a\\x00\\x7f\\xff HTTP/1.1'
    assert peer_host("127.0.0.1:80") == "127.0.0.1"
    assert peer_host("[::1]:80") == "::1"
    assert peer_host("unix") == "unix"
    assert clf_time(EPOCH_1994) == "[06/Nov/1994:08:49:37 +0000]"



class _PausingKey(bytes):
    """A cache key whose second hashing (the stale-entry removal in get) waits for another thread."""

    def __hash__(self) -> int:
        self.hashed = getattr(self, "hashed", 0) + 1
        if self.hashed == 2:
            self.paused.set()
            self.resume.wait(timeout=2.0)  # the fixed cache holds its lock here: the other thread waits
        return bytes.__hash__(self)


def test_stale_removal_in_get_never_drops_the_entry_another_thread_just_opened(tmp_path):
    """Issue 14 item 8, deterministically: get() removed whatever was under the key, without the lock.

    Thread A finds a stale entry and is about to remove it; thread B opens the
    file again meanwhile.  The cache must end up holding B's fresh entry.
    """
    path = tmp_path / "f"
    path.write_bytes(b"one")
    cache = FileCache(valid_for=0.0, ttl=600.0)  # B's entry may wait out A's pause: it must not expire
    key = _PausingKey(b"/f")
    key.paused, key.resume = threading.Event(), threading.Event()
    cache.open(key, str(path))
    key.hashed = 0
    path.write_bytes(b"three")  # the cached entry is stale now
    fresh = []

    def reopen() -> None:
        key.paused.wait(timeout=30)
        fresh.append(cache.open(b"/f", str(path)))
        key.resume.set()

    other = threading.Thread(target=reopen)
    other.start()
    assert cache.get(key) is None  # stale: removed (A)
    other.join(timeout=30)
    assert not other.is_alive() and fresh
    assert cache.get(b"/f") is fresh[0]


def test_cache_is_safe_when_threads_share_it(tmp_path):
    """Issue 14 item 8 under stress: eviction iterated the dict while get() removed entries.

    A tiny cache forces an eviction on nearly every open, and a zero TTL makes
    every get() find its entry stale and remove it, from eight threads at once
    with the interpreter switching threads as often as it can.  (With the GIL
    the dict operations themselves are atomic; without it, as on a
    free-threaded build, this is where iteration and removal collide.)
    """
    paths = []
    for i in range(6):
        (tmp_path / str(i)).write_bytes(b"x" * i)
        paths.append((f"/{i}".encode(), str(tmp_path / str(i))))
    cache = FileCache(ttl=0.0, max_entries=2, valid_for=0.0)
    failures: list[BaseException] = []
    start = threading.Barrier(8)

    def hammer(offset: int) -> None:
        start.wait()
        try:
            for round_ in range(3000):
                key, path = paths[(offset + round_) % len(paths)]
                if cache.get(key) is None:
                    assert cache.open(key, path).size == int(key[1:])
        except BaseException as exc:  # any failure in a thread is the finding
            failures.append(exc)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=hammer, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    finally:
        sys.setswitchinterval(interval)
    assert not any(thread.is_alive() for thread in threads)
    assert failures == []
    assert len(cache) <= 2


def test_a_repeated_head_is_parsed_once_and_cut_exactly():
    parser = HeadParser()
    head = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
    parser.feed(head)
    first = parser.next_head()
    parser.feed(head)
    assert parser.next_head() is first and parser.buffered == 0  # the same bytes: the same (read-only) head
    parser.feed(head + head + b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n" + head[:5])
    assert parser.next_head() is first and parser.next_head() is first
    other = parser.next_head()
    assert other is not None and other.target == b"/b"
    assert parser.next_head() is None and parser.buffered == 5  # the start of the next head stays
    parser.feed(head[5:])
    again = parser.next_head()
    assert again is not None and again.target == b"/a" and again is not first  # /b came between
    parser.feed(b"\r\n" + head)  # an empty line before a request line is skipped, then the same head
    assert parser.next_head() is again
    parser.feed(head.replace(b"Host", b"Ho st"))
    with pytest.raises(RequestError):
        parser.next_head()
