"""A multi-user line chat: every line a client sends goes to every other client.

Joins and leaves are announced to the room.  Each client has a bounded
outbox (:mod:`framework.outbox`); a client that does not read while the
room talks fills it and is dropped with a notice, so a slow receiver never
holds up a sender or the room (under threading a talker may wait up to
0.2 s, once, for a full receiver's sender thread: see docs/servers/chat.md).  The room is shared state, so the server
runs only where every connection lives in one process: ``poll`` and
``threading``.

Wire format (UTF-8 text, ``\\n``-terminated lines; ``\\r\\n`` accepted)::

    * welcome guest3 (2 others here)          to the new client
    * guest3 joined                            to everyone else
    guest1: hello                              a line from guest1
    * guest1 is now alice                      after "/nick alice"
    * guest2 left                              the client went away
    * guest4 was dropped (not reading)         its outbox overflowed
"""

from __future__ import annotations

import argparse
import itertools
import logging
import re
import threading

from framework import Protocol, Server, Transport
from framework.argtypes import positive_int
from framework.outbox import DEFAULT_SEND_TIMEOUT, Outbox, open_outbox

log = logging.getLogger("forkthread")

#: Bytes that may wait for one client before it is dropped.
DEFAULT_MAX_BUFFER = 256 * 1024
#: The longest line a client may send; a longer one ends its connection.
MAX_LINE = 4096

_NICK = re.compile(r"^[\w.-]{1,32}$")


class ChatRoom:
    """The members of one room and the broadcasts among them.  Thread-safe.

    A re-entrant lock: under the poll strategy, a write that finds a peer
    gone ends that peer's connection on the spot, and its ``connection_lost``
    (which leaves the room and announces it) runs inside our broadcast.
    """

    def __init__(self) -> None:
        self._members: dict[ChatProtocol, Outbox] = {}
        self._lock = threading.RLock()
        self._numbers = itertools.count(1)

    def __len__(self) -> int:
        return len(self._members)

    def join(self, member: ChatProtocol, outbox: Outbox) -> None:
        """Add *member*, greet it and announce it to the others."""
        with self._lock:
            member.name = f"guest{next(self._numbers)}"
            others = len(self._members)
            self._members[member] = outbox
        outbox.put(f"* welcome {member.name} ({others} others here)\n".encode())
        self.broadcast(f"* {member.name} joined\n".encode(), sender=member)

    def leave(self, member: ChatProtocol, reason: str = "left") -> None:
        """Remove *member* (idempotent) and announce why."""
        with self._lock:
            if self._members.pop(member, None) is None:
                return
        self.broadcast(f"* {member.name} {reason}\n".encode())

    def broadcast(self, line: bytes, sender: ChatProtocol | None = None) -> None:
        """Queue *line* for every member but *sender*; drop those whose outbox is full."""
        with self._lock:
            recipients = [(member, outbox) for member, outbox in self._members.items() if member is not sender]
        overflowed = [member for member, outbox in recipients if not outbox.put(line)]
        for member in overflowed:
            self.drop(member)

    def drop(self, member: ChatProtocol) -> None:
        """Disconnect a member that does not keep up, telling it (if it can hear) and the room."""
        with self._lock:
            outbox = self._members.get(member)
        if outbox is None:
            return
        log.info("chat: dropping %s (%s): more than %d bytes waiting", member.name, member.peer, outbox.limit)
        self.leave(member, "was dropped (not reading)")
        outbox.drop(b"* you were dropped: not reading fast enough\n")


class ChatProtocol(Protocol):
    """One chat client: splits its input into lines and hands them to the room."""

    def __init__(self, room: ChatRoom, max_buffer: int = DEFAULT_MAX_BUFFER,
                 send_timeout: float = DEFAULT_SEND_TIMEOUT) -> None:
        self.room = room
        self.max_buffer = max_buffer
        self.send_timeout = send_timeout
        self.name = "?"
        self.peer = "?"
        self.outbox: Outbox | None = None
        self._partial = b""

    def connection_made(self, transport: Transport) -> None:
        """Open this client's outbox and join the room."""
        super().connection_made(transport)
        self.peer = transport.peer
        self.outbox = open_outbox(transport, self.max_buffer, self.send_timeout)
        self.room.join(self, self.outbox)

    def data_received(self, data: bytes) -> None:
        """Relay every complete line; keep a partial one for later."""
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        if len(self._partial) > MAX_LINE:
            self._say(f"* line longer than {MAX_LINE} bytes: goodbye\n".encode())
            self.transport.close()
            return
        for raw in lines:
            self.line_received(raw.rstrip(b"\r"))

    def line_received(self, raw: bytes) -> None:
        """Handle one line: a ``/nick NAME`` command or a message for the room."""
        text = raw.decode("utf-8", errors="replace")
        if text.startswith("/nick "):
            self._rename(text[len("/nick "):].strip())
        elif text:
            self.room.broadcast(f"{self.name}: {text}\n".encode(), sender=self)

    def _rename(self, new: str) -> None:
        if not _NICK.match(new):
            self._say(b"* a nick is 1-32 letters, digits, '.', '-' or '_'\n")
            return
        old, self.name = self.name, new
        self.room.broadcast(f"* {old} is now {new}\n".encode())

    def _say(self, line: bytes) -> None:
        if self.outbox is not None:
            self.outbox.put(line)

    def connection_lost(self, exc: BaseException | None) -> None:
        """Leave the room (announced) and release the outbox."""
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

    def __init__(self, *args: object, max_buffer: int = DEFAULT_MAX_BUFFER, **kwargs: object) -> None:
        self.room = ChatRoom()
        self.max_buffer = max_buffer
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def protocol_factory(self) -> ChatProtocol:
        """A client of this server's room."""
        return ChatProtocol(self.room, self.max_buffer, self.timeout or DEFAULT_SEND_TIMEOUT)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """``--max-buffer``."""
        parser.add_argument("--max-buffer", type=positive_int, default=DEFAULT_MAX_BUFFER, metavar="BYTES",
                            help="drop a client with more than this waiting for it (default: %(default)s)")

    @classmethod
    def options_from_arguments(cls, args: argparse.Namespace) -> dict[str, object]:
        """Pass ``--max-buffer`` on."""
        return {"max_buffer": args.max_buffer}
