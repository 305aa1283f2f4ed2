"""The message server: length-prefixed messages logged, quit honoured only with --allow-quit, every strategy."""

from __future__ import annotations

import socket
import struct

import pytest

from framework.testing import RecordingTransport, feed
from servers.message import MessageProtocol, encode_message
from tests.support import recv_all, wait_for


def read_message(sock: socket.socket) -> str:
    header = recv_exactly(sock, 4)
    (length,) = struct.unpack("!I", header)
    return recv_exactly(sock, length).decode()


def recv_exactly(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        assert chunk, f"connection ended after {len(data)} of {count} bytes"
        data += chunk
    return data


@pytest.mark.parametrize("bind", ["unix", "127.0.0.1:0"])
def test_messages_are_logged_and_answered(serve, strategy, bind, tmp_path):
    address = f"unix:{tmp_path}/message.sock" if bind == "unix" else bind
    server = serve("message", strategy=strategy, bind=address)
    with server.connect() as sock:
        for text in ["hello", "", "üñí ✓", "two\nlines"]:
            sock.sendall(encode_message(text))
            assert read_message(sock) == "ok"
    for logged in ["message from", ": hello", ": üñí ✓", ": two\\nlines"]:
        assert wait_for(lambda logged=logged: logged in server.log()), server.log()


def test_quit_is_refused_without_allow_quit(serve, strategy):
    server = serve("message", strategy=strategy)
    with server.connect() as sock:
        sock.sendall(encode_message("quit"))
        assert read_message(sock).startswith("quit refused")
        sock.sendall(encode_message("still up"))
        assert read_message(sock) == "ok"
    assert server.proc.poll() is None


def test_quit_stops_the_server_with_allow_quit(serve, strategy, tmp_path):
    server = serve("message", "--allow-quit", "--graceful-timeout", "5", strategy=strategy,
                   bind=f"unix:{tmp_path}/quit.sock")
    with server.connect() as sock:
        sock.sendall(encode_message("quit"))
        assert read_message(sock) == "bye"
        assert recv_all(sock) == b""
    assert server.proc.wait(30) == 0, server.log()
    assert not (tmp_path / "quit.sock").exists()  # a graceful stop cleans up its socket file


def test_split_frames_and_a_too_long_message():
    transport = RecordingTransport()
    protocol = MessageProtocol(max_message=10)
    protocol.connection_made(transport)
    feed(protocol, encode_message("abc") + encode_message("0123456789"), chunk_size=1)
    assert transport.output() == encode_message("ok") * 2 and not transport.closed
    feed(protocol, struct.pack("!I", 11))
    assert transport.closed and b"longer than 10" in transport.output()


def test_invalid_utf8_ends_the_connection():
    transport = RecordingTransport()
    protocol = MessageProtocol()
    protocol.connection_made(transport)
    feed(protocol, struct.pack("!I", 2) + b"\xff\xfe")
    assert transport.closed and b"UTF-8" in transport.output()


def test_quit_callback_called_once_when_allowed():
    calls = []
    transport = RecordingTransport()
    protocol = MessageProtocol(quit=lambda: calls.append(1))
    protocol.connection_made(transport)
    feed(protocol, encode_message("quit") + encode_message("after"))
    assert calls == [1] and transport.closed and transport.output() == encode_message("bye")
