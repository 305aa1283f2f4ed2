"""The access log: one Common Log Format line per response, to a file or standard output.

Lines go to a :class:`~framework.linesink.LineSink`: written without ever
blocking the server (a pipe nobody reads must not stop serving, nor the
stop), held in a bounded buffer while the descriptor takes nothing, dropped
and counted beyond it; a failing log (full disk, EPIPE) is reported once per
interval and counted in the status line.  Whole lines go out in atomic
writes, so processes and threads sharing the log never interleave within a
line.  Whatever the client sent is escaped (control characters, quotes,
backslashes, bytes over 127) so that a request cannot forge log lines or
terminal escapes (gh-100001).
"""

from __future__ import annotations

import time

from framework.linesink import LineSink

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
    """Writes Common Log Format lines to *sink* (kept open for the server's life); never blocks."""

    def __init__(self, sink: LineSink) -> None:
        self.sink = sink
        self._second = -1
        self._stamp = ""

    @classmethod
    def open(cls, target: str) -> AccessLog:
        """An access log to *target*: a file name (appended to, created if missing) or ``-`` for stdout."""
        return cls(LineSink.open(target, name=f"access log {target!r}"))

    def log(self, peer: str, request_line: bytes, status: int, size: int) -> None:
        """Write one line: host, time, request line, status and body bytes sent."""
        now = time.time()
        if int(now) != self._second:
            # The stamp first: another thread that sees the new second must see its stamp.
            self._stamp = clf_time(now)
            self._second = int(now)
        line = f'{escape(peer_host(peer).encode())} - - {self._stamp} "{escape(request_line)}" {status} {size or "-"}\n'
        self.sink.write_line(line.encode("ascii"))

    def status(self) -> str:
        """Its part of the status line: ``access_log_dropped=N access_log_errors=M``."""
        return f"access_log_dropped={self.sink.dropped} access_log_errors={self.sink.errors}"

    def close(self) -> None:
        """Write what can be written now and close (standard output itself is left open)."""
        self.sink.close()
