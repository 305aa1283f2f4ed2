"""The TLS layer between a non-blocking socket and a protocol: :class:`ssl.SSLObject` over two memory BIOs.

OpenSSL never touches the socket here.  Ciphertext the peer sent is read
from the socket into the *incoming* BIO; what OpenSSL produces (handshake
flights, records, alerts) is taken from the *outgoing* BIO and sent.  So
TLS is one more sans-I/O state machine, driven by the same readiness events
and timers as the protocol above it, and one slow handshake never holds up
another connection.

:class:`TlsStream` offers what a driver calls on a socket — ``recv``,
``send``, ``sendmsg`` and a ``sendfile`` step — with the same meaning
(:class:`BlockingIOError` when it must wait), plus :meth:`TlsStream.do_handshake`
and :meth:`TlsStream.close_notify`.

Flow control counts encrypted bytes: the stream takes new plaintext only
when every byte of ciphertext it made before has gone to the kernel, so it
never holds more than one :data:`TLS_CHUNK` of ciphertext and a driver's own
high-water mark keeps bounding the memory of a connection whose peer reads
slowly.  While ciphertext is pending (:attr:`TlsStream.pending`) the driver
waits for the socket to become writable.

sendfile cannot encrypt, so file bodies are read in :data:`TLS_CHUNK` pieces
with ``os.pread`` (never the whole file) and encrypted here.  Kernel TLS,
which would let ``sendfile(2)`` run on the socket, needs OpenSSL to own the
socket: see :func:`framework.tls.ktls_option` and the blocking driver.
"""

from __future__ import annotations

import os
import socket
import ssl
from collections.abc import Sequence

from framework.drivers.common import RECV_SIZE, ShortFileError

#: Plaintext encrypted per step: four full TLS records.  It bounds the
#: ciphertext one connection holds and the bytes one ``pread`` copies.
TLS_CHUNK = 65536


class HandshakeAborted(ConnectionAbortedError):
    """The peer closed the connection before the TLS handshake finished."""


