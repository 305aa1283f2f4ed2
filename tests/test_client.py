"""``forkthread client``: each client against its server, over TCP, Unix and UDP addresses."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading

import pytest

from framework.registry import server_targets
from framework.strategies import STRATEGIES
from servers.chat import ChatServer
from tests.support import child_env
from tests.test_conformance import CTIME

CLIENT = [sys.executable, "-m", "framework", "client"]


def client(*args: str, stdin: bytes = b"", timeout: float = 30) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*CLIENT, *args], input=stdin, capture_output=True, env=child_env(), timeout=timeout)


@pytest.mark.parametrize("bind", ["127.0.0.1:0", "udp:127.0.0.1:0"])
def test_daytime_client(serve, bind):
    server = serve("daytime", bind=bind)
    result = client("daytime", server.address)
    assert result.returncode == 0, result.stderr
    assert CTIME.match(result.stdout)


@pytest.mark.parametrize("bind", ["[::1]:0", "unix", "udp:[::1]:0"])
def test_echo_client(serve, bind, tmp_path):
    server = serve("echo", bind=f"unix:{tmp_path}/e.sock" if bind == "unix" else bind)
    payload = b"line one\nline two\n"
    result = client("echo", server.address, stdin=payload)
    assert result.returncode == 0, result.stderr
    assert result.stdout == payload


@pytest.mark.parametrize("chat_strategy", sorted(ChatServer.supported_strategies))
def test_chat_client_talks_to_the_room(serve, chat_strategy):
    if chat_strategy not in STRATEGIES:
        pytest.skip(f"strategy {chat_strategy} is not registered")
    server = serve("chat", "--graceful-timeout", "2", strategy=chat_strategy)
    with server.connect() as listener:
        reader = listener.makefile("rb")
        assert reader.readline().startswith(b"* welcome guest1")
        result = client("chat", server.address, stdin=b"hello room\n")
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(b"* welcome guest2 (1 others here)\n")
        assert reader.readline() == b"* guest2 joined\n"
        assert reader.readline() == b"guest2: hello room\n"
        assert reader.readline() == b"* guest2 left\n"
        reader.close()


def test_message_client(serve, tmp_path):
    server = serve("message", bind=f"unix:{tmp_path}/m.sock")
    result = client("message", server.address, "hello", "quit")
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().splitlines() == ["ok", "quit refused (start the server with --allow-quit)"]


def fake_http_server(response: bytes):
    """A one-shot HTTP server thread on 127.0.0.1 that records the request and sends *response*."""
    listener = socket.create_server(("127.0.0.1", 0))
    seen: list[bytes] = []

    def serve_one() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(10)
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(4096)
            seen.append(data)
            conn.sendall(response)
        listener.close()

    thread = threading.Thread(target=serve_one)
    thread.start()
    return listener.getsockname()[1], seen, thread


@pytest.mark.parametrize("chunked", [False, True])
def test_http_client(chunked):
    body = b"<h1>hi</h1>\n"
    if chunked:
        response = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"5\r\n<h1>h\r\n" +
                    b"7\r\ni</h1>\n\r\n0\r\n\r\n")
    else:
        response = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    port, seen, thread = fake_http_server(response)
    result = client("http", f"127.0.0.1:{port}", "/index.html")
    thread.join(10)
    assert result.returncode == 0, result.stderr
    assert result.stdout == body
    assert result.stderr.startswith(b"HTTP/1.1 200 OK")
    assert seen[0].startswith(b"GET /index.html HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n" % port)


def test_http_client_error_status_exits_1():
    port, _, thread = fake_http_server(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
    result = client("http", f"127.0.0.1:{port}", "/missing")
    thread.join(10)
    assert result.returncode == 1 and result.stderr.startswith(b"HTTP/1.1 404")


def test_unreachable_server_is_one_line():
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    result = client("daytime", f"127.0.0.1:{port}")
    assert result.returncode == 1
    assert result.stderr.decode().strip() == f"forkthread client: 127.0.0.1:{port}: Connection refused"


def test_bad_address_is_a_usage_error():
    result = client("echo", "nowhere")
    assert result.returncode == 2 and b"Traceback" not in result.stderr


@pytest.mark.skipif("http" not in server_targets(), reason="the http server is not available")
def test_http_client_against_the_http_server(serve, tmp_path):
    (tmp_path / "hello.txt").write_bytes(b"hello, client\n")
    server = serve("http", "--root", str(tmp_path))
    result = client("http", server.address, "/hello.txt")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"hello, client\n"
    assert result.stderr.startswith(b"HTTP/1.1 200 OK\n")
    missing = client("http", server.address, "/nope")
    assert missing.returncode == 1 and missing.stderr.startswith(b"HTTP/1.1 404")
