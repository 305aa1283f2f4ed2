"""``wsgi.input``: the request body, read in by the connection before the application sees it.

The body is gathered by the connection's driver thread as it arrives
(decoded, when chunked) into a :class:`Spool`: memory up to
:data:`SPOOL_MEMORY` bytes, an anonymous temporary file beyond (waitress's
``inbuf_overflow``).  So a slow uploader holds a connection, not an
application's thread or process, and a body of any allowed size costs
bounded memory.  The application then reads a stream that ends where the
body ends (``wsgi.input_terminated``): reading "to the end" is always safe.

With ``Expect: 100-continue`` the application is called first, and the
first read asks for the body (the 100 goes out then: RFC 9110 section
10.1.1); an application that never reads never gets the body sent.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator

#: Body bytes kept in memory; beyond, the spool moves to a temporary file.
SPOOL_MEMORY = 1 << 20
#: Bytes read from the spool at a time by readline() and iteration.
_LINE_STEP = 8192


class BodyUnreadable(OSError):
    """The request body broke its framing or bound while the application read it: *status* (400, 413)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status


def _temporary_file() -> io.BufferedRandom:
    """An anonymous file in the temporary directory (not the tempfile module: see tests/test_architecture.py)."""
    directory = os.environ.get("TMPDIR") or "/tmp"
    try:
        fd = os.open(directory, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
    except (AttributeError, OSError):
        name = os.path.join(directory, f"forkthread-body-{os.getpid()}-{id(object())}")
        fd = os.open(name, os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_CLOEXEC, 0o600)
        os.unlink(name)
    return open(fd, "w+b")  # owned by the spool, closed with it


class Spool:
    """Bytes written once, in order, then read: memory first, a temporary file past :data:`SPOOL_MEMORY`."""

    __slots__ = ("_file", "_memory", "size")

    def __init__(self) -> None:
        self._memory = bytearray()
        self._file: io.BufferedRandom | None = None
        self.size = 0

    def write(self, data: bytes | bytearray) -> None:
        """Append *data*."""
        self.size += len(data)
        if self._file is not None:
            self._file.write(data)
            return
        self._memory += data
        if len(self._memory) > SPOOL_MEMORY:
            self._file = _temporary_file()
            self._file.write(self._memory)
            self._memory = bytearray()

    def reader(self) -> io.BufferedIOBase:
        """A stream of everything written (write no more after this)."""
        if self._file is None:
            return io.BytesIO(self._memory)
        self._file.flush()
        self._file.seek(0)
        return self._file

    def close(self) -> None:
        """Release the temporary file, if any."""
        if self._file is not None:
            self._file.close()


class WsgiInput:
    """``wsgi.input`` over a spooled body; *fetch* gathers it on the first read (None: it is in already).

    ``read``, ``readline`` (with a size, PEP 3333's readline(hint)),
    ``readlines`` and iteration, as PEP 3333 asks.  Reads past the body's end
    return ``b""``.
    """

    __slots__ = ("_fetch", "_stream")

    def __init__(self, stream: io.BufferedIOBase | None, fetch: Callable[[], io.BufferedIOBase] | None = None) -> None:
        self._stream = stream
        self._fetch = fetch

    def _body(self) -> io.BufferedIOBase:
        if self._stream is None:
            fetch, self._fetch = self._fetch, None
            self._stream = fetch() if fetch is not None else io.BytesIO()
        return self._stream

    def read(self, size: int | None = -1) -> bytes:
        """Up to *size* bytes of the body (all that is left when negative or None)."""
        return self._body().read(-1 if size is None else size)

    def readline(self, size: int | None = -1) -> bytes:
        """One line (up to *size* bytes), its ``\\n`` included."""
        return self._body().readline(-1 if size is None else size)

    def readlines(self, hint: int = -1) -> list[bytes]:
        """The remaining lines."""
        return self._body().readlines(hint)

    def __iter__(self) -> Iterator[bytes]:
        body = self._body()
        while line := body.readline(_LINE_STEP):
            yield line


class EmptyInput:
    """``wsgi.input`` of a request without a body (one object shared by all of them: it has no state)."""

    __slots__ = ()

    def read(self, size: int | None = -1) -> bytes:
        """Nothing."""
        return b""

    def readline(self, size: int | None = -1) -> bytes:
        """Nothing."""
        return b""

    def readlines(self, hint: int = -1) -> list[bytes]:
        """No lines."""
        return []

    def __iter__(self) -> Iterator[bytes]:
        return iter(())


EMPTY_INPUT = EmptyInput()
