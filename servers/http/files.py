"""Open files to serve, with their metadata, kept in a small cache that stays correct.

A :class:`FileEntry` holds an open file and everything its responses say
about it (type, length, validators), formatted once.  :class:`FileCache`
keeps entries by request path so that a hot file costs one ``stat`` per
request instead of path resolution, ``open``, ``fstat`` and MIME lookup.

Why the cache is safe: every hit is revalidated with ``stat`` on the path that
was checked when the entry was made, and used only if the file there is still
the same one (device, inode, size, modification time).  If anything on the
way was replaced (a file by a symbolic link leading out, a directory by
another), the identity differs and the request goes through the full checks
again.  Entries also expire after :data:`ENTRY_TTL` so that decisions that
depend on files *appearing* (``/name`` served from ``name.html`` until
``name`` exists) are revisited.

An entry's file is closed when the last reference to it goes (an evicted
entry may still be in use by another thread, or queued by the non-blocking
driver, which duplicates what it keeps anyway).
"""

from __future__ import annotations

import mimetypes
import os
import stat
import threading
import time

from servers.http.dates import http_date

#: How long (seconds) a cached path resolution is trusted before it is redone.
ENTRY_TTL = 2.0
#: Most entries (open files) kept.
MAX_ENTRIES = 256

#: Types whose text is sent with ``charset=utf-8`` even though they are not ``text/*``.
_TEXTUAL_TYPES = frozenset({"application/javascript", "application/json", "application/xml", "image/svg+xml"})

#: The type of a compressed file, by the encoding ``mimetypes`` reports.
_COMPRESSED_TYPES = {"gzip": "application/gzip", "bzip2": "application/x-bzip2", "xz": "application/x-xz",
                     "compress": "application/x-compress", "br": "application/x-brotli"}

_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def content_type(path: str) -> str:
    """The ``Content-Type`` for *path* by its extension, with a charset for text."""
    guessed, encoding = mimetypes.guess_type(path, strict=False)
    if encoding is not None:
        # A .tar.gz is sent as what it is (gzip data), not as what it holds: no Content-Encoding
        # here, or a browser would unpack it on the fly.
        return _COMPRESSED_TYPES.get(encoding, "application/octet-stream")
    if guessed is None:
        return "application/octet-stream"
    if guessed.startswith("text/") or guessed in _TEXTUAL_TYPES:
        return guessed + "; charset=utf-8"
    return guessed


def entity_tag(info: os.stat_result) -> str:
    """A strong validator from modification time and size (as nginx builds it)."""
    return f'"{info.st_mtime_ns:x}-{info.st_size:x}"'


class NotServable(Exception):
    """The path does not name a regular file that can be opened."""


class FileEntry:
    """An open regular file and its response metadata."""

    __slots__ = ("checked_at", "content_type", "etag", "file", "identity", "last_modified", "mtime",
                 "path", "size")

    def __init__(self, path: str) -> None:
        try:
            fd = os.open(path, _OPEN_FLAGS)
        except OSError as exc:
            raise NotServable(str(exc)) from None
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or _opened_path(fd) not in (path, None):
            # Not a regular file, or a directory on the way was swapped for a
            # link after the path was checked: what was opened is not what was checked.
            os.close(fd)
            raise NotServable("not the regular file that was checked")
        self.file = open(fd, "rb", buffering=0, closefd=True)  # noqa: SIM115 -- lives as long as the entry
        self.path = path
        self.identity = _identity(info)
        self.size = info.st_size
        self.mtime = int(info.st_mtime)
        self.etag = entity_tag(info)
        self.last_modified = http_date(info.st_mtime)
        self.content_type = content_type(path)
        self.checked_at = time.monotonic()

    def fileno(self) -> int:
        """The open file's descriptor."""
        return self.file.fileno()


def _opened_path(fd: int) -> str | None:
    """Where the kernel says *fd* really is (None when /proc is not there to ask)."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None


def _identity(info: os.stat_result) -> tuple[int, int, int, int]:
    return info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns


class FileCache:
    """Entries by request path, revalidated on every hit (see the module docstring)."""

    def __init__(self, *, ttl: float = ENTRY_TTL, max_entries: int = MAX_ENTRIES) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: dict[bytes, FileEntry] = {}
        self._lock = threading.Lock()

    def get(self, key: bytes) -> FileEntry | None:
        """The entry for *key* if it is fresh and the file on disk is still the same one."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if time.monotonic() - entry.checked_at > self.ttl:
            self._entries.pop(key, None)
            return None
        try:
            info = os.stat(entry.path)
        except OSError:
            self._entries.pop(key, None)
            return None
        if _identity(info) != entry.identity:
            self._entries.pop(key, None)
            return None
        return entry

    def open(self, key: bytes, path: str, *, cache: bool = True) -> FileEntry:
        """Open *path* (already checked) as a new entry, remembered under *key* when *cache*.

        Raises :class:`NotServable` when it is not an openable regular file.
        """
        entry = FileEntry(path)
        if cache:
            with self._lock:
                while len(self._entries) >= self.max_entries:
                    # Oldest first: dicts keep insertion order.
                    self._entries.pop(next(iter(self._entries)), None)
                self._entries[key] = entry
        return entry

    def clear(self) -> None:
        """Forget every entry (their files close when no longer used)."""
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

