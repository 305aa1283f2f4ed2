"""The access log: one Common Log Format line per response, to a file or standard output.

Lines go out with a single ``write(2)`` on a descriptor opened for append,
so processes and threads sharing the log never interleave within a line
and nothing waits in a buffer when a forked child exits.  Whatever the
client sent is escaped (control characters, quotes, backslashes, bytes
over 127) so that a request cannot forge log lines or terminal escapes
(gh-100001).
"""

from __future__ import annotations

import os
import time

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

# bytes -> the text that stands for it in the log: printable ASCII as is, the rest as \xNN.
_ESCAPES = [chr(c) if 32 <= c < 127 else f"\\x{c:02x}" for c in range(256)]
_ESCAPES[ord('"')] = '\\"'
_ESCAPES[ord("\\")] = "\\\\"
_NEEDS_ESCAPE = bytes(c for c in range(256) if _ESCAPES[c] != chr(c))


def escape(data: bytes) -> str:
    """*data* as printable ASCII: control characters, ``"``, ``\\`` and non-ASCII escaped."""
    if data.translate(None, _NEEDS_ESCAPE) == data:
        return data.decode("ascii")
    return "".join([_ESCAPES[byte] for byte in data])


def clf_time(timestamp: float) -> str:
    """``[10/Oct/2000:13:55:36 +0000]`` for *timestamp* (UTC)."""
    t = time.gmtime(timestamp)
    return (f"[{t.tm_mday:02d}/{_MONTHS[t.tm_mon - 1]}/{t.tm_year}"
            f":{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} +0000]")


def peer_host(peer: str) -> str:
    """The host part of a transport's peer text (``1.2.3.4:5`` -> ``1.2.3.4``, ``[::1]:5`` -> ``::1``)."""
    if peer.startswith("["):
        return peer[1:peer.find("]")]
    host, colon, _ = peer.rpartition(":")
    return host if colon else peer


class AccessLog:
    """Writes Common Log Format lines to the descriptor *fd* (kept open for the server's life)."""

    def __init__(self, fd: int, *, owned: bool) -> None:
        self.fd = fd
        self.owned = owned
        self._second = -1
        self._stamp = ""

    @classmethod
    def open(cls, target: str) -> AccessLog:
        """An access log to *target*: a file name (appended to, created if missing) or ``-`` for stdout."""
        if target == "-":
            return cls(1, owned=False)
        return cls(os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644), owned=True)

    def log(self, peer: str, request_line: bytes, status: int, size: int) -> None:
        """Write one line: host, time, request line, status and body bytes sent."""
        now = time.time()
        if int(now) != self._second:
            # The stamp first: another thread that sees the new second must see its stamp.
            self._stamp = clf_time(now)
            self._second = int(now)
        line = f'{escape(peer_host(peer).encode())} - - {self._stamp} "{escape(request_line)}" {status} {size or "-"}\n'
        try:
            os.write(self.fd, line.encode("ascii"))
        except OSError:
            pass  # a full disk or closed stdout must not take requests down

    def close(self) -> None:
        """Close the log file (standard output is left open)."""
        if self.owned and self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
