"""The message server: length-prefixed messages logged, quit honoured only with --allow-quit, every strategy."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from framework.address import bind_socket, format_peer, parse_address
from framework.testing import RecordingTransport, feed
from servers.chat import ChatServer
from servers.message import MessageProtocol, encode_message
from tests.support import child_env, recv_all, wait_for


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


# -- who may stop the server (issue 25 item 8) ----------------------------------------------------

NOBODY = 65534


@pytest.fixture
def public_dir():
    """A directory another user can reach (pytest's tmp_path is private to root), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="forkthread-message-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def as_nobody(path: str, message: str) -> str:
    """Fork a process that becomes user nobody, sends *message* to *path*: the reply, or the error it met."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: only system calls, then _exit, whatever happens
        status = 1
        try:
            os.close(read_end)
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            try:
                with socket.socket(socket.AF_UNIX) as sock:
                    sock.settimeout(10)
                    sock.connect(path)
                    sock.sendall(encode_message(message))
                    answer = read_message(sock)
            except OSError as exc:
                answer = f"error: {type(exc).__name__}"
            os.write(write_end, answer.encode())
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    try:
        with os.fdopen(read_end, "rb") as pipe:
            answer = pipe.read().decode()
    finally:
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return answer


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="becoming another user needs root")


@needs_root
def test_a_foreign_uid_cannot_quit(serve, strategy, public_dir):
    path = public_dir / "quit.sock"
    server = serve("message", "--allow-quit", "--socket-mode", "666", strategy=strategy, bind=f"unix:{path}")
    answer = as_nobody(str(path), "quit")
    assert answer == "quit refused (only the server's own user or root may stop it)"
    assert wait_for(lambda: "quit refused for unix[pid=" in server.log() and f",uid={NOBODY}]" in server.log()), \
        server.log()
    assert as_nobody(str(path), "still here") == "ok"
    assert server.proc.poll() is None
    with server.connect() as sock:  # the server's own user may
        sock.sendall(encode_message("quit"))
        assert read_message(sock) == "bye"
    assert server.proc.wait(30) == 0, server.log()


@needs_root
def test_socket_mode_decides_who_may_connect(serve, public_dir):
    path = public_dir / "private.sock"
    serve("message", "--socket-mode", "600", bind=f"unix:{path}")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert as_nobody(str(path), "hello") == "error: PermissionError"


@pytest.mark.parametrize("server", ["message", "echo", "http", "chat"])
def test_socket_mode_for_every_server(serve, strategy, server, tmp_path):
    if server == "chat" and strategy not in (ChatServer.supported_strategies or {strategy}):
        pytest.skip("chat runs where every connection shares one process")
    path = tmp_path / f"{server}.sock"
    old_umask = os.umask(0o077)  # the mode given is the mode had, whatever the umask
    try:
        serve(server, "--socket-mode", "0o660", strategy=strategy, bind=f"unix:{path}")
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o660


@pytest.mark.parametrize(("args", "message"), [
    (["--allow-quit"], "--allow-quit needs a Unix socket"),
    (["--socket-mode", "600"], "a socket mode is for the Unix socket file"),
    (["--socket-mode", "800", "--bind", "unix:/tmp/x.sock"], "must be octal permission bits"),
    (["--socket-mode", "1777", "--bind", "unix:/tmp/x.sock"], "must be octal permission bits"),
])
def test_quit_and_socket_mode_misuse_is_a_usage_error(args, message):
    argv = [sys.executable, "-m", "framework", "serve", "message", "--bind", "127.0.0.1:0", *args]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30, env=child_env())
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_a_socket_file_is_never_wider_than_its_mode(tmp_path):
    """Born with at most the mode (fchmod before bind), then given exactly it; the umask is left alone."""
    for umask, mode in [(0o022, 0o666), (0o000, 0o600), (0o077, 0o660)]:
        old = os.umask(umask)
        try:
            sock = bind_socket(parse_address(f"unix:{tmp_path}/m{mode:o}.sock"), socket_mode=mode)
            assert os.umask(umask) == umask
        finally:
            os.umask(old)
        with sock:
            assert stat.S_IMODE(os.stat(f"{tmp_path}/m{mode:o}.sock").st_mode) == mode


def test_the_peer_of_a_unix_connection_is_named_by_pid_and_uid(tmp_path):
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(f"{tmp_path}/p.sock")
        listener.listen()
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(f"{tmp_path}/p.sock")
            conn, addr = listener.accept()
            with conn:
                assert format_peer(socket.AF_UNIX, addr, conn) == f"unix[pid={os.getpid()},uid={os.geteuid()}]"
