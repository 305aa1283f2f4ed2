"""The chat server: relaying among clients, joins and leaves, slow receivers dropped, strategies refused."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading

import pytest

from framework.strategies import STRATEGIES
from framework.testing import RecordingTransport, feed
from servers.chat import ChatProtocol, ChatRoom, ChatServer
from tests.support import child_env, recv_all

SUPPORTED = ChatServer.supported_strategies


def chat_strategy(strategy: str) -> str:
    if strategy not in SUPPORTED:
        pytest.skip(f"chat refuses strategy {strategy} (tested in test_chat_refuses_other_strategies)")
    return strategy


class Client:
    """A line-oriented chat client over a real socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.file = sock.makefile("rb")

    def say(self, line: str) -> None:
        self.sock.sendall(line.encode() + b"\n")

    def read_line(self) -> str:
        line = self.file.readline()
        assert line.endswith(b"\n"), f"connection ended: {line!r}"
        return line.decode().rstrip("\n")

    def read_until(self, wanted: str, limit: int = 100_000) -> list[str]:
        seen = []
        for _ in range(limit):
            line = self.read_line()
            seen.append(line)
            if line == wanted:
                return seen
        raise AssertionError(f"{wanted!r} not seen in {seen[-5:]}")

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def join(server, count: int) -> list[Client]:
    """Connect *count* clients one after another, each seeing its welcome first."""
    clients = []
    for index in range(count):
        client = Client(server.connect(timeout=20))
        assert client.read_line() == f"* welcome guest{index + 1} ({index} others here)"
        for earlier in clients:
            assert earlier.read_line() == f"* guest{index + 1} joined"
        clients.append(client)
    return clients


def test_chat_relays_lines_among_three_clients(serve, strategy):
    server = serve("chat", "--graceful-timeout", "2", strategy=chat_strategy(strategy))
    a, b, c = join(server, 3)
    try:
        a.say("hello from a")
        assert b.read_line() == "guest1: hello from a"
        assert c.read_line() == "guest1: hello from a"
        b.say("/nick bob")
        assert a.read_line() == c.read_line() == "* guest2 is now bob"
        assert b.read_line() == "* guest2 is now bob"
        b.say("hi a\r")  # CRLF clients are welcome
        c.say("and c")
        assert sorted([a.read_line(), a.read_line()]) == ["bob: hi a", "guest3: and c"]
        assert c.read_line() == "bob: hi a" and b.read_line() == "guest3: and c"
        b.close()
        assert a.read_until("* bob left")[-1] == "* bob left"
        assert c.read_until("* bob left")[-1] == "* bob left"
    finally:
        for client in (a, b, c):
            client.close()


def test_chat_survives_a_client_that_never_reads(serve, strategy):
    server = serve("chat", "--max-buffer", "65536", "--graceful-timeout", "2", "--stall-timeout", "2",
                   strategy=chat_strategy(strategy))
    a, b, c = join(server, 3)
    lazy = socket.socket()
    lazy.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window: it fills fast
    lazy.settimeout(20)
    host, _, port = server.address.rpartition(":")
    lazy.connect((host, int(port)))
    for reader in (a, b, c):
        assert reader.read_line() == "* guest4 joined"
    line = "x" * 1000
    notices: list[str] = []
    try:
        # a talks in bursts; b and c read every burst (they keep up); lazy never reads.  Its
        # kernel buffers and its 64 KiB outbox fill, and it is dropped; nobody waits for it.
        for _ in range(400):
            a.sock.sendall(f"{line}\n".encode() * 20)
            for reader in (b, c):
                received = 0
                while received < 20:
                    text = reader.read_line()
                    if text == f"guest1: {line}":
                        received += 1
                    else:
                        notices.append(text)
            if "* guest4 was dropped (not reading)" in notices:
                break
        else:
            raise AssertionError("lazy client not dropped after 400 bursts of 20 lines")
        assert notices == ["* guest4 was dropped (not reading)"] * 2
        assert a.read_line() == "* guest4 was dropped (not reading)"
        # The room still works after the drop, and the lazy client's connection has ended.
        c.say("still here")
        assert a.read_line() == b.read_line() == "guest3: still here"
        lazy.settimeout(20)
        tail = recv_all(lazy)
        assert tail.startswith(b"* welcome guest4")  # what fit in its buffers, then end-of-file
    finally:
        for client in (a, b, c):
            client.close()
        lazy.close()


