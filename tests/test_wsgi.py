"""``forkthread serve wsgi`` end to end, under every strategy: PEP 3333 as a client and the log see it.

One server per strategy serves tests/wsgi_apps/plain.py for most tests
(module scope); the tests that need options or other applications start
their own.  Responses are parsed by h11 (tests/http_support.py): every byte
on the wire is checked to be well-formed HTTP/1.1.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time

import pytest

from tests.http_support import exchange, read_replies
from tests.support import ServerProcess, child_env, module_server, tree_total, wait_for

PLAIN = "tests.wsgi_apps.plain:app"


def rss_kib(pid: int) -> float:
    """Resident memory of *pid* in KiB (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return float(line.split()[1])
    except OSError:
        pass
    return 0.0


@pytest.fixture(scope="module")
def marks(tmp_path_factory):
    """The directory where the test application leaves marks (close() called)."""
    return tmp_path_factory.mktemp("marks")


@pytest.fixture(scope="module")
def app_server(strategy, marks):
    """The plain application under *strategy*, for the whole module."""
    with module_server("wsgi", "--app", PLAIN, "--threads", "4", "--forwarded-allow-ips", "192.0.2.1",
                       strategy=strategy, env=child_env(WSGI_TEST_MARKS=str(marks))) as server:
        yield server


def request(method: str, target: str, *headers: str, body: bytes = b"", version: str = "1.1") -> bytes:
    lines = [f"{method} {target} HTTP/{version}", "Host: test", *headers]
    if body and not any(h.lower().startswith(("content-length", "transfer-encoding")) for h in headers):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join([*lines, "", ""])).encode("latin-1") + body


def ask(server: ServerProcess, data: bytes, methods: list[str] | None = None, **kwargs):
    with server.connect() as sock:
        return exchange(sock, data, methods or ["GET"], **kwargs)


def test_hello_with_keep_alive_and_pipelining(app_server):
    data = request("GET", "/") * 3 + request("HEAD", "/") + request("GET", "/write") + request("GET", "/nocontent")
    replies, closed = ask(app_server, data, ["GET", "GET", "GET", "HEAD", "GET", "GET"])
    assert [reply.status for reply in replies] == [200, 200, 200, 200, 200, 204]
    assert [reply.body for reply in replies[:3]] == [b"Hello, World!"] * 3
    assert replies[3].body == b"" and replies[3].header("content-length") == "13"
    assert replies[4].body == b"written and returned"
    assert replies[4].header("transfer-encoding") == "chunked"
    assert not closed


def test_many_keep_alive_clients_at_once(app_server):
    # Under poll, every response is a hand-off between a pool thread and the loop: none may be
    # lost (a lost wake-up of the loop once stalled every connection after a few thousand).
    import threading

    failures: list[str] = []

    def client() -> None:
        try:
            with app_server.connect() as sock:
                for _ in range(300):
                    (reply,), _ = exchange(sock, request("GET", "/"), ["GET"])
                    assert reply.body == b"Hello, World!"
        except Exception as exc:  # reported below, in the test's thread
            failures.append(repr(exc))

    clients = [threading.Thread(target=client) for _ in range(8)]
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join()
    assert not failures


