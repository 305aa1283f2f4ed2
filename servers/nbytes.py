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
_VIEW = memoryview(_CHUNK)
#: Answers up to this size are written as one bytes object, sliced (copied) from the chunk.
SMALL_ANSWER = 16384


class NBytesProtocol(Protocol):
    """Reads one ``COUNT\\n`` line, answers *COUNT* bytes, closes."""

    #: The request line read so far; None once it is answered (or refused).  Bytes, not
    #: a bytearray: the line nearly always comes in one read, which is then used as it is.
    _line: bytes | None = b""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_bytes = max_bytes

    def data_received(self, data: bytes) -> None:
        """Collect the request line; answer it as soon as it is complete."""
        line = self._line
        if line is None:
            return  # anything after the request line is ignored
        line += data  # at most MAX_REQUEST_LINE bytes are ever kept, so joining pieces stays cheap
        newline = line.find(b"\n")
        if newline < 0:
            if len(line) >= MAX_REQUEST_LINE:
                self._refuse(f"request line longer than {MAX_REQUEST_LINE} bytes")
            else:
                self._line = line
            return
        self._line = None
        text = line[:newline].strip()
        if not text.isdigit():
            self._refuse("expected a decimal byte count and a newline")
            return
        count = int(text)
        if count > self.max_bytes:
            self._refuse(f"count {count} above the limit of {self.max_bytes}")
            return
        transport = self.transport
        if count <= SMALL_ANSWER:  # the usual answer: one write of bytes (a copy this small costs less than a view)
            transport.write(_CHUNK[:count])
        else:
            self._send(count)
        transport.close()

    def between_messages(self) -> bool:
        """No request line half sent (once answered, the connection is closing anyway)."""
        return not self._line

    def _send(self, count: int) -> None:
        while count > 0:
            piece = min(count, len(_CHUNK))
            self.transport.write(_VIEW[:piece])
            count -= piece

    def _refuse(self, reason: str) -> None:
        self._line = None
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
