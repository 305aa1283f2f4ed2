"""Addresses as users write them, and the listening sockets they become.

Text forms (the same for ``--bind`` and for the ``listening on`` line):

* ``HOST:PORT`` — IPv4 or a host name (``127.0.0.1:8000``, ``localhost:0``);
  ``:PORT`` or ``*:PORT`` means every IPv4 interface;
* ``[V6]:PORT`` — IPv6 (``[::1]:0``);
* ``unix:PATH`` — a Unix stream socket at *PATH*;
* ``udp:HOST:PORT`` and ``udp:[V6]:PORT`` — a datagram socket.

Port 0 asks the kernel for a free port; :func:`local_address` reports the
real one.
"""

from __future__ import annotations

import _socket
import array
import dataclasses
import errno
import logging
import os
import select
import socket
import stat

#: Listen backlog.  socketserver's 5 overflows as soon as ~100 clients connect
#: at once; the kernel silently caps this at net.core.somaxconn.
DEFAULT_BACKLOG = 1024

#: How long the stale-socket check waits for a connect to a Unix socket file to complete.
STALE_CHECK_SECONDS = 1.0


class AddressError(ValueError):
    """An address that cannot be parsed or resolved."""


@dataclasses.dataclass(frozen=True)
class Address:
    """A parsed address: an IP endpoint (``host``, ``port``) or a Unix ``path``."""

    family: socket.AddressFamily
    host: str = ""
    port: int = 0
    path: str = ""
    kind: socket.SocketKind = socket.SOCK_STREAM

    @property
    def is_unix(self) -> bool:
        """True for a Unix-domain address."""
        return self.family == socket.AF_UNIX

    @property
    def is_datagram(self) -> bool:
        """True for a UDP (datagram) address."""
        return self.kind == socket.SOCK_DGRAM

    def sockaddr(self) -> str | tuple[str, int]:
        """The address in the form :meth:`socket.socket.bind` takes."""
        return self.path if self.is_unix else (self.host, self.port)

    def __str__(self) -> str:
        prefix = "udp:" if self.is_datagram else ""
        if self.is_unix:
            return f"unix:{self.path}"
        if self.family == socket.AF_INET6:
            return f"{prefix}[{self.host}]:{self.port}"
        return f"{prefix}{self.host}:{self.port}"


