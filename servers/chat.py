"""A multi-user line chat: every line a client sends goes to every other client.

Joins and leaves are announced to the room.  Each client has a bounded
outbox (:mod:`framework.outbox`).  A talker faster than its readers is
slowed, not they: while a reader has more than half its ``--max-buffer``
waiting, the talker's next lines wait (under poll its connection is not
read, ``Transport.pause_reading``; under threading its thread waits in
the outbox), so its own kernel buffers fill and its ``send`` blocks.  Only
a reader that takes nothing for ``--stall-timeout`` seconds is dropped with
a notice.  The room is shared state, so the server runs only where every
connection lives in one process: ``poll`` and ``threading``.

What reaches a terminal is text, never commands to it: every control
character a client sends (C0 with CR and TAB, ESC and so CSI/OSC
sequences, BEL, BS, DEL, C1) and the bidirectional overrides are shown
escaped (``\\x1b``) by :func:`printable`, on relay and in ``forkthread
client chat``.  A line is at most :data:`MAX_LINE` bytes, whole lines as well
as an unfinished one.  Nicknames are unique once folded (NFKC, case, and
Cyrillic and Greek letters that look Latin: :func:`nick_key`), and may not
mix scripts, so nobody can pass for someone else.

Wire format (UTF-8 text, ``\\n``-terminated lines; ``\\r\\n`` accepted)::

    * welcome guest3 (2 others here)          to the new client
    * guest3 joined                            to everyone else
    guest1: hello                              a line from guest1
    * guest1 is now alice                      after "/nick alice"
    * guest2 left                              the client went away
    * guest4 was dropped (not reading)         it took nothing for --stall-timeout seconds
"""

from __future__ import annotations

import argparse
import codecs
import itertools
import logging
import re
import threading
import unicodedata

from framework import Protocol, Server, Transport
from framework.argtypes import duration, positive_int
from framework.outbox import DEFAULT_SEND_TIMEOUT, DEFAULT_STALL_TIMEOUT, Outbox, open_outbox

log = logging.getLogger("forkthread")

#: Bytes that may wait for one client before it is dropped.
DEFAULT_MAX_BUFFER = 256 * 1024
#: The longest line a client may send (without its line end); a longer one ends its connection.
MAX_LINE = 4096
#: How often a talker paused for a congested room looks again (event loop).
RECHECK = 0.05

_NICK = re.compile(r"^[\w.-]{1,32}$")

# -- what reaches a terminal ------------------------------------------------------------------

#: Characters a terminal obeys rather than shows: C0 (with CR, TAB, ESC, BEL, BS), DEL, C1, and the
#: bidirectional embeddings, overrides and isolates ("Trojan Source", CVE-2021-42574).
_COMMANDS = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _escaped(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str) -> str:
    """*text* with every character a terminal would obey shown escaped (``\\x1b``, ``\\u202e``)."""
    return _COMMANDS.sub(_escaped, text)


