"""Pieces both drivers share: buffer sizes, sendfile steps, deadlines, how a connection may end."""

from __future__ import annotations

import array
import math
import os
import select
import socket
import sys
import time
from typing import Any

from framework.signals import is_peer_gone

#: Bytes asked of one recv().  64 KiB stays below glibc's mmap threshold, so a
#: read costs no extra mmap/munmap, and moves large transfers in few calls.
RECV_SIZE = 65536

#: sendfile(2) moves at most this much per call (Linux caps it near 2 GiB).
SENDFILE_CHUNK = 1 << 30

#: How long a closing connection waits for the peer's end-of-file after an
#: error response, so that unread input does not turn into a reset.
DEFAULT_LINGER = 2.0

#: At a graceful stop, a connection quiet this long (nothing received or sent) is idle: a
#: protocol between messages is told of the stop (and closes), a handler's input ends.
#: Quiet for less, a request may be on its way (the connection was just accepted).
STOP_IDLE_GRACE = 1.0

#: A lingering close reads and discards at most this much.
LINGER_MAX_BYTES = 1 << 20

#: Machines whose Linux takes the generic ioctl numbers (asm-generic/ioctls.h).  Only the common
#: ones are named: anywhere else (alpha, mips, powerpc and sparc have numbers of their own) the
#: termios module says.
_GENERIC_IOCTLS = frozenset({"x86_64", "i386", "i486", "i586", "i686", "aarch64", "armv6l", "armv7l", "armv8l",
                             "riscv64", "s390x", "loongarch64"})


def _ioctl_numbers() -> tuple[int, int]:
    """``(FIONREAD, TIOCOUTQ)`` of this machine.

    Not from :mod:`termios` where the generic numbers hold: a terminal
    module's five mappings would be copied by every fork and torn down by
    every exit of a server that forks per connection (docs/lab.md, "The
    fifth round").
    """
    if os.uname().machine in _GENERIC_IOCTLS:
        return 0x541B, 0x5411
    import termios

    return termios.FIONREAD, termios.TIOCOUTQ


#: Bytes unread in a socket's receive queue (SIOCINQ), and unsent in its send queue (SIOCOUTQ).
FIONREAD, TIOCOUTQ = _ioctl_numbers()

def has_unread_input(fd: int) -> bool:
    """True when the kernel may hold input on *fd* that nobody read: bytes, or the peer's end of file.

    Closing a socket with unread input sends a reset instead of FIN, so a
    graceful close reads it first.  Asked with a ``poll`` that does not
    wait (0.6 µs, its poll object included), not with the ``FIONREAD``
    ioctl: the :mod:`fcntl` module would be one more shared library that
    every fork copies and every exit tears down, in a server that forks per
    connection (docs/lab.md, "The seventh round"); not with ``select``,
    which refuses a descriptor above 1023; and a ``recv`` that finds
    nothing raises.  An end of file, or an error, waiting to be read answers
    True as well: the caller's ``recv`` then says what it is.
    """
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError):
        return True


class ShortFileError(OSError):
    """The file ended before the promised byte count was sent (it shrank meanwhile)."""


class OutOfDescriptors(OSError):
    """A connection ended because the process had no descriptor left for its queued response (warned once)."""


class ConnectionTimeout(TimeoutError):
    """A connection ended because a time limit passed (idle, send or shutdown)."""


class HandlerError(Exception):
    """Wraps an exception a protocol raised, so the server can log it as a handler fault."""

    def __init__(self, original: BaseException) -> None:
        super().__init__(str(original))
        self.original = original


def ends_quietly(exc: BaseException) -> bool:
    """True when *exc* is a normal end of one connection: logged at debug, never as a fault.

    The peer went away (reset, broken pipe...), a time limit passed, a
    file shrank under a response whose length was already promised, or the
    process ran out of descriptors for one connection's queued response
    (a :class:`LogThrottle` warning says so), or the peer did not speak
    acceptable TLS (plain text on a TLS port, a garbage or truncated
    ClientHello, a protocol version refused, a bad record): an
    :class:`ssl.SSLError`.  The one rule every driver and the server apply
    to what ended a connection.
    """
    if is_peer_gone(exc) or isinstance(exc, (TimeoutError, ShortFileError, OutOfDescriptors)):
        return True
    # Only a process that uses TLS has loaded ssl; the others need not pay for it.
    ssl = sys.modules.get("ssl")
    return ssl is not None and isinstance(exc, ssl.SSLError)


