"""Chat against a hostile member (issue 25 item 5): terminal injection, impersonation, long lines, floods.

Each case was reproduced before the fix: CR, ESC/CSI/OSC, BEL and BS reached other clients raw;
`admin` with a Cyrillic a (U+0430) could pass for `admin` and names need not be unique; a 60,000-byte line sent
in one write was relayed whole; one client writing as fast as it could got three slower readers
dropped within 0.4 s.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time

import pytest

from framework.testing import RecordingTransport, feed
from servers.chat import MAX_LINE, ChatProtocol, ChatRoom, PrintableLines, nick_key, printable, scripts_of
from tests.support import child_env
from tests.test_chat import Client, chat_strategy, join

#: Control characters a terminal obeys: C0 with CR, BS, BEL, ESC (CSI, OSC), DEL, C1 (U+009B CSI), a bidi override.
HOSTILE = "a\rFAKE\x08\x07\x1b[2J\x1b]0;pwned\x07\x7f\u009b31m\u202eb\x00"
RAW = ("\r", "\x08", "\x07", "\x1b", "\x7f", "\u009b", "\u202e", "\x00")


def member(room: ChatRoom, peer: str) -> tuple[ChatProtocol, RecordingTransport]:
    protocol = ChatProtocol(room)
    transport = RecordingTransport(peer)
    protocol.connection_made(transport)
    return protocol, transport


# -- units: what is relayed ------------------------------------------------------------------------

def test_printable_escapes_every_command_a_terminal_obeys():
    shown = printable(HOSTILE)
    assert not any(char in shown for char in RAW)
    assert shown == "a\\x0dFAKE\\x08\\x07\\x1b[2J\\x1b]0;pwned\\x07\\x7f\\x9b31m\\u202eb\\x00"
    assert printable("héllo ✓ 日本") == "héllo ✓ 日本"


def test_control_characters_are_escaped_on_relay_fed_one_byte_at_a_time():
    room = ChatRoom()
    talker, _ = member(room, "a")
    _, reader = member(room, "b")
    feed(talker, HOSTILE.encode() + b"\r\n", chunk_size=1)
    relayed = reader.output().decode().split("\n")[-2]
    assert relayed.startswith("guest1: a\\x0dFAKE") and not any(char in relayed for char in RAW)


@pytest.mark.parametrize("size", [MAX_LINE + 1, 60_000])
def test_a_whole_line_over_the_limit_in_one_write_is_not_relayed(size):
    room = ChatRoom()
    talker, said = member(room, "a")
    _, reader = member(room, "b")
    feed(talker, b"before\n" + b"x" * size + b"\nafter\n")
    assert b"x" * 100 not in reader.output() and b"after" not in reader.output()
    assert b"guest1: before\n" in reader.output()
    assert said.closed and b"line longer than 4096 bytes" in said.output()


def test_a_line_at_the_limit_is_relayed_with_or_without_cr():
    room = ChatRoom()
    talker, said = member(room, "a")
    _, reader = member(room, "b")
    feed(talker, b"y" * MAX_LINE + b"\r\n" + b"z" * MAX_LINE + b"\n")
    assert not said.closed
    assert reader.output().endswith(b"guest1: " + b"y" * MAX_LINE + b"\nguest1: " + b"z" * MAX_LINE + b"\n")


# -- units: who is who ------------------------------------------------------------------------------

def test_nick_keys_fold_case_width_and_look_alikes():
    assert len({nick_key(name) for name in ["admin", "Admin", "ADMIN", "\uff41\uff44\uff4d\uff49\uff4e",
                                            "\u0430dmin", "\u0430\u0501\u043c\u0456\u043f"[:4] + "n",
                                            "adm1n", "AdmIn", "\u03b1dmin"]}) == 1
    assert nick_key("alice") != nick_key("bob")
    assert scripts_of("\u0430dmin") == {"LATIN", "CYRILLIC"} and scripts_of("\u0438\u0432\u0430\u043d") == {"CYRILLIC"}
    assert scripts_of("bob_2") == {"LATIN"} and len(scripts_of("\u3072\u30ab\u6f22")) == 1


@pytest.mark.parametrize(("wanted", "refusal"), [
    ("admin", "* nick refused: admin is taken\n"),
    ("ADMIN", "* nick refused: ADMIN is taken\n"),
    ("\u0430dmin", "* nick refused: \u0430dmin looks like admin, which is taken\n"),
    *[(name, f"* nick refused: {name} looks like admin, which is taken\n")
      for name in ("\u0430\u0501\u043c\u0456\u043f", "\uff41\uff44\uff4d\uff49\uff4e")],
    ("adm1n", "* nick refused: adm1n looks like admin, which is taken\n"),
    ("b\u043eb", "* nick refused: b\u043eb mixes scripts (Cyrillic and Latin)\n"),
])
def test_a_taken_or_confusable_nick_is_refused(wanted, refusal):
    room = ChatRoom()
    admin, _ = member(room, "a")
    feed(admin, b"/nick admin\n")
    mallory, said = member(room, "m")
    _, bystander = member(room, "b")
    feed(mallory, f"/nick {wanted}\n".encode())
    assert said.output().decode().endswith(refusal)
    assert mallory.name == "guest2" and b"is now" not in bystander.output()


def test_guest_names_never_collide_with_a_chosen_one():
    room = ChatRoom()
    first, _ = member(room, "a")
    feed(first, b"/nick guest2\n")
    second, _ = member(room, "b")
    assert second.name == "guest3"
    feed(first, b"/nick Guest1\n")  # its own old name, another case: fine
    assert first.name == "Guest1"


def test_a_freed_name_can_be_taken_again():
    room = ChatRoom()
    admin, _ = member(room, "a")
    feed(admin, b"/nick admin\n")
    admin.connection_lost(None)
    newcomer, said = member(room, "b")
    feed(newcomer, b"/nick Admin\n")
    assert newcomer.name == "Admin" and b"taken" not in said.output()


# -- units: who pays for a flood --------------------------------------------------------------------

def test_a_talker_waits_for_a_congested_reader_then_goes_on():
    class Slow(RecordingTransport):
        """A reader whose transport holds what it was given until drained."""
        held = 0

        def write(self, data):
            super().write(data)
            self.held += len(data)

        def get_extra_info(self, name, default=None):
            return self.held if name == "write_buffer_size" else default

    room = ChatRoom()
    talker = ChatProtocol(room)
    said = RecordingTransport("a")
    talker.connection_made(said)
    reader = ChatProtocol(room, max_buffer=1000)
    slow = Slow("slow")
    reader.connection_made(slow)
    feed(talker, b"".join(b"%03d " % n + b"w" * 95 + b"\n" for n in range(20)))
    assert said.paused and said.deadline is not None, "the talker is held, not the reader dropped"
    assert not slow.aborted and slow.output().count(b"guest1: ") < 20
    for _ in range(40):  # the reader reads, the talker's re-check lets it go on, until all 20 are through
        slow.held = 0
        talker.deadline_expired()
        if not said.paused:
            break
    assert not said.paused and not slow.aborted
    assert [line[8:11] for line in slow.output().split(b"\n") if line.startswith(b"guest1: ")] == \
        [b"%03d" % n for n in range(20)]


def test_printable_lines_keep_a_character_split_between_reads():
    show = PrintableLines()
    data = "é\x1b[31m\n✓\n".encode()
    shown = b"".join(show(data[i:i + 1]) for i in range(len(data)))
    assert shown.decode() == "é\\x1b[31m\n✓\n"


# -- a live server under every strategy chat runs under ---------------------------------------------

@pytest.fixture
def pair(serve, strategy):
    """Two clients in a live room (guest1, guest2), closed afterwards."""
    server = serve("chat", "--graceful-timeout", "2", strategy=chat_strategy(strategy))
    clients = join(server, 2)
    yield clients
    for client in clients:
        client.close()


def test_no_control_character_reaches_another_client(pair):
    a, b = pair
    a.sock.sendall(HOSTILE.encode() + b"\r\n")
    line = b.file.readline().decode()
    assert line.startswith("guest1: a\\x0dFAKE") and line.endswith("\n")
    assert not any(char in line for char in RAW)


def test_a_confusable_nick_is_refused_over_the_wire(pair):
    a, b = pair
    a.say("/nick admin")
    assert a.read_line() == b.read_line() == "* guest1 is now admin"
    b.say("/nick \u0430\u0501\u043c\u0456\u043f")
    assert b.read_line() == "* nick refused: \u0430\u0501\u043c\u0456\u043f looks like admin, which is taken"
    b.say("/nick \u0430dmin")
    assert b.read_line() == "* nick refused: \u0430dmin looks like admin, which is taken"
    b.say("/nick Admin")
    assert b.read_line() == "* nick refused: Admin is taken"
    b.say("still guest2")
    assert a.read_line() == "guest2: still guest2"


def test_a_60000_byte_line_in_one_write_is_not_relayed(pair):
    a, b = pair
    a.sock.sendall(b"L" * 60_000 + b"\n")
    assert a.read_line() == "* line longer than 4096 bytes: goodbye"
    assert b.read_line() == "* guest1 left"


def test_a_flooder_is_slowed_and_slow_readers_stay(serve, strategy):
    """One client writes as fast as it can; three readers that read slowly are never dropped, lose nothing."""
    server = serve("chat", "--graceful-timeout", "5", strategy=chat_strategy(strategy))
    flooder, *readers = join(server, 4)
    line = b"f" * 1000 + b"\n"
    counts = [0, 0, 0]
    problems: list[str] = []

    def read_slowly(index: int, client: Client) -> None:
        client.sock.settimeout(30)
        try:
            while True:
                text = client.file.readline()
                if not text.endswith(b"\n"):
                    problems.append(f"reader {index}: connection ended")
                    return
                if text == b"guest1: " + line:
                    counts[index] += 1
                    if counts[index] % 8 == 0:
                        time.sleep(0.01)  # honest, but slower than a flood: under 1 MB/s
                elif text == b"guest1: end\n":
                    return
                else:
                    problems.append(f"reader {index}: {text[:80]!r}")
        except OSError as exc:
            problems.append(f"reader {index}: {exc!r}")

    threads = [threading.Thread(target=read_slowly, args=(i, c)) for i, c in enumerate(readers)]
    for thread in threads:
        thread.start()
    sent = 0
    deadline = time.monotonic() + 2
    flooder.sock.settimeout(30)
    try:
        while time.monotonic() < deadline and sent < 200_000:  # bounded in time and bytes
            flooder.sock.sendall(line * 100)
            sent += 100
        flooder.say("end")
        for thread in threads:
            thread.join(60)
        assert not any(thread.is_alive() for thread in threads), "a reader never saw the end"
        assert problems == []
        assert counts == [sent] * 3, "slow readers lose nothing: the flooder waited for them"
    finally:
        for client in (flooder, *readers):
            client.close()
    assert "dropping" not in server.log()


def test_the_chat_client_shows_control_characters_escaped():
    """`forkthread client chat` against a server that relays raw bytes: the terminal gets text."""
    listener = socket.create_server(("127.0.0.1", 0))

    def hostile_server() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.sendall(b"* welcome you\n" + HOSTILE.encode() + b"\n\xe2\x9c")
            conn.sendall(b"\x93 done\n")

    thread = threading.Thread(target=hostile_server)
    thread.start()
    try:
        host, port = listener.getsockname()
        result = subprocess.run([sys.executable, "-m", "framework", "client", "chat", f"{host}:{port}"],
                                input=b"", capture_output=True, timeout=30, env=child_env())
    finally:
        thread.join(30)
        listener.close()
    assert result.returncode == 0, result.stderr
    shown = result.stdout.decode()
    assert not any(char in shown for char in RAW)
    assert shown.endswith("a\\x0dFAKE\\x08\\x07\\x1b[2J\\x1b]0;pwned\\x07\\x7f\\x9b31m\\u202eb\\x00\n✓ done\n")