class PrintableLines:
    """Bytes of lines in, the same lines out with :func:`printable` applied: for a client's terminal.

    Decodes incrementally, so a character split between two reads stays one
    character; invalid UTF-8 becomes U+FFFD.  Line feeds pass (they end lines).
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def __call__(self, data: bytes) -> bytes:
        """What to show of *data*."""
        text = self._decoder.decode(data)
        return "\n".join(printable(part) for part in text.split("\n")).encode("utf-8")


# -- who is who ---------------------------------------------------------------------------------

#: Cyrillic and Greek letters drawn like Latin ones (after case folding), by what they pass for;
#: then the ASCII look-alikes (0 and o; 1, l, | and I, which folds to i; _ and -).
_CONFUSABLE = str.maketrans(
    "\u0430\u0432\u0441\u0501\u0435\u0451\u04bb\u0456\u0457\u0458\u043a\u04cf\u043c\u043d"
    "\u043e\u0440\u051b\u0455\u0442\u0443\u0475\u051d\u0445\u04af\u0437\u044c\u0461\u043f\u0433"
    "\u03b1\u03b2\u03b5\u03b7\u03b9\u03ba\u03bd\u03bf\u03c1\u03c4\u03c5\u03c7\u03b3\u03c9"
    "\u03bc\u03f2\u03f3"
    "01l|_",
    "abcdeehiijkimhopqstyvwxy3bwnr"
    "abenikvoptuxywucj"
    "oiii-",
)
#: Scripts that one language writes together (Japanese): one script for the mixing rule.
_SAME_SCRIPT = {"HIRAGANA": "CJK", "KATAKANA": "CJK", "HANGUL": "CJK"}


def nick_key(name: str) -> str:
    """What a nickname is told apart by: NFKC, case-folded, look-alikes mapped to the Latin letter.

    ``Admin``, ``ADMIN`` in full-width letters and ``admin`` with a Cyrillic ``a``
    (U+0430) have one key; so do ``adm1n`` and ``admin``.
    """
    folded = unicodedata.normalize("NFKC", name).casefold()
    return unicodedata.normalize("NFKC", folded.translate(_CONFUSABLE))


def scripts_of(name: str) -> set[str]:
    """The scripts of the letters in *name* (``{"LATIN", "CYRILLIC"}``); digits and marks have none."""
    scripts = set()
    for char in unicodedata.normalize("NFKC", name):
        if unicodedata.category(char).startswith("L"):
            script = unicodedata.name(char, "UNKNOWN").split(" ")[0]
            scripts.add(_SAME_SCRIPT.get(script, script))
    return scripts


class ChatRoom:
    """The members of one room, their names, and the broadcasts among them.  Thread-safe.

    A re-entrant lock: under the poll strategy, a write that finds a peer
    gone ends that peer's connection on the spot, and its ``connection_lost``
    (which leaves the room and announces it) runs inside our broadcast.
    """

    def __init__(self) -> None:
        self._members: dict[ChatProtocol, Outbox] = {}
        #: Who holds each name, by :func:`nick_key`.
        self._names: dict[str, ChatProtocol] = {}
        self._lock = threading.RLock()
        self._numbers = itertools.count(1)

    def __len__(self) -> int:
        return len(self._members)

    def join(self, member: ChatProtocol, outbox: Outbox) -> None:
        """Add *member* under a free guest name, greet it and announce it to the others."""
        with self._lock:
            name = next(f"guest{n}" for n in self._numbers if nick_key(f"guest{n}") not in self._names)
            member.name = name
            self._names[nick_key(name)] = member
            others = len(self._members)
            self._members[member] = outbox
        outbox.put(f"* welcome {member.name} ({others} others here)\n".encode())
        self.broadcast(f"* {member.name} joined\n".encode(), sender=member)

    def rename(self, member: ChatProtocol, new: str) -> str | None:
        """Give *member* the name *new*; None when done, else why not (taken, or mixing scripts)."""
        key = nick_key(new)
        with self._lock:
            holder = self._names.get(key)
            if holder is not None and holder is not member:
                if holder.name.casefold() == new.casefold():
                    return f"nick refused: {new} is taken"
                return f"nick refused: {new} looks like {holder.name}, which is taken"
            scripts = scripts_of(new)
            if len(scripts) > 1:
                return f"nick refused: {new} mixes scripts ({' and '.join(sorted(s.title() for s in scripts))})"
            old = member.name
            self._names.pop(nick_key(old), None)
            self._names[key] = member
            member.name = new
        self.broadcast(f"* {old} is now {new}\n".encode())
        return None

    def leave(self, member: ChatProtocol, reason: str = "left") -> None:
        """Remove *member* (idempotent) and announce why."""
        with self._lock:
            if self._members.pop(member, None) is None:
                return
            if self._names.get(nick_key(member.name)) is member:
                del self._names[nick_key(member.name)]
        self.broadcast(f"* {member.name} {reason}\n".encode())

    def broadcast(self, line: bytes, sender: ChatProtocol | None = None) -> None:
        """Queue *line* for every member but *sender*; drop those over their limit."""
        with self._lock:
            recipients = [(member, outbox) for member, outbox in self._members.items() if member is not sender]
        overflowed = [member for member, outbox in recipients if not outbox.put(line)]
        for member in overflowed:
            self.drop(member)

    def congested(self, sender: ChatProtocol) -> list[tuple[ChatProtocol, Outbox]]:
        """The members but *sender* with more than half their limit waiting: talkers hold back for them."""
        with self._lock:
            return [(member, outbox) for member, outbox in self._members.items()
                    if member is not sender and outbox.congested()]

    def drop(self, member: ChatProtocol) -> None:
        """Disconnect a member that does not read, telling it (if it can hear) and the room."""
        with self._lock:
            outbox = self._members.get(member)
        if outbox is None:
            return
        log.info("chat: dropping %s (%s): not reading", member.name, member.peer)
        self.leave(member, "was dropped (not reading)")
        outbox.drop(b"* you were dropped: not reading fast enough\n")


class ChatProtocol(Protocol):
    """One chat client: splits its input into lines and hands them to the room.

    Over the event loop, a line that leaves another member congested pauses
    this connection's reading; the lines already received wait here (at most
    one read's worth) until the room has room again.
    """

    def __init__(self, room: ChatRoom, max_buffer: int = DEFAULT_MAX_BUFFER,
                 send_timeout: float = DEFAULT_SEND_TIMEOUT, stall_timeout: float = DEFAULT_STALL_TIMEOUT) -> None:
        self.room = room
        self.max_buffer = max_buffer
        self.send_timeout = send_timeout
        self.stall_timeout = stall_timeout
        self.name = "?"
        self.peer = "?"
        self.outbox: Outbox | None = None
        self._input = bytearray()
        #: True while this talker waits for the room (its reading paused).
        self._holding = False

    def connection_made(self, transport: Transport) -> None:
        """Open this client's outbox and join the room."""
        super().connection_made(transport)
        self.peer = transport.peer
        self.outbox = open_outbox(transport, self.max_buffer, self.send_timeout, self.stall_timeout)
        self.room.join(self, self.outbox)

    def data_received(self, data: bytes) -> None:
        """Relay every complete line (as far as the room has room); keep the rest for later."""
        self._input += data
        self._relay()

    def _relay(self) -> None:
        pending = self._input
        while not self._holding and not self.transport.is_closing():
            end = pending.find(b"\n", 0, MAX_LINE + 2)  # room for the line, a CR and the LF
            line = bytes(pending[:end]).removesuffix(b"\r") if end >= 0 else None
            if line is None or len(line) > MAX_LINE:
                # Every line is held to the limit, finished or not (a whole one arrives in one read too).
                if line is not None or len(pending) > MAX_LINE + 1:
                    self._say(f"* line longer than {MAX_LINE} bytes: goodbye\n".encode())
                    self.transport.close()
                    pending.clear()
                return
            del pending[:end + 1]
            self.line_received(line)
            if self.outbox is not None and not self.outbox.waits_for_room and self.room.congested(self):
                self._hold()

    def _hold(self) -> None:
        """Stop reading this talker until the members it would write to have room (event loop)."""
        self._holding = True
        self.transport.pause_reading()
        self.transport.set_deadline(RECHECK)

    def deadline_expired(self) -> None:
        """While holding: drop members that take nothing; go on once none is congested."""
        if not self._holding:
            return
        congested = self.room.congested(self)
        for member, outbox in congested:
            if outbox.stalled_for() > self.stall_timeout:
                self.room.drop(member)
        if self.room.congested(self):
            self.transport.set_deadline(RECHECK)
            return
        self._holding = False
        self.transport.resume_reading()
        self._relay()

    def between_messages(self) -> bool:
        """No line half sent, none waiting for the room: a graceful stop may close the connection."""
        return not self._input and not self._holding

    def line_received(self, raw: bytes) -> None:
        """Handle one line: a ``/nick NAME`` command or a message for the room."""
        text = printable(raw.decode("utf-8", errors="replace"))
        if text.startswith("/nick "):
            self._rename(text[len("/nick "):].strip())
        elif text:
            self.room.broadcast(f"{self.name}: {text}\n".encode(), sender=self)

    def _rename(self, new: str) -> None:
        if not _NICK.match(new):
            self._say(b"* a nick is 1-32 letters, digits, '.', '-' or '_'\n")
            return
        refused = self.room.rename(self, new)
        if refused is not None:
            self._say(f"* {refused}\n".encode())

    def _say(self, line: bytes) -> None:
        if self.outbox is not None:
            self.outbox.put(line)

    def connection_lost(self, exc: BaseException | None) -> None:
        """Leave the room (announced) and release the outbox."""
        self._holding = False
        self.room.leave(self)
        if self.outbox is not None:
            # An orderly end (the client half-closed): what was queued for it still goes out.
            self.outbox.close(flush=exc is None)


