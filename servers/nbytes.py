"""nbytes: the client asks for a byte count, the server sends that many bytes and closes.

This is the server of UNIX Network Programming ch. 30 (the benchmark every
concurrency model there is measured with), with no RFC behind it.  The
exchange, byte for byte:

* the client sends a decimal count (ASCII digits, at most
  :data:`MAX_REQUEST_LINE` bytes) ended by ``\\n`` (``\\r\\n`` is accepted);
* the server sends exactly that many bytes (a repeating ``abc…`` pattern)
  and closes the connection.  ``0`` gives an empty answer.

Bad input (not a number, a count above ``--max-bytes``, a line too long)
gets one line starting ``error:`` and the connection is closed; a client
that closes before ending its line is let go quietly.
"""

from __future__ import annotations

import argparse

from framework import Protocol, Server

#: The longest request line accepted, newline included.
MAX_REQUEST_LINE = 32
#: The default largest count the server agrees to send (``--max-bytes``).
DEFAULT_MAX_BYTES = 64 << 20
#: Bytes are written in slices of this one shared buffer, never built per request.
_CHUNK = (bytes(range(ord("a"), ord("z") + 1)) * (65536 // 26 + 1))[:65536]


class NBytesProtocol(Protocol):
    """Reads one ``COUNT\\n`` line, answers *COUNT* bytes, closes."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self._line = bytearray()
        self._answered = False

    def data_received(self, data: bytes) -> None:
        """Collect the request line; answer it as soon as it is complete."""
        if self._answered:
            return  # anything after the request line is ignored
        self._line += data
        newline = self._line.find(b"\n")
        if newline < 0:
            if len(self._line) >= MAX_REQUEST_LINE:
                self._refuse(f"request line longer than {MAX_REQUEST_LINE} bytes")
            return
        self._answered = True
        text = bytes(self._line[:newline]).strip()
        if not text.isdigit():
            self._refuse("expected a decimal byte count and a newline")
            return
        count = int(text)
        if count > self.max_bytes:
            self._refuse(f"count {count} above the limit of {self.max_bytes}")
            return
        self._send(count)
        self.transport.close()

    def between_messages(self) -> bool:
        """No request line half sent (once answered, the connection is closing anyway)."""
        return not self._line

    def _send(self, count: int) -> None:
        view = memoryview(_CHUNK)
        while count > 0:
            piece = min(count, len(_CHUNK))
            self.transport.write(view[:piece])
            count -= piece

    def _refuse(self, reason: str) -> None:
        self._answered = True
        self.transport.write(f"error: {reason}\r\n".encode("ascii"))
        self.transport.close(linger=1.0)


class NBytesServer(Server):
    """Answer each ``COUNT\\n`` request with COUNT bytes (the UNP ch. 30 benchmark server)."""

    name = "nbytes"
    description = "UNP ch. 30 benchmark: client sends COUNT\\n, server sends COUNT bytes and closes"
    default_port = 8030

    def __init__(self, *args: object, max_bytes: int = DEFAULT_MAX_BYTES, **kwargs: object) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, not {max_bytes}")
        self.max_bytes = max_bytes
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def protocol_factory(self) -> NBytesProtocol:
        """A protocol bound by this server's ``max_bytes``."""
        return NBytesProtocol(self.max_bytes)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """``--max-bytes``."""
        parser.add_argument("--max-bytes", type=int, default=DEFAULT_MAX_BYTES, metavar="N",
                            help="largest count answered (default: %(default)s)")

    @classmethod
    def options_from_arguments(cls, args: argparse.Namespace) -> dict[str, object]:
        """Pass ``--max-bytes`` on."""
        return {"max_bytes": args.max_bytes}
