"""Being started by a service manager: systemd socket activation, ``sd_notify``, inetd.

* **Socket activation** (``systemd.socket(5)``, ``sd_listen_fds(3)``): the
  manager binds the socket, starts us with it as descriptor 3 and sets
  ``LISTEN_FDS`` (how many, from 3 on) and ``LISTEN_PID`` (our pid, so that a
  child that inherits the environment does not take the sockets too).
  :func:`listen_fds` returns them as socket objects and clears the variables,
  as ``sd_listen_fds(unset_environment=1)`` does.
* **Readiness** (``sd_notify(3)``): with ``Type=notify`` the manager waits for
  ``READY=1`` on the datagram socket named in ``NOTIFY_SOCKET`` (a path, or
  ``@name`` in the abstract namespace).
* **inetd** ("nowait" services, systemd ``Accept=yes``): the connection
  itself is descriptor 0; :func:`inetd_socket` wraps it.

Only the standard library is used: the protocols are a few environment
variables and one datagram.
"""

from __future__ import annotations

import logging
import os
import socket
import stat
from collections.abc import MutableMapping

from framework.address import format_peer

log = logging.getLogger("forkthread")

#: The first descriptor systemd passes (``SD_LISTEN_FDS_START``).
LISTEN_FDS_START = 3


class ActivationError(RuntimeError):
    """The environment promised sockets that are not there, or not sockets."""


def listen_fds(environ: MutableMapping[str, str] | None = None, unset: bool = True) -> list[socket.socket]:
    """The sockets passed by socket activation, in order (empty when not activated).

    Honoured only when ``LISTEN_PID`` is this process's pid.  The sockets
    are made close-on-exec (systemd passes them inheritable) and
    non-blocking.  With *unset* the variables are removed from *environ*,
    so child processes do not believe they were activated too.
    """
    environ = os.environ if environ is None else environ
    count_text = environ.get("LISTEN_FDS")
    pid_text = environ.get("LISTEN_PID")
    if count_text is None:
        return []
    if unset:
        for name in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
            environ.pop(name, None)
    try:
        count = int(count_text)
        pid = int(pid_text) if pid_text is not None else None
    except ValueError:
        raise ActivationError(f"LISTEN_FDS={count_text!r} / LISTEN_PID={pid_text!r} are not numbers") from None
    if pid != os.getpid():
        return []  # meant for another process (our parent, say): not ours to take
    sockets = []
    for fd in range(LISTEN_FDS_START, LISTEN_FDS_START + count):
        try:
            mode = os.fstat(fd).st_mode
        except OSError:
            raise ActivationError(f"LISTEN_FDS={count} but descriptor {fd} is not open") from None
        if not stat.S_ISSOCK(mode):
            raise ActivationError(f"descriptor {fd} passed by LISTEN_FDS is not a socket")
        os.set_inheritable(fd, False)
        sock = socket.socket(fileno=fd)
        sock.setblocking(False)
        sockets.append(sock)
    return sockets


def sd_notify(state: str, environ: MutableMapping[str, str] | None = None) -> bool:
    """Send *state* (``"READY=1"``, ``"STOPPING=1"``...) to the service manager.

    Returns False, doing nothing, when ``NOTIFY_SOCKET`` is not set; a
    manager that cannot be reached is logged, never fatal.
    """
    environ = os.environ if environ is None else environ
    target = environ.get("NOTIFY_SOCKET")
    if not target:
        return False
    address = "\0" + target[1:] if target.startswith("@") else target  # '@' is the abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as exc:
        log.warning("sd_notify to %s failed: %s", target, exc.strerror or exc)
        return False
    return True


def inetd_socket(fd: int = 0) -> tuple[socket.socket, str]:
    """The connected socket inetd passed as descriptor *fd*, and its peer as text.

    The descriptor is duplicated, so that closing the connection leaves
    standard input valid (pointing at nothing harmful) for the rest of the
    process.  Raises :class:`ActivationError` when *fd* is not a connected socket.
    """
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        raise ActivationError(f"descriptor {fd} is not open") from None
    if not stat.S_ISSOCK(mode):
        raise ActivationError("standard input is not a socket: run --inetd under inetd, xinetd or systemd Accept=yes")
    sock = socket.socket(fileno=os.dup(fd))
    try:
        peer = format_peer(sock.family, sock.getpeername(), sock)
    except OSError as exc:
        sock.close()
        raise ActivationError(f"standard input is a socket but not a connected one: {exc.strerror or exc}") from None
    if sock.type != socket.SOCK_STREAM:
        sock.close()
        raise ActivationError("--inetd serves stream connections (inetd 'nowait' style) only")
    _detach_standard_descriptors(sock)
    return sock, peer


def _detach_standard_descriptors(sock: socket.socket) -> None:
    """Point descriptors 0-2 that are *sock*'s connection at /dev/null.

    inetd passes the connection as standard input, output and error; while
    any of them stays open, closing our socket would not end the connection
    (no FIN until the last descriptor goes), and a log line on standard
    error would land in the client's stream.
    """
    ours = os.fstat(sock.fileno())
    null_fd = os.open(os.devnull, os.O_RDWR)
    try:
        for fd in (0, 1, 2):
            try:
                info = os.fstat(fd)
            except OSError:
                continue
            if (info.st_dev, info.st_ino) == (ours.st_dev, ours.st_ino):
                os.dup2(null_fd, fd)
    finally:
        os.close(null_fd)