class ChatServer(Server):
    """The chat room server: one :class:`ChatRoom` shared by every connection."""

    name = "chat"
    description = "multi-user line chat: every line goes to everyone else (poll, threading)"
    default_port = 8016
    #: Everyone in the room is connected at once, in one process: one event loop.
    default_strategy = "poll"
    supported_strategies = frozenset({"poll", "threading"})

    def __init__(self, *args: object, max_buffer: int = DEFAULT_MAX_BUFFER,
                 stall_timeout: float = DEFAULT_STALL_TIMEOUT, **kwargs: object) -> None:
        self.room = ChatRoom()
        self.max_buffer = max_buffer
        self.stall_timeout = stall_timeout
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def protocol_factory(self) -> ChatProtocol:
        """A client of this server's room."""
        return ChatProtocol(self.room, self.max_buffer, self.timeout or DEFAULT_SEND_TIMEOUT, self.stall_timeout)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """``--max-buffer`` and ``--stall-timeout``."""
        parser.add_argument("--max-buffer", type=positive_int, default=DEFAULT_MAX_BUFFER, metavar="BYTES",
                            help="bytes that may wait for a client; past half of it talkers are slowed"
                                 " (default: %(default)s)")
        parser.add_argument("--stall-timeout", type=duration, default=DEFAULT_STALL_TIMEOUT, metavar="SECONDS",
                            help="drop a client that takes nothing for this long while lines wait for it"
                                 " (default: %(default)s)")

    @classmethod
    def options_from_arguments(cls, args: argparse.Namespace) -> dict[str, object]:
        """Pass ``--max-buffer`` and ``--stall-timeout`` on."""
        return {"max_buffer": args.max_buffer, "stall_timeout": args.stall_timeout}