class TlsStream:
    """Server-side TLS over the connected non-blocking *sock*, with *context*.

    Not thread-safe; one per connection.  Every method either makes progress
    or raises :class:`BlockingIOError` (wait for the socket), :class:`ssl.SSLError`
    (the peer broke the protocol: a quiet end, see
    :func:`framework.drivers.common.ends_quietly`) or another :class:`OSError`.
    """

    __slots__ = ("_incoming", "_outgoing", "_pending", "_raw_eof", "handshaken", "sock", "ssl_object")

    def __init__(self, sock: socket.socket, context: ssl.SSLContext) -> None:
        self.sock = sock
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        #: The :class:`ssl.SSLObject`: cipher, version, ALPN, peer certificate.
        self.ssl_object = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self._pending = memoryview(b"")
        self._raw_eof = False
        #: True once the handshake is complete.
        self.handshaken = False

    # -- ciphertext to and from the socket ------------------------------------------

    @property
    def pending(self) -> int:
        """Ciphertext made but not yet taken by the kernel."""
        return len(self._pending) + self._outgoing.pending

    def flush(self) -> bool:
        """Send pending ciphertext as far as the kernel takes it; True when none is left."""
        while True:
            if not self._pending:
                if not self._outgoing.pending:
                    return True
                self._pending = memoryview(self._outgoing.read())
            try:
                sent = self.sock.send(self._pending)
            except BlockingIOError:
                return False
            self._pending = self._pending[sent:]

    def _fill(self) -> None:
        """Move what the socket has into the incoming BIO; :class:`BlockingIOError` when nothing came."""
        data = self.sock.recv(RECV_SIZE)
        if data:
            self._incoming.write(data)
        else:
            self._raw_eof = True
            self._incoming.write_eof()

    # -- the handshake and plaintext ----------------------------------------------------

    def do_handshake(self) -> None:
        """Advance the handshake; return once it is complete.

        Raises :class:`BlockingIOError` while the peer has yet to answer (or
        our flight is still pending: watch for writability then),
        :class:`ssl.SSLError` when the peer is not speaking acceptable TLS, and
        :class:`HandshakeAborted` when it closed the connection meanwhile.
        """
        while True:
            try:
                self.ssl_object.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.flush()
                if self._raw_eof:
                    raise HandshakeAborted("peer closed the connection during the TLS handshake") from None
                self._fill()
            except ssl.SSLError:
                # Tell the peer why (a protocol_version alert to a TLS 1.0 client...), if it still listens.
                try:
                    self.flush()
                except OSError:
                    pass
                raise
        self.handshaken = True
        self.flush()  # the last flight (TLS 1.3 session tickets); whatever is left waits for writability

    def recv(self, size: int = RECV_SIZE) -> bytes:
        """Plaintext: everything decryptable now (b"" at the peer's close_notify or end of stream).

        Reads until the incoming BIO holds no complete record, so no
        plaintext is ever left behind waiting for a readiness event that the
        socket, already emptied, would not report.
        """
        chunks: list[bytes] = []
        while True:
            try:
                data = self.ssl_object.read(size)
                if data:
                    chunks.append(data)
                    continue
                # b"": the peer's close_notify (OpenSSL reports it without raising).
                if chunks:
                    break
                return b""
            except ssl.SSLWantReadError:
                if chunks:
                    break
                if self._outgoing.pending:
                    self.flush()  # what reading made OpenSSL say (a no_renegotiation alert...) goes first
                if self._raw_eof:
                    return b""  # a ragged end: the peer closed TCP without close_notify
                self._fill()
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                if chunks:
                    break
                return b""
        if self._outgoing.pending:
            self.flush()  # a TLS 1.3 KeyUpdate answer, for instance
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def send(self, data: bytes | bytearray | memoryview) -> int:
        """Encrypt and send a prefix of *data*; return its length.

        Raises :class:`BlockingIOError` when earlier ciphertext is still
        pending (nothing taken).  Returns less than ``len(data)`` once the
        kernel's buffer is full, with at most one chunk of ciphertext pending.
        """
        view = memoryview(data).cast("B")
        taken = 0
        while taken < len(view) and self.flush():
            chunk = view[taken:taken + TLS_CHUNK]
            self.ssl_object.write(chunk)
            taken += len(chunk)
        self.flush()
        if not taken and view:
            raise BlockingIOError("TLS ciphertext pending")
        return taken

    def sendmsg(self, buffers: Sequence[memoryview]) -> int:
        """Gather up to one chunk of *buffers* into one write (one record, not one per small buffer)."""
        head: list[memoryview] = []
        size = 0
        for buffer in buffers:
            if size >= TLS_CHUNK:
                break
            head.append(buffer)
            size += len(buffer)
        return self.send(b"".join(head))

    def sendfile(self, file_fd: int, offset: int, count: int) -> int:
        """Send up to *count* bytes of *file_fd* from *offset*, read in chunks with ``pread``.

        The same contract as :func:`framework.drivers.common.sendfile_some`:
        :class:`BlockingIOError` when nothing could go, :class:`ShortFileError`
        when the file has no more bytes.
        """
        taken = 0
        while taken < count and self.flush():
            data = os.pread(file_fd, min(count - taken, TLS_CHUNK), offset + taken)
            if not data:
                if taken:
                    break
                raise ShortFileError(f"file ended {count} bytes early")
            self.ssl_object.write(data)
            taken += len(data)
        self.flush()
        if not taken:
            raise BlockingIOError("TLS ciphertext pending")
        return taken

    def close_notify(self) -> None:
        """Queue our close_notify alert and try to send it; never waits for the peer's."""
        try:
            self.ssl_object.unwrap()
        except (ssl.SSLWantReadError, ssl.SSLError):
            pass  # the peer's own close_notify is not awaited
        try:
            self.flush()
        except OSError:
            pass  # the peer is gone: nobody to tell


def ktls_sending(sock: ssl.SSLSocket) -> bool:
    """True when OpenSSL handed *sock*'s sending side to kernel TLS, so ``sendfile(2)`` may run on it.

    Python 3.12+ asks OpenSSL (``SSL_OP_ENABLE_KTLS``, ``BIO_get_ktls_send``);
    before that the answer is always False and file bodies are read in
    chunks and encrypted in user space.
    """
    # The SSLObject behind an SSLSocket is private; only its optional question is asked.
    uses_ktls = getattr(getattr(sock, "_sslobj", None), "uses_ktls_for_send", None)
    return bool(uses_ktls is not None and uses_ktls())


__all__ = ["TLS_CHUNK", "HandshakeAborted", "TlsStream", "ktls_sending"]
