"""Taking connections off a listening socket, with accept errors handled once for everyone."""

from __future__ import annotations

import logging
import socket
import time

from framework.address import format_peer
from framework.signals import AcceptErrorKind, classify_accept_error

log = logging.getLogger("forkthread")

#: Back-off after a capacity error (EMFILE...), doubling up to the maximum.
BACKOFF_START = 0.01
BACKOFF_MAX = 1.0
#: A capacity condition is logged when it starts and then at most this often.
CAPACITY_LOG_INTERVAL = 10.0


class Acceptor:
    """Accepts from one non-blocking listener; classifies and absorbs accept errors.

    On a capacity error (out of descriptors or memory) the connection stays in
    the kernel's backlog and :meth:`backoff_remaining` tells the loop how long
    to leave the listener out of its poll set: a level-triggered poll on a
    listener we cannot accept from would otherwise spin at 100% CPU.
    """

    def __init__(self, listener: socket.socket) -> None:
        self.listener = listener
        self._family = listener.family
        self._backoff = 0.0
        self._resume_at = 0.0
        self._suppressed = 0
        self._last_logged = -CAPACITY_LOG_INTERVAL

    def fileno(self) -> int:
        """The descriptor to poll for readability before calling :meth:`accept`."""
        return self.listener.fileno()

    def backoff_remaining(self) -> float:
        """Seconds before accepting is worth trying again (0.0: now)."""
        if not self._resume_at:
            return 0.0
        remaining = self._resume_at - time.monotonic()
        if remaining <= 0:
            self._resume_at = 0.0
            return 0.0
        return remaining

    def accept(self) -> tuple[socket.socket, str] | None:
        """Accept one connection: ``(socket, peer text)``, or None when there is none now.

        The new socket is close-on-exec and non-blocking.  A fatal error (the
        listener itself is broken) is raised.
        """
        try:
            fd, addr = self.listener._accept()  # type: ignore[attr-defined]
        except OSError as exc:
            kind = classify_accept_error(exc)
            if kind is AcceptErrorKind.RETRY:
                return None
            if kind is AcceptErrorKind.CAPACITY:
                self._back_off(exc)
                return None
            raise
        # _accept() skips socket.accept()'s extra fcntl: Linux accept4() already
        # made it close-on-exec, and non-blocking is set once, by the driver.
        conn = socket.socket(self._family, self.listener.type, self.listener.proto, fileno=fd)
        if self._backoff:
            self._recovered()
        return conn, format_peer(self._family, addr)

    def _back_off(self, exc: OSError) -> None:
        self._backoff = min(BACKOFF_MAX, self._backoff * 2 if self._backoff else BACKOFF_START)
        now = time.monotonic()
        self._resume_at = now + self._backoff
        if now - self._last_logged >= CAPACITY_LOG_INTERVAL:
            extra = f" ({self._suppressed} more since the last report)" if self._suppressed else ""
            log.warning("accept: %s; backing off, still serving%s", exc.strerror or exc, extra)
            self._last_logged = now
            self._suppressed = 0
        else:
            self._suppressed += 1

    def _recovered(self) -> None:
        if self._suppressed or self._backoff >= BACKOFF_MAX:
            log.warning("accept: recovered, accepting again")
        self._backoff = 0.0
        self._suppressed = 0
        self._last_logged = -CAPACITY_LOG_INTERVAL