def is_tls_socket(sock: socket.socket) -> bool:
    """True when *sock* is an :class:`ssl.SSLSocket` (asked without loading :mod:`ssl`)."""
    ssl = sys.modules.get("ssl")
    return ssl is not None and isinstance(sock, ssl.SSLSocket)


def sendfile_some(sock_fd: int, file_fd: int, offset: int, count: int) -> int:
    """Send up to *count* bytes of *file_fd* from *offset*; return how many went out.

    Raises :class:`BlockingIOError` when the socket is full and
    :class:`ShortFileError` when the file has no more bytes to give.
    """
    sent = os.sendfile(sock_fd, file_fd, offset, min(count, SENDFILE_CHUNK))
    if sent == 0:
        raise ShortFileError(f"file ended {count} bytes early")
    return sent


def earliest(*deadlines: float | None) -> float:
    """The earliest of several monotonic deadlines (``None`` = no deadline), or inf."""
    return min((d for d in deadlines if d is not None), default=math.inf)


def poll_timeout_ms(deadline: float) -> int | None:
    """Milliseconds until *deadline* for ``poll()``, rounded up; None for no deadline."""
    if deadline == math.inf:
        return None
    return max(0, math.ceil((deadline - time.monotonic()) * 1000))


def socket_extra_info(sock: socket.socket, name: str, default: Any = None) -> Any:
    """``get_extra_info`` for a connected socket: ``peername``, ``sockname`` or ``socket``."""
    if name == "socket":
        return sock
    try:
        if name == "peername":
            return sock.getpeername()
        if name == "sockname":
            return sock.getsockname()
    except OSError:
        return default
    return default


def bytes_queued(sock: socket.socket) -> bool:
    """True when *sock* holds unread input or unsent (or unacknowledged) output: not idle.

    Asked only at a graceful stop, so :mod:`fcntl` is loaded only then (see
    :func:`has_unread_input`); should it fail to load (no descriptor left
    to open it with), the socket counts as busy.
    """
    try:
        import fcntl
    except ImportError:
        return True
    for request in (FIONREAD, TIOCOUTQ):  # SIOCINQ, SIOCOUTQ
        count = array.array("i", [0])
        fcntl.ioctl(sock.fileno(), request, count)
        if count[0]:
            return True
    return False


def tcp_idle_for(sock: socket.socket) -> float:
    """Seconds since *sock* last received or sent data, from the kernel's ``TCP_INFO``."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_SIZE)
    # Three native unsigned ints; array, not struct: see _UCRED_SIZE in framework.address.
    last_data_sent, _, last_data_recv = array.array("I", info[_TCP_INFO_LAST_DATA_SENT:_TCP_INFO_LAST_DATA_SENT + 12])
    return min(last_data_sent, last_data_recv) / 1000


#: struct tcp_info (linux/tcp.h): its size up to tcpi_total_retrans, and where tcpi_last_data_sent,
#: tcpi_last_ack_sent and tcpi_last_data_recv (milliseconds ago) are.
_TCP_INFO_SIZE = 104
_TCP_INFO_LAST_DATA_SENT = 44


def stop_grace_left(sock: socket.socket) -> float:
    """Seconds until *sock* has been quiet for :data:`STOP_IDLE_GRACE` (0.0: it has).

    Bytes queued either way make it busy (a full grace from now); a Unix socket,
    which has no kernel clock to ask, also waits a full grace from now.
    """
    try:
        if bytes_queued(sock) or sock.family == socket.AF_UNIX:
            return STOP_IDLE_GRACE
        return max(0.0, STOP_IDLE_GRACE - tcp_idle_for(sock))
    except (OSError, ValueError):  # ValueError: closed meanwhile (a fileno of -1)
        return 0.0  # no longer connected: nothing to wait for