def parse_address(text: str) -> Address:
    """Parse one of the text forms above into an :class:`Address` (no DNS yet)."""
    kind = socket.SOCK_STREAM
    rest = text.strip()
    if rest.startswith("unix:"):
        path = rest[len("unix:"):]
        if not path:
            raise AddressError(f"{text!r}: a Unix address needs a path (unix:PATH)")
        return Address(socket.AF_UNIX, path=path)
    if rest.startswith("udp:"):
        kind, rest = socket.SOCK_DGRAM, rest[len("udp:"):]
    if rest.startswith("["):
        host, sep, port_text = rest[1:].partition("]:")
        if not sep:
            raise AddressError(f"{text!r}: an IPv6 address is written [V6]:PORT")
        family = socket.AF_INET6
    else:
        host, sep, port_text = rest.rpartition(":")
        if not sep:
            raise AddressError(f"{text!r}: expected HOST:PORT, [V6]:PORT, unix:PATH or udp:HOST:PORT")
        if ":" in host:
            raise AddressError(f"{text!r}: put an IPv6 address in brackets: [V6]:PORT")
        host = host if host not in ("", "*") else "0.0.0.0"
        family = socket.AF_INET
    try:
        # int() alone would take "+80", " 80" and other scripts' digits ("٣" is 3).
        if not (port_text.isascii() and port_text.isdigit()):
            raise ValueError(port_text)
        port = int(port_text)
    except ValueError:
        raise AddressError(f"{text!r}: port {port_text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise AddressError(f"{text!r}: port {port} is out of range 0-65535")
    return Address(family, host=host, port=port, kind=kind)


def resolve(address: Address) -> Address:
    """Resolve a host name to a numeric address of the same family (IPv4 first)."""
    if address.is_unix:
        return address
    try:
        socket.inet_pton(address.family, address.host)
        return address
    except OSError:
        pass
    try:
        infos = socket.getaddrinfo(address.host, address.port, type=address.kind, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise AddressError(f"cannot resolve {address.host!r}: {exc.strerror}") from None
    except UnicodeError as exc:  # the IDNA codec refuses the name (a label over 63 characters...)
        raise AddressError(f"cannot resolve {address.host!r}: not a valid host name ({exc})") from None
    infos.sort(key=lambda info: info[0] != socket.AF_INET)
    family, _, _, _, sockaddr = infos[0]
    return Address(socket.AddressFamily(family), host=str(sockaddr[0]), port=int(sockaddr[1]), kind=address.kind)


def local_address(sock: socket.socket) -> Address:
    """The address *sock* is really bound to (port 0 replaced by the real port)."""
    name = sock.getsockname()
    kind = socket.SocketKind(sock.type)
    if sock.family == socket.AF_UNIX:
        return Address(socket.AF_UNIX, path=name if isinstance(name, str) else name.decode(), kind=kind)
    return Address(socket.AddressFamily(sock.family), host=name[0], port=name[1], kind=kind)


_AF_INET = int(socket.AF_INET)  # plain numbers: an enum member compared per connection is one more object touched
_AF_INET6 = int(socket.AF_INET6)


def format_peer(family: int, sockaddr: object, sock: socket.socket | None = None) -> str:
    """A peer address as text, in the same forms as :class:`Address`.

    Given the connected *sock* of a Unix peer, the text also names the
    process that connected, as the kernel vouches for it (``SO_PEERCRED``):
    ``unix[pid=1234,uid=1000]``, so that every log line about the
    connection says who it was.
    """
    # IPv4 first, with the constants read once: this runs for every accepted connection.
    if family == _AF_INET and type(sockaddr) is tuple:
        return f"{sockaddr[0]}:{sockaddr[1]}"
    if family == _AF_INET6 and type(sockaddr) is tuple:
        return f"[{sockaddr[0]}]:{sockaddr[1]}"
    text = "unix" if not sockaddr else f"unix:{sockaddr!s}"
    credentials = peer_credentials(sock) if sock is not None else None
    if credentials is not None:
        pid, uid, _ = credentials
        text += f"[pid={pid},uid={uid}]"
    return text


#: ``struct ucred``: pid, uid, gid (Linux ``SO_PEERCRED``), three ints: its size in bytes.
#: Read with :mod:`array`, not :mod:`struct`, whose shared library a process forking per
#: connection would copy at every fork (tests/test_connection_cost.py lists what it must not load).
_UCRED_SIZE = 3 * array.array("i").itemsize


def peer_credentials(sock: socket.socket) -> tuple[int, int, int] | None:
    """``(pid, uid, gid)`` of the process at the other end of a Unix stream *sock* (None: not known here)."""
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return None
    try:
        pid, uid, gid = array.array("i", sock.getsockopt(socket.SOL_SOCKET, option, _UCRED_SIZE))
    except (OSError, ValueError):  # ValueError: not three ints' worth of bytes
        return None
    return pid, uid, gid


def _replace_stale_unix_socket(path: str) -> None:
    """Remove a Unix socket file nobody listens on; refuse a live one or a non-socket.

    The probe's connect is non-blocking with a short deadline
    (:data:`STALE_CHECK_SECONDS`): a live server that does not accept (stopped,
    or stuck, its backlog full) made a blocking ``connect`` wait for ever
    (issue 25 item 9).  Refused: stale, the file is removed; connected, or no
    answer by the deadline: in use.
    """
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise OSError(errno.EEXIST, f"{path} exists and is not a socket")
    state = _unix_socket_state(path)
    if state == STALE:
        os.unlink(path)  # left behind by a server that did not clean up
        logging.getLogger("forkthread").info("unix:%s: replaced a stale socket file (nothing listened on it)", path)
        return
    raise OSError(errno.EADDRINUSE, "Address already in use" if state == IN_USE else
                  "Address already in use (by a server that is not accepting connections)")


#: What the stale-socket check found at a Unix socket file's path.
STALE, IN_USE, STALLED = "stale", "in use", "in use, not accepting"


def _unix_socket_state(path: str) -> str:
    """:data:`STALE` (nothing listens), :data:`IN_USE`, or :data:`STALLED` (a listener that does not accept)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.setblocking(False)
        try:
            probe.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            return STALE
        except BlockingIOError as exc:
            if exc.errno == errno.EAGAIN:
                return STALLED  # a listener whose backlog is full: alive, but not accepting
            # EINPROGRESS (not Linux's way for Unix sockets, but allowed): wait briefly for the outcome.
            poller = select.poll()
            poller.register(probe.fileno(), select.POLLOUT)
            if not poller.poll(int(STALE_CHECK_SECONDS * 1000)):
                return STALLED
            outcome = probe.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            return STALE if outcome in (errno.ECONNREFUSED, errno.ENOENT) else IN_USE
        return IN_USE
    finally:
        probe.close()


#: Close a socket with the C method itself, where no ``makefile()`` was made of it: what
#: ``socket.close()`` adds is two Python frames for makefile()'s sake, and in a forked
#: child, or a forking parent between two forks, each object a call touches is a page copied.
close_socket = _socket.socket.close


def bind_socket(address: Address, *, backlog: int = DEFAULT_BACKLOG, reuse_port: bool = False,
                socket_mode: int | None = None) -> socket.socket:
    """Create, bind and (for streams) listen on a socket for *address*.

    The socket is close-on-exec (Python's default), has SO_REUSEADDR (a
    restarted server must not wait out TIME_WAIT), and is non-blocking, so
    that processes sharing it never block in ``accept`` for a connection a
    sibling already took.  A stale Unix socket file is replaced, a live one
    refused.  *socket_mode* is the permission bits of a Unix socket file
    (who may connect): see :func:`_bind_unix`.  Raises :class:`OSError` as
    the kernel reports it.
    """
    address = resolve(address)
    sock = socket.socket(address.family, address.kind)
    try:
        if not address.is_unix:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if address.family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if address.is_unix:
            _replace_stale_unix_socket(address.path)
        if address.is_unix and socket_mode is not None:
            _bind_unix(sock, address.path, socket_mode)
        else:
            sock.bind(address.sockaddr())
        if address.kind == socket.SOCK_STREAM:
            sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _bind_unix(sock: socket.socket, path: str, mode: int) -> None:
    """Bind *sock* to *path* with the file's permission bits *mode*, never wider at any moment.

    Linux creates the file with the socket's own mode less the umask, so the
    socket is given *mode* before ``bind`` (the file is born with at most
    *mode*); a ``chmod`` then adds the bits the umask took away.  Nothing
    listens until this returns, and the umask, which belongs to every thread
    of the process, is left alone.
    """
    os.fchmod(sock.fileno(), mode)
    sock.bind(path)
    os.chmod(path, mode)


def socket_file_inode(path: str) -> tuple[int, int, int] | None:
    """An identity of the socket file at *path* (device, inode, change time), to recognise it at clean-up.

    The change time matters: a file created after ours was removed may get
    the same inode number.
    """
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino, info.st_ctime_ns


def remove_unix_socket(path: str, identity: tuple[int, int, int] | None) -> None:
    """Unlink the socket file at *path* if it is still the one we created.

    A file that a newer server put at the same path is left alone.
    """
    if identity is None:
        return
    if socket_file_inode(path) == identity:
        try:
            os.unlink(path)
        except OSError:
            pass


def connect(address: str | Address, timeout: float | None = 10.0) -> socket.socket:
    """Open a client connection to *address* (text or :class:`Address`): for clients, tests and the lab."""
    if isinstance(address, str):
        address = parse_address(address)
    address = resolve(address)
    sock = socket.socket(address.family, address.kind)
    try:
        sock.settimeout(timeout)
        sock.connect(address.sockaddr())
    except BaseException:
        sock.close()
        raise
    return sock
