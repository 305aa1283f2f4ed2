"""A message server: length-prefixed text messages, each one logged (best over a Unix socket).

Wire format, both directions: a 4-byte big-endian length, then that many
bytes of UTF-8 text.  Every message is logged (``message from PEER: TEXT``)
and answered with ``ok``.  The message ``quit`` stops the whole server —
answered ``bye`` — but only when it was started with ``--allow-quit``;
otherwise it is answered ``quit refused`` and logged like any other.

``--allow-quit`` needs a Unix socket (a usage error otherwise: on TCP any
local user could stop the server), and is honoured only for a peer the
kernel says (``SO_PEERCRED``) runs as the server's own user or root;
anyone else is refused and logged with their pid and uid.  Who may
connect at all is the socket file's mode: ``--socket-mode 600``.

Stopping works under every strategy: in the serving process it is
:meth:`Server.shutdown` (``wait=False``: the caller is inside a connection
the server would wait for); in a forked child or pre-forked worker, which
cannot stop its parent by itself, it is SIGTERM to the process that started
the server, which stops gracefully as on any SIGTERM.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import struct
from collections.abc import Callable

from framework import Protocol, Server
from framework.address import peer_credentials
from framework.argtypes import positive_int
from framework.subinterpreters import in_main_interpreter

log = logging.getLogger("forkthread")

#: The length prefix: unsigned 32-bit, network byte order.
HEADER = struct.Struct("!I")
#: Longest message accepted by default; a longer one ends the connection.
DEFAULT_MAX_MESSAGE = 64 * 1024
QUIT = "quit"
#: Why a ``quit`` is refused when the server was not started with ``--allow-quit``.
NOT_ALLOWED = "start the server with --allow-quit"
#: Why it is refused to a peer that is neither the server's user nor root.
NOT_YOURS = "only the server's own user or root may stop it"


def encode_message(text: str) -> bytes:
    """One message on the wire: length prefix and UTF-8 text."""
    data = text.encode("utf-8")
    return HEADER.pack(len(data)) + data


class MessageProtocol(Protocol):
    """Splits the byte stream into messages, logs each, answers it, honours ``quit`` when allowed."""

    def __init__(self, max_message: int = DEFAULT_MAX_MESSAGE, quit: Callable[[], None] | None = None,
                 refusal: str = NOT_ALLOWED) -> None:
        self.max_message = max_message
        self.quit = quit
        #: What a ``quit`` this connection may not send is answered.
        self.refusal = refusal
        self._buffer = bytearray()

    def data_received(self, data: bytes) -> None:
        """Handle every complete message in the buffer."""
        self._buffer += data
        while len(self._buffer) >= HEADER.size and not self.transport.is_closing():
            (length,) = HEADER.unpack_from(self._buffer)
            if length > self.max_message:
                log.warning("message from %s: %d bytes announced, limit %d: closing", self.transport.peer,
                            length, self.max_message)
                self.transport.write(encode_message(f"error: message longer than {self.max_message} bytes"))
                self.transport.close()
                return
            if len(self._buffer) < HEADER.size + length:
                return
            body = bytes(self._buffer[HEADER.size:HEADER.size + length])
            del self._buffer[:HEADER.size + length]
            self.message_received(body)

    def between_messages(self) -> bool:
        """No message half received."""
        return not self._buffer

    def message_received(self, body: bytes) -> None:
        """Log one message and answer it."""
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            log.warning("message from %s: not UTF-8: closing", self.transport.peer)
            self.transport.write(encode_message("error: messages are UTF-8 text"))
            self.transport.close()
            return
        # repr() keeps a message with newlines or escape codes on one honest log line.
        log.info("message from %s: %s", self.transport.peer, repr(text)[1:-1])
        if text.strip() == QUIT:
            if self.quit is not None:
                log.info("quit requested by %s: stopping the server", self.transport.peer)
                self.transport.write(encode_message("bye"))
                self.transport.close()
                self.quit()
                return
            if self.refusal != NOT_ALLOWED:
                log.warning("quit refused for %s: %s", self.transport.peer, self.refusal)
            self.transport.write(encode_message(f"quit refused ({self.refusal})"))
            return
        self.transport.write(encode_message("ok"))

    def eof_received(self) -> bool | None:
        """Note a truncated last message; then close."""
        if self._buffer:
            log.warning("message from %s: connection ended inside a message (%d bytes)", self.transport.peer,
                        len(self._buffer))
        return None


class MessageServer(Server):
    """Logs length-prefixed text messages; ``allow_quit=True`` lets a ``quit`` message stop it."""

    name = "message"
    description = "length-prefixed text messages, each logged; 'quit' stops it with --allow-quit"
    default_port = 8015

    def __init__(self, *args: object, allow_quit: bool = False, max_message: int = DEFAULT_MAX_MESSAGE,
                 **kwargs: object) -> None:
        self.allow_quit = allow_quit
        self.max_message = max_message
        self._master_pid = os.getpid()
        self._uid = os.geteuid()
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        if allow_quit and not self.requested_address.is_unix:
            self.server_close()
            raise ValueError("--allow-quit needs a Unix socket (--bind unix:PATH): on TCP any local user"
                             " could stop the server")

    def protocol_factory(self) -> MessageProtocol:
        """A protocol that refuses ``quit``: :meth:`admit` lets it through for a peer who may stop us."""
        return MessageProtocol(self.max_message)

    def admit(self, sock: socket.socket, peer: str) -> Protocol | None:
        """Admit as every server does; then, with ``--allow-quit``, let ``quit`` stop us if the peer may."""
        protocol = super().admit(sock, peer)
        if isinstance(protocol, MessageProtocol) and self.allow_quit:
            if self.may_quit(peer_credentials(sock)):
                protocol.quit = self.request_quit
            else:
                protocol.refusal = NOT_YOURS
        return protocol

    def may_quit(self, credentials: tuple[int, int, int] | None) -> bool:
        """Whether a peer with these ``(pid, uid, gid)`` may stop the server: our own user, or root."""
        return credentials is not None and credentials[1] in (self._uid, 0)

    def request_quit(self) -> None:
        """Stop the whole server gracefully, from whichever process or thread serves the connection."""
        if os.getpid() == self._master_pid and in_main_interpreter():
            self.shutdown(wait=False)
        else:
            # A forked child, a pre-forked worker or a sub-interpreter: the master (the main
            # interpreter) owns the lifecycle; tell it as a service manager would.
            os.kill(self._master_pid, signal.SIGTERM)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """``--allow-quit`` and ``--max-message``."""
        parser.add_argument("--allow-quit", action="store_true",
                            help="let a 'quit' message stop the server (a unix:PATH address only; from a peer"
                                 " running as the server's own user or root)")
        parser.add_argument("--max-message", type=positive_int, default=DEFAULT_MAX_MESSAGE, metavar="BYTES",
                            help="longest message accepted (default: %(default)s)")

    @classmethod
    def options_from_arguments(cls, args: argparse.Namespace) -> dict[str, object]:
        """Pass the options on."""
        return {"allow_quit": args.allow_quit, "max_message": args.max_message}
