"""The HTTP server end to end, under every strategy: curl, http.client, raw sockets, slowloris."""

from __future__ import annotations

import http.client
import select
import socket
import subprocess
import sys
import threading
import time

import pytest

from servers.http.files import MAX_ENTRIES, SMALL_FILE
from tests.http_support import BIG, KIB, SMALL, exchange, make_root, read_replies
from tests.support import child_env

needs_curl = pytest.mark.needs_tool("curl")


@pytest.fixture
def root(tmp_path):
    return make_root(tmp_path)


def host_port(server) -> tuple[str, int]:
    host, _, port = server.address.rpartition(":")
    return host.strip("[]"), int(port)


@needs_curl
def test_curl_fetches_1mib_three_times_on_one_connection(serve, strategy, root, tmp_path):
    server = serve("http", "--root", str(root), strategy=strategy)
    url = f"http://{server.address}/big.bin"
    outputs = [tmp_path / f"out{i}" for i in range(3)]
    args = ["curl", "-sS", "--fail", "--max-time", "30", "-w", "%{num_connects} %{http_code}\\n"]
    for output in outputs:
        args += ["-o", str(output), url]
    result = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:3] == ["1 200", "0 200", "0 200"], "one connection, reused twice"
    for output in outputs:
        assert output.read_bytes() == BIG


def test_http_client_fetches_1mib_three_times_on_one_connection(serve, strategy, root):
    server = serve("http", "--root", str(root), strategy=strategy)
    connection = http.client.HTTPConnection(*host_port(server), timeout=30)
    try:
        first_socket = None
        for _ in range(3):
            connection.request("GET", "/big.bin")
            response = connection.getresponse()
            assert response.status == 200
            assert response.read() == BIG
            first_socket = first_socket or connection.sock
            assert connection.sock is first_socket, "the connection was kept alive"
    finally:
        connection.close()


def test_head_range_and_304_over_http_client(serve, strategy, root):
    server = serve("http", "--root", str(root), strategy=strategy)
    connection = http.client.HTTPConnection(*host_port(server), timeout=30)
    try:
        connection.request("HEAD", "/kib.bin")
        head = connection.getresponse()
        assert (head.status, head.read(), head.getheader("Content-Length")) == (200, b"", "1024")
        connection.request("GET", "/kib.bin", headers={"Range": "bytes=-16"})
        partial = connection.getresponse()
        assert (partial.status, partial.read()) == (206, KIB[-16:])
        assert partial.getheader("Content-Range") == "bytes 1008-1023/1024"
        connection.request("GET", "/kib.bin", headers={"If-None-Match": head.getheader("ETag")})
        cached = connection.getresponse()
        assert (cached.status, cached.read()) == (304, b"")
        connection.request("GET", "/kib.bin", headers={"Range": "bytes=4096-"})
        refused = connection.getresponse()
        assert refused.status == 416 and refused.getheader("Content-Range") == "bytes */1024"
        refused.read()
        connection.request("GET", "/hello.txt")
        assert connection.getresponse().read() == SMALL
    finally:
        connection.close()


