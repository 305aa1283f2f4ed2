"""Open files to serve, with their metadata, kept in a small cache that stays correct.

A :class:`FileEntry` holds an open file and everything its responses say
about it (type, length, validators), formatted once; a file of at most
:data:`SMALL_FILE` bytes is also read into memory (:attr:`FileEntry.body`),
so that its response goes out in one ``send`` with its head instead of a
``send`` and a ``sendfile``.  :class:`FileCache` keeps entries by request
path so that a hot file costs no system call at all most of the time,
instead of path resolution, ``open``, ``fstat`` and MIME lookup.

Why the cache is safe: a hit is revalidated with ``stat`` on the path that
was checked when the entry was made, and used only if the file there is still
the same one (device, inode, size, modification time).  If anything on the
way was replaced (a file by a symbolic link leading out, a directory by
another), the identity differs and the request goes through the full checks
again.  That ``stat`` is done at most once per :data:`VALID_FOR` second per
entry (nginx's ``open_file_cache_valid``, whose default is a minute): within
that second a replaced or edited file is still answered with the version the
entry holds -- its open descriptor or its bytes, never what now lies at the
path -- so a swap is noticed a second late but can never expose a file the
checks would refuse.  Entries also expire after :data:`ENTRY_TTL` so that
decisions that depend on files *appearing* (``/name`` served from
``name.html`` until ``name`` exists) are revisited.

The cache is shared by every thread of a process (threading, prethreaded,
``--worker threads``): every change to its dictionary is made under its
lock, and a lookup that finds a stale entry removes that entry only, never
a fresh one another thread put in its place meanwhile.

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
from typing import Any

from servers.http.dates import http_date

#: How long (seconds) a cached path resolution is trusted before it is redone.
ENTRY_TTL = 2.0
#: How long (seconds) an entry is used without checking its file with ``stat`` again.
VALID_FOR = 1.0
#: Most entries (open files) kept.
MAX_ENTRIES = 256
#: Files up to this many bytes are held in memory too.  With the responses reused for them
#: (servers.http.plain: with and without keep-alive) that is up to 3 x 16 KiB per entry,
#: 12 MiB for a full cache of such files, per process.
SMALL_FILE = 16 * 1024

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
    """An open regular file and its response metadata (and its bytes, when small)."""

    __slots__ = ("body", "checked_at", "content_type", "etag", "file", "identity", "last_modified", "mtime",
                 "path", "responses", "size", "trusted_until")

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
        #: The whole file when it is small (None otherwise, or if it changed while being read).
        self.body = _read_small(fd, info)
        #: Responses built for this entry and kept for reuse (see :mod:`servers.http.plain`).
        self.responses: dict[int, tuple[int, Any]] = {}
        #: When the path was resolved (the entry expires ENTRY_TTL later).
        self.checked_at = time.monotonic()
        #: Until when the entry is used without a ``stat`` (set by the cache).
        self.trusted_until = self.checked_at

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


def _read_small(fd: int, info: os.stat_result) -> bytes | None:
    """The whole file behind *fd* if it has at most SMALL_FILE bytes and did not change while read."""
    if info.st_size > SMALL_FILE:
        return None
    data = os.pread(fd, info.st_size + 1, 0)
    if len(data) != info.st_size or _identity(os.fstat(fd)) != _identity(info):
        return None  # written to meanwhile: sendfile, which notices a short file, will do
    return data


class FileCache:
    """Entries by request path, revalidated at most every *valid_for* seconds (see the module docstring)."""

    def __init__(self, *, ttl: float = ENTRY_TTL, max_entries: int = MAX_ENTRIES,
                 valid_for: float = VALID_FOR) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self.valid_for = valid_for
        self._entries: dict[bytes, FileEntry] = {}
        self._lock = threading.Lock()

    def get(self, key: bytes) -> FileEntry | None:
        """The entry for *key* if it is fresh and the file on disk is (as of the last check) still the same one."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        now = time.monotonic()
        if now < entry.trusted_until:
            return entry
        if now - entry.checked_at > self.ttl:
            self._forget(key, entry)
            return None
        try:
            info = os.stat(entry.path)
        except OSError:
            self._forget(key, entry)
            return None
        if _identity(info) != entry.identity:
            self._forget(key, entry)
            return None
        entry.trusted_until = min(now + self.valid_for, entry.checked_at + self.ttl)
        return entry

    def open(self, key: bytes, path: str, *, cache: bool = True) -> FileEntry:
        """Open *path* (already checked) as a new entry, remembered under *key* when *cache*.

        Raises :class:`NotServable` when it is not an openable regular file.
        """
        entry = FileEntry(path)
        # Just opened and checked: trusted for the next valid_for seconds.
        entry.trusted_until = entry.checked_at + min(self.valid_for, self.ttl)
        if cache:
            with self._lock:
                entries = self._entries
                entries.pop(key, None)  # a replaced entry goes to the end: it is the newest
                while len(entries) >= self.max_entries:
                    # Oldest first: dicts keep insertion order.  Safe only because every
                    # change to the dict is made under the lock.
                    del entries[next(iter(entries))]
                entries[key] = entry
        return entry

    def _forget(self, key: bytes, entry: FileEntry) -> None:
        """Drop *entry* if it is still the one under *key* (another thread may have replaced it)."""
        with self._lock:
            if self._entries.get(key) is entry:
                del self._entries[key]

    def clear(self) -> None:
        """Forget every entry (their files close when no longer used)."""
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