@pytest.mark.parametrize("chunk", [None, 1], ids=["whole", "bytes"])
def test_environ(app_server, strategy, chunk):
    data = request("GET", "/environ/a%20b%2Fc?x=1&y=%20", "X-Multi: one", "X-Multi: two", "X_Under: dropped",
                   "Content-Type: text/plain", "X-Forwarded-For: 10.9.8.7")
    (reply,), _ = ask(app_server, data, chunk=chunk)
    environ = json.loads(reply.body)
    assert environ["REQUEST_METHOD"] == "GET"
    assert environ["SCRIPT_NAME"] == ""
    assert environ["PATH_INFO"] == "/environ/a b/c"
    assert environ["QUERY_STRING"] == "x=1&y=%20"
    assert environ["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert environ["SERVER_NAME"] == "test" and environ["SERVER_PORT"] == "80"
    assert environ["REMOTE_ADDR"] == "127.0.0.1"  # a forwarded address counts only from a trusted proxy...
    assert int(environ["REMOTE_PORT"]) > 0
    assert environ["HTTP_X_MULTI"] == "one, two"
    assert "HTTP_X_UNDER" not in environ
    assert environ["CONTENT_TYPE"] == "text/plain" and "HTTP_CONTENT_TYPE" not in environ
    assert environ["wsgi.url_scheme"] == "http"
    assert environ["wsgi.version"] == [1, 0]
    assert environ["wsgi.input_terminated"] is True
    threads, processes = {"iterative": (False, False), "forking": (False, True), "threading": (True, False),
                          "prethreaded": (True, False), "poll": (True, False),
                          "preforked": (False, True)}.get(strategy, (None, None))
    if threads is not None:
        assert (environ["wsgi.multithread"], environ["wsgi.multiprocess"]) == (threads, processes)


def test_http10_and_absolute_form(app_server):
    (reply,), closed = ask(app_server, request("GET", "http://example.org:8080/environ?q", version="1.0"))
    environ = json.loads(reply.body)
    assert environ["PATH_INFO"] == "/environ" and environ["QUERY_STRING"] == "q"
    assert environ["SERVER_PROTOCOL"] == "HTTP/1.0"
    assert closed


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_20_mib_upload(app_server, framing):
    body = os.urandom(1 << 20) * 20
    with app_server.connect(timeout=60) as sock:
        if framing == "length":
            sock.sendall(request("POST", "/digest", body=body))
        else:
            sock.sendall(request("POST", "/digest", "Transfer-Encoding: chunked"))
            for start in range(0, len(body), 1 << 18):
                piece = body[start:start + (1 << 18)]
                sock.sendall(b"%x\r\n" % len(piece) + piece + b"\r\n")
            sock.sendall(b"0\r\n\r\n")
        (reply,), _ = read_replies(sock, ["POST"], timeout=60)
    assert reply.status == 200
    assert reply.body.decode() == f"{len(body)} {hashlib.sha256(body).hexdigest()}"


def test_echo_keeps_the_connection_after_a_body(app_server):
    data = request("POST", "/echo", body=b"abc") + request("POST", "/echo-lines", "Transfer-Encoding: chunked") \
        + b"4\r\nx\ny\n\r\n2\r\nz\n\r\n0\r\n\r\n" + request("GET", "/")
    replies, closed = ask(app_server, data, ["POST", "POST", "GET"], chunk=7)
    assert [reply.body for reply in replies] == [b"abc", b"3\nx\ny\nz\n", b"Hello, World!"]
    assert not closed


def test_50_mib_stream_to_a_slow_reader_holds_bounded_memory(app_server):
    size = 50 << 20
    pids = {app_server.pid} | app_server.tree()
    with app_server.connect(timeout=60) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.sendall(request("GET", f"/stream?size={size}"))
        received = sock.recv(65536)
        # Counted once the response is under way (a forking server's child exists by now).
        before = sum(rss_kib(pid) for pid in pids | app_server.tree())
        # The reader stalls: the application must be held back, not its response buffered.
        peak = before
        for _ in range(20):
            time.sleep(0.05)
            peak = max(peak, sum(rss_kib(pid) for pid in pids | app_server.tree()))
        head, _, body = received.partition(b"\r\n\r\n")
        assert b"200 OK" in head and b"chunked" in head.lower()
        rest = bytearray(body)
        while True:
            data = sock.recv(1 << 20)
            if not data:
                break
            rest += data
            if rest.endswith(b"0\r\n\r\n"):
                break
    decoded = bytearray()
    view = memoryview(rest)
    while True:
        line_end = bytes(view[:20]).index(b"\r\n")
        length = int(bytes(view[:line_end]), 16)
        if not length:
            break
        decoded += view[line_end + 2:line_end + 2 + length]
        view = view[line_end + 4 + length:]
    assert len(decoded) == size
    assert decoded[:512] == bytes(range(256)) * 2 and decoded[-256:] == bytes(range(256))
    assert peak - before < 16 * 1024, f"server grew by {peak - before:.0f} KiB for a stalled reader"


def test_close_is_called_when_the_client_goes_away(app_server, marks):
    mark = f"gone-{os.getpid()}-{time.monotonic_ns()}"
    with app_server.connect() as sock:
        sock.sendall(request("GET", f"/stream?size={1 << 34}&mark={mark}"))
        assert sock.recv(65536)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    assert wait_for(lambda: (marks / mark).exists(), timeout=20), app_server.log()


SMUGGLING = {
    "te-and-cl": request("POST", "/echo", "Content-Length: 5", "Transfer-Encoding: chunked") + b"0\r\n\r\n",
    "two-lengths": request("POST", "/echo", "Content-Length: 5", "Content-Length: 6") + b"hello!",
    "same-length-twice": request("POST", "/echo", "Content-Length: 5", "Content-Length: 5") + b"hello",
    "obs-fold": request("POST", "/echo", "Content-Length: 5", "X-Folded: a", " b") + b"hello",
    "bare-cr": b"POST /echo HTTP/1.1\r\nHost: test\r\nX-Cr: a\rb\r\nContent-Length: 5\r\n\r\nhello",
    "0x-chunk": request("POST", "/echo", "Transfer-Encoding: chunked") + b"0x5\r\nhello\r\n0\r\n\r\n",
    "chunk-no-crlf": request("POST", "/echo", "Transfer-Encoding: chunked") + b"5\r\nhelloXX0\r\n\r\n",
}


@pytest.mark.parametrize("name", SMUGGLING)
def test_smuggling_shapes_get_400_and_never_reach_the_app(app_server, name):
    (reply,), closed = ask(app_server, SMUGGLING[name] + request("GET", "/"), ["POST", "GET"])
    assert reply.status == 400
    assert b"hello" not in reply.body
    assert closed


def test_a_raising_app_gets_500_and_the_server_serves_on(app_server):
    before = app_server.log().count("application raised")
    (reply,), closed = ask(app_server, request("GET", "/raise") + request("GET", "/"), ["GET", "GET"])
    assert reply.status == 500 and closed
    assert wait_for(lambda: app_server.log().count("application raised") == before + 1)
    assert "RuntimeError: boom before the response" in app_server.log()  # with its traceback
    with app_server.connect() as sock:
        sock.sendall(request("GET", "/raise-late"))
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert b"part one" in data and not data.endswith(b"0\r\n\r\n")  # cut short: no last chunk
    (reply,), _ = ask(app_server, request("GET", "/"))
    assert reply.status == 200


@pytest.mark.parametrize("path", ["/bad-header", "/hop"])
def test_start_response_is_checked(app_server, path):
    (reply,), closed = ask(app_server, request("GET", path))
    assert reply.status == 500 and b"never sent" not in reply.body and closed
    assert "Injected" not in str(reply.headers)


def test_content_length_is_honoured(app_server):
    with app_server.connect() as sock:
        sock.sendall(request("GET", "/short") + request("GET", "/"))
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.endswith(b"\r\n\r\nonly this")  # short of its length: the connection ends, nothing follows


def test_file_wrapper_sends_the_file(app_server, tmp_path):
    content = os.urandom(300_000)
    (tmp_path / "f.bin").write_bytes(content)
    (reply,), _ = ask(app_server, request("GET", f"/file?name={tmp_path / 'f.bin'}"))
    assert reply.body == content and reply.header("content-length") == str(len(content))


def test_expect_continue_only_when_the_app_reads(app_server):
    with app_server.connect() as sock:
        sock.sendall(request("POST", "/echo", "Expect: 100-continue", "Content-Length: 5"))
        interim = sock.recv(100)
        assert interim.startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        sock.sendall(b"hello")
        (reply,), _ = read_replies(sock, ["POST"])
        assert reply.body == b"hello"
    with app_server.connect() as sock:
        sock.sendall(request("POST", "/", "Expect: 100-continue", "Content-Length: 5"))
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        assert data.startswith(b"HTTP/1.1 200 OK") and b"100 Continue" not in data


def test_a_blocked_app_does_not_delay_another_client(app_server, strategy, marks):
    if strategy == "iterative":
        pytest.skip("iterative serves one connection at a time by design")
    mark = f"block-{os.getpid()}-{time.monotonic_ns()}"
    with app_server.connect(timeout=40) as blocked:
        blocked.sendall(request("GET", f"/block?mark={mark}"))
        try:
            (reply,), _ = ask(app_server, request("GET", "/"))  # answered while the other waits
            assert reply.status == 200
        finally:
            (marks / mark).write_text("go")
        (reply,), _ = read_replies(blocked, ["GET"], timeout=40)
        assert reply.status == 200


def test_wsgi_errors_go_to_the_log(app_server):
    (reply,), _ = ask(app_server, request("GET", "/errors"))
    assert reply.status == 200
    assert wait_for(lambda: "a line for the log" in app_server.log())


def test_server_tree_memory_helper_is_sane(app_server):
    assert tree_total(app_server.pid, rss_kib) > 0


def _corpus_cases() -> list:
    from pathlib import Path

    from tests.test_http_corpus import CORPUS, load

    return [load(path) for path in sorted(Path(CORPUS).glob("*.http"))
            if set(path.stem.split("--")[0].split("-")) == {"200"}]


@pytest.mark.parametrize("case", _corpus_cases(), ids=lambda case: case.name)
def test_the_valid_requests_of_the_corpus_reach_the_app(app_server, case):
    """The requests of tests/http_corpus/ the static server answers 200 reach the application too."""
    replies, closed = ask(app_server, case.data, case.methods)
    assert [reply.status for reply in replies] == case.statuses
    if case.then == "close":
        assert closed


def test_expect_continue_with_a_body_sent_at_once(app_server):
    # A client need not wait for the 100: a large body sent at once must still reach the application.
    body = os.urandom(1 << 20)
    with app_server.connect(timeout=30) as sock:
        sock.sendall(request("POST", "/digest", "Expect: 100-continue", f"Content-Length: {len(body)}") + body)
        data = b""
        while b"\r\n\r\n" not in data.partition(b"100 Continue\r\n\r\n")[2]:
            data += sock.recv(65536)
        while not data.endswith(hashlib.sha256(body).hexdigest().encode()):
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