def test_pipelining_and_errors_on_a_real_server(serve, strategy, root):
    server = serve("http", "--root", str(root), strategy=strategy)
    requests = (b"GET /hello.txt HTTP/1.1\r\nHost: x\r\n\r\n" b"HEAD /big.bin HTTP/1.1\r\nHost: x\r\n\r\n"
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi"
                b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n" b"GET / HTTP/2.0\r\n\r\n")
    with server.connect() as sock:
        replies, closed = exchange(sock, requests, ["GET", "HEAD", "POST", "GET", "GET"])
    assert [r.status for r in replies] == [200, 200, 405, 200, 505]
    assert replies[0].body == SMALL and replies[1].body == b"" and replies[3].body == BIG
    assert closed


def test_more_files_than_the_cache_holds_from_concurrent_clients(serve, strategy, tmp_path):
    """The file cache evicts and revalidates while several connections use it at once (issue 14 item 8).

    Under threading and the thread pools the cache is shared by the threads;
    every reply must be the right file, and the server must log no fault.
    """
    root = tmp_path / "many"
    root.mkdir()
    count = MAX_ENTRIES + 40
    bodies = {f"/f{n}": bytes([n % 251]) * (n * 97 if n % 7 else SMALL_FILE + n) for n in range(count)}
    for name, body in bodies.items():
        (root / name[1:]).write_bytes(body)
    server = serve("http", "--root", str(root), strategy=strategy)
    names = list(bodies)
    failures: list[str] = []

    def client(offset: int) -> None:
        try:
            with server.connect(timeout=30) as sock:
                for batch in range(3):
                    chosen = [names[(offset * 53 + batch * 101 + i * 7) % count] for i in range(40)]
                    requests = b"".join(f"GET {name} HTTP/1.1\r\nHost: x\r\n\r\n".encode() for name in chosen)
                    replies, _ = exchange(sock, requests, ["GET"] * len(chosen), timeout=30)
                    failures.extend(name for name, reply in zip(chosen, replies, strict=True)
                                    if reply.status != 200 or reply.body != bodies[name])
        except Exception as exc:  # any failure in a client thread is the finding
            failures.append(repr(exc))

    threads = [threading.Thread(target=client, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    assert failures == []
    assert "Traceback" not in server.log() and "ERROR" not in server.log()


TRAVERSALS = ["/../secret.txt", "/%2e%2e/secret.txt", "/..%2fsecret.txt", "/..\\secret.txt", "/..%5csecret.txt",
              "/%00/../secret.txt", "/link-out", "/dir-out/secret.txt", "//evil.com", "/sub/../../secret.txt"]


@needs_curl
@pytest.mark.parametrize("follow", [False, True])
def test_traversal_with_curl_path_as_is(serve, root, follow):
    server = serve("http", "--root", str(root), "--listing", *(["--follow-symlinks"] if follow else []))
    for path in TRAVERSALS:
        result = subprocess.run(["curl", "-s", "--path-as-is", "-i", "--max-time", "10",
                                 f"http://{server.address}{path}"], capture_output=True, timeout=30)
        status = int(result.stdout.split(b" ", 2)[1])
        assert status in (301, 400, 403, 404), path
        assert b"SECRET" not in result.stdout, path
        if status == 301:
            location = next(line for line in result.stdout.split(b"\r\n") if line.lower().startswith(b"location:"))
            assert location.split(b":", 1)[1].strip().startswith(b"/") and b"//" not in location, path


def test_header_timeout_gives_408_then_close(serve, strategy, root):
    server = serve("http", "--root", str(root), "--header-timeout", "1", strategy=strategy)
    with server.connect() as sock:
        sock.sendall(b"GET /hello.txt HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        (reply,), closed = read_replies(sock, ["GET"], timeout=10)
    assert reply.status == 408 and closed
    assert time.monotonic() - started >= 0.8


def test_access_log_file(serve, root, tmp_path):
    log_path = tmp_path / "access.log"
    server = serve("http", "--root", str(root), "--access-log", str(log_path))
    with server.connect() as sock:
        exchange(sock, b"GET /hello.txt HTTP/1.1\r\nHost: x\r\n\r\nGET /\x1b]0;pwned\x07 HTTP/1.1\r\nHost: x\r\n\r\n",
                 ["GET", "GET"])
    deadline = time.monotonic() + 5
    while log_path.read_text().count("\n") < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    lines = log_path.read_text("ascii").splitlines()
    assert lines[0].startswith("127.0.0.1 - - [") and lines[0].endswith('"GET /hello.txt HTTP/1.1" 200 13')
    assert '"GET /\\x1b]0;pwned\\x07 HTTP/1.1" 400' in lines[1]


@pytest.mark.parametrize(("args", "message"), [
    (["--root", "/nonexistent/dir"], "not a directory"),
    (["--header-timeout", "0"], "must be a number of seconds > 0"),
    (["--access-log", "/nonexistent/dir/log"], "cannot open access log"),
])
def test_cli_misuse_is_one_line_no_traceback(args, message):
    result = subprocess.run([sys.executable, "-m", "framework", "serve", "http", "--bind", "127.0.0.1:0", *args],
                            capture_output=True, text=True, timeout=30, env=child_env())
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


# -- slowloris -------------------------------------------------------------------------

#: Per strategy: its options here, and how many clients it serves at once (None: as many as come).
SLOWLORIS: dict[str, tuple[list[str], int | None]] = {
    "iterative": ([], 1),
    "forking": ([], None),
    "threading": ([], None),
    "prethreaded": (["--threads", "4"], 4),
    "preforked": (["--worker", "poll"], None),
    "poll": ([], None),
    "interpreters": (["--worker", "poll"], None),
}


def nothing_received(sock: socket.socket) -> bool:
    """True if nothing (no byte, no EOF, no reset) has arrived on *sock* yet: it does not poll readable."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return not poller.poll(0)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_slowloris_does_not_starve_a_normal_client(serve, root, strategy):
    """Clients trickling heads hold only their own connections, and each ends with 408.

    A strategy that serves many clients at once serves a normal client while
    200 slow ones are all still held (none has had its 408 yet); one with a
    bound (iterative, a thread pool) serves it once the head deadline has
    cut off the slow clients ahead of it.  Deadlines are generous, so only a
    hang fails: the order of events is what is checked, not the time taken.
    """
    extra, capacity = SLOWLORIS[strategy]
    header_timeout = 20 if capacity is None else 1
    server = serve("http", "--root", str(root), "--header-timeout", str(header_timeout), *extra, strategy=strategy)
    slow: list[socket.socket] = []
    try:
        for _ in range(200 if capacity is None else capacity + 2):
            sock = server.connect(timeout=30)
            sock.sendall(b"GET /hello.txt HTTP/1.1\r\n")
            slow.append(sock)
        for sock in slow:  # keep trickling: each client is alive but never finishes its head
            sock.sendall(b"X")
        with server.connect(timeout=30) as sock:
            (reply,), _ = exchange(sock, b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n", ["GET"], timeout=60)
        assert reply.status == 200 and reply.body == BIG
        if capacity is None:
            answered = [index for index, sock in enumerate(slow) if not nothing_received(sock)]
            assert not answered, f"slow clients {answered[:5]} were answered before the normal client was served"
        # Past the deadline, every slow client got 408 and was closed, however it trickles.
        for sock in slow:
            try:
                sock.sendall(b"-")
            except OSError:
                pass
        deadline = time.monotonic() + header_timeout + 60
        for index, sock in enumerate(slow):
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            data = b""
            try:
                while chunk := sock.recv(4096):
                    data += chunk
            except ConnectionResetError:
                pass
            assert data.startswith(b"HTTP/1.1 408 "), (index, data[:40])
    finally:
        for sock in slow:
            sock.close()


@pytest.mark.parametrize("bind", ["[::1]:0", "unix"])
def test_ipv6_and_unix_sockets(serve, root, tmp_path, bind):
    address = f"unix:{tmp_path}/http.sock" if bind == "unix" else bind
    server = serve("http", "--root", str(root), "--access-log", str(tmp_path / "log"), bind=address)
    with server.connect() as sock:
        replies, closed = exchange(sock, b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n" * 2, ["GET", "GET"])
    assert [r.body == BIG for r in replies] == [True, True] and not closed