def test_chat_flood_reaches_readers_while_a_lazy_client_is_dropped(serve, strategy):
    server = serve("chat", "--graceful-timeout", "2", "--stall-timeout", "2", strategy=chat_strategy(strategy))
    a, b, c = join(server, 3)
    host, _, port = server.address.rpartition(":")
    lazy = socket.socket()
    lazy.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    lazy.connect((host, int(port)))
    for reader in (a, b, c):
        assert reader.read_line() == "* guest4 joined"
    line = "y" * 1000
    results: dict[str, list[str]] = {}
    dropped = {"b": threading.Event(), "c": threading.Event()}

    def read_all(name: str, client: Client) -> None:
        lines = results[name] = []
        while True:
            text = client.read_line()
            lines.append(text)
            if text == "* guest4 was dropped (not reading)":
                dropped[name].set()
            if text == "guest1: end":
                return

    readers = [threading.Thread(target=read_all, args=(name, client)) for name, client in (("b", b), ("c", c))]
    sent = 0
    try:
        for thread in readers:
            thread.start()
        # Talk as fast as the server takes it, while b and c read in their own threads, until the
        # lazy client's kernel buffers and outbox are full and it is dropped (bounded: 64 MB).
        while not all(event.is_set() for event in dropped.values()) and sent < 64_000:
            a.sock.sendall(f"{line}\n".encode() * 500)
            sent += 500
        a.say("end")
        for thread in readers:
            thread.join(60)
        for name in ("b", "c"):
            assert dropped[name].is_set(), f"lazy client not dropped after {sent} lines"
            assert results[name].count(f"guest1: {line}") == sent, name  # readers that keep up lose nothing
    finally:
        for client in (a, b, c):
            client.close()
        lazy.close()


def test_chat_refuses_other_strategies(strategy):
    if strategy in SUPPORTED:
        pytest.skip(f"chat runs under {strategy}")
    result = subprocess.run(
        [sys.executable, "-m", "framework", "serve", "chat", "--bind", "127.0.0.1:0", "--strategy", strategy],
        capture_output=True, text=True, env=child_env(), timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("forkthread: error: server 'chat' does not run under")
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_chat_refuses_forking_with_one_line_error():
    if "forking" not in STRATEGIES:
        pytest.skip("the forking strategy is not registered")
    result = subprocess.run(
        [sys.executable, "-m", "framework", "serve", "chat", "--bind", "127.0.0.1:0", "--strategy", "forking"],
        capture_output=True, text=True, env=child_env(), timeout=30,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr == ("forkthread: error: server 'chat' does not run under strategy 'forking'"
                             " (supported: poll, threading)\n")
    assert result.stdout == ""


# -- the room without sockets --------------------------------------------------------------


def make_member(room: ChatRoom, peer: str, max_buffer: int = 1000):
    transport = RecordingTransport(peer)
    member = ChatProtocol(room, max_buffer=max_buffer)
    member.connection_made(transport)
    return member, transport


def test_room_relays_lines_fed_one_byte_at_a_time():
    room = ChatRoom()
    a, ta = make_member(room, "a")
    _b, tb = make_member(room, "b")
    feed(a, b"hi\r\nthere\n", chunk_size=1)
    assert tb.output() == b"* welcome guest2 (1 others here)\nguest1: hi\nguest1: there\n"
    assert ta.output() == b"* welcome guest1 (0 others here)\n* guest2 joined\n"
    a.connection_lost(None)
    assert tb.output().endswith(b"* guest1 left\n") and len(room) == 1


def test_room_drops_a_member_that_takes_nothing_while_the_talker_waits():
    class Stuck(RecordingTransport):
        def get_extra_info(self, name, default=None):
            return sum(map(len, self.chunks)) if name == "write_buffer_size" else default

    room = ChatRoom()
    a = ChatProtocol(room, stall_timeout=0.0)
    talker = RecordingTransport("a")
    a.connection_made(talker)
    stuck = ChatProtocol(room, max_buffer=200)
    transport = Stuck("stuck")
    stuck.connection_made(transport)
    for _ in range(10):
        feed(a, b"y" * 30 + b"\n")
    # Past half its buffer the talker is paused, not the reader dropped...
    assert talker.paused and not transport.aborted and len(room) == 2
    a.deadline_expired()  # ...until the reader has taken nothing for the stall timeout
    assert transport.aborted and len(room) == 1 and not talker.paused
    assert talker.output().count(b"* guest2 was dropped (not reading)\n") == 1
    stuck.connection_lost(ConnectionAbortedError())
    assert len(room) == 1


def test_overlong_line_ends_the_connection():
    room = ChatRoom()
    a, ta = make_member(room, "a")
    feed(a, b"z" * 5000)
    assert ta.closed and b"line longer than" in ta.output()
