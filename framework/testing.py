"""Tools for testing protocols without sockets: a transport that records what is said.

A sans-I/O protocol is tested by feeding it bytes, in one piece and one byte
at a time, and looking at what it wrote::

    transport = RecordingTransport()
    protocol = EchoProtocol()
    protocol.connection_made(transport)
    feed(protocol, b"hello", chunk_size=1)
    assert transport.output() == b"hello"

and at random points, the same for the same seed (:func:`random_chunks`)::

    for seed in range(100):
        ...
        feed(protocol, request, seed=seed)
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import IO, Any

from framework.protocol import FileLike, Port, Protocol, Transport


class RecordingTransport(Transport):
    """A :class:`Transport` that keeps everything written, sendfile'd bytes included.

    ``sendfile`` reads the file segment at call time (as the kernel would),
    so :meth:`output` is exactly the byte stream a peer would receive.
    """

    def __init__(self, peer: str = "127.0.0.1:12345") -> None:
        self.chunks: list[bytes] = []
        self.closed = False
        self.aborted = False
        self.linger = 0.0
        self.deadline: float | None = None
        #: True between pause_reading() and resume_reading().
        self.paused = False
        self._peer = peer

    @property
    def peer(self) -> str:
        """The pretend peer address."""
        return self._peer

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """Nothing extra is known about a pretend connection."""
        return default

    def pause_reading(self) -> None:
        """Record that the protocol asked not to be fed (the test decides what to feed)."""
        self.paused = True

    def resume_reading(self) -> None:
        """Record that the protocol may be fed again."""
        self.paused = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Record *data* (dropped after close, like a real transport)."""
        if not self.is_closing():
            self.chunks.append(bytes(data))

    def sendfile(self, file: FileLike | IO[bytes], offset: int = 0, count: int | None = None) -> None:
        """Record the file segment's bytes."""
        if self.is_closing():
            return
        fd = file.fileno()
        if count is None:
            count = os.fstat(fd).st_size - offset
        self.chunks.append(os.pread(fd, count, offset))

    def offload(self, job: Callable[[Port], None]) -> None:
        """Run *job* at once, as a blocking driver does; its port writes here and reads nothing more.

        Input a job waits for must be fed before (its ``wait_until`` gives up
        at once when the condition does not hold yet).
        """
        from framework.drivers.offload import DirectPort

        job(DirectPort(lambda: False, self.write, self.sendfile, self.is_closing))

    def close(self, *, linger: float = 0.0) -> None:
        """Mark the transport closed."""
        self.closed = True
        self.linger = linger

    def abort(self) -> None:
        """Mark the transport aborted (and closed)."""
        self.closed = self.aborted = True

    def is_closing(self) -> bool:
        """True after close() or abort()."""
        return self.closed

    def set_deadline(self, seconds: float | None) -> None:
        """Remember the deadline; a test fires it with ``protocol.deadline_expired()``."""
        self.deadline = seconds

    def output(self) -> bytes:
        """Everything written so far, as one byte string."""
        return b"".join(self.chunks)


def random_chunks(data: bytes, seed: int) -> list[bytes]:
    """*data* cut at random points, the same for the same *seed*: between one piece and one byte a piece.

    The habit that finds framing bugs (a header split in two, a delimiter
    across reads), made reproducible: a failing seed is the whole test case.
    """
    import random  # here, not at the top: importing random adds an at-fork hook to every process

    if len(data) < 2:
        return [data] if data else []
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(data)), rng.randint(0, len(data) - 1)))
    return [data[start:end] for start, end in zip([0, *cuts], [*cuts, len(data)], strict=True)]


def feed(protocol: Protocol, data: bytes, chunk_size: int | None = None, eof: bool = False, *,
         seed: int | None = None) -> bool | None:
    """Deliver *data* to *protocol* in chunks of *chunk_size* (all at once when None).

    With *seed*, the chunks are :func:`random_chunks` of that seed instead
    (``for seed in range(100): ...`` tries a hundred splits, and the one that
    fails names itself).  With *eof*, finish with ``eof_received()`` and
    return what it returned.  Stops early when the protocol closed its
    transport.
    """
    if seed is not None and chunk_size is not None:
        raise ValueError("feed: give chunk_size or seed, not both")
    if seed is not None:
        chunks = random_chunks(data, seed)
    else:
        size = chunk_size or max(1, len(data))
        chunks = [data[start:start + size] for start in range(0, len(data), size)]
    for chunk in chunks:
        if protocol.transport.is_closing():
            break
        protocol.data_received(chunk)
    if eof:
        return protocol.eof_received()
    return None
