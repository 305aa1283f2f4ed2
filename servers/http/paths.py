"""From a request target to a place under the document root, or a refusal.

Two steps, kept apart because the first is pure text and the second asks the
file system:

* :func:`url_path` turns a target (``/a%20b/c.txt?q=1``) into the decoded
  segments of its path, refusing anything that could name a place outside
  the root or be read two ways: ``..`` (also as ``%2e%2e``), an encoded
  ``/`` or ``\\``, a raw ``\\``, NUL, invalid UTF-8.
* :meth:`PathResolver.resolve` finds what the segments name under the root:
  a file, a directory (301 to the slash form, or its ``index.html``), or
  ``name.html`` for a missing ``name``.  Symbolic links are refused unless
  ``follow_symlinks``, and then only those that stay inside the root.

Hidden names (a segment starting with ``.``: ``.env``, ``.git/config``,
``.htpasswd``) are refused with 404, as hardened nginx configurations do,
unless ``dotfiles="allow"``; the top-level ``.well-known/`` (RFC 8615: ACME
challenges, ``security.txt``) is served.  A link leading outside the root
gets the same 404 whether or not its target exists, so a request cannot
learn which files exist outside.  :meth:`PathResolver.servable` asks the
whole question for one target, and is what a listing shows entries by: it
names nothing a request for it would be refused.
"""

from __future__ import annotations

import dataclasses
import os
import stat
from urllib.parse import unquote_to_bytes

#: Characters a decoded segment may not contain: they would change meaning
#: once the segments are joined into a file-system path.
_FORBIDDEN_IN_SEGMENT = ("/", "\\", "\0")

#: ``--dotfiles`` values: refuse hidden names (the default) or serve them like any other.
DOTFILES = ("deny", "allow")

#: The one hidden directory served under ``--dotfiles deny``, and only at the top (RFC 8615).
WELL_KNOWN = ".well-known"


class PathRefused(Exception):
    """The target names nothing the server will serve: *status* is 400, 403 or 404."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"{status}: {detail}")
        self.status = status
        self.detail = detail


@dataclasses.dataclass(frozen=True, slots=True)
class Target:
    """A request target's path: its decoded *segments*, and the raw path text (still encoded)."""

    segments: tuple[str, ...]
    raw_path: str
    #: True when the path ends with ``/`` (a directory is asked for).
    trailing_slash: bool
    #: The query, with its ``?``, or empty (kept for a redirect's Location).
    query: str


def split_target(target: bytes) -> tuple[str, str]:
    """Return the path and the query (with its ``?``) of an origin- or absolute-form target.

    The fragment (never sent by a conforming client) is dropped.
    """
    text = target.decode("ascii")  # the parser already refused anything but visible ASCII
    text = text.partition("#")[0]
    path, question, query = text.partition("?")
    if not path.startswith("/"):
        scheme, sep, rest = path.partition("://")
        if not sep or scheme.lower() not in ("http", "https"):
            raise PathRefused(400, "request target is not a path")
        path = "/" + rest.partition("/")[2]
    return path, question + query


def url_path(target: bytes) -> Target:
    """Decode *target* into path segments; raise :class:`PathRefused` when it must not be served."""
    path, query = split_target(target)
    segments: list[str] = []
    for raw in path.split("/"):
        if not raw or raw == ".":
            continue
        if "%" in raw:
            try:
                segment = unquote_to_bytes(raw).decode("utf-8")
            except UnicodeDecodeError:
                raise PathRefused(404, "path is not UTF-8") from None
        else:
            segment = raw
        if segment in (".", ".."):
            if segment == "..":
                raise PathRefused(403, "'..' in path")
            continue
        if any(char in segment for char in _FORBIDDEN_IN_SEGMENT):
            raise PathRefused(404, "encoded '/', '\\' or NUL in path")
        segments.append(segment)
    return Target(tuple(segments), path, path.endswith("/"), query)


@dataclasses.dataclass(frozen=True, slots=True)
class Resolved:
    """What a target names: a regular *file* to serve, a *directory* to list, or a *redirect*."""

    kind: str  # "file", "directory" or "redirect"
    path: str = ""
    location: str = ""


def redirect_location(target: Target) -> str:
    """The slash form of a directory's path, safe to send as ``Location``.

    A path that starts with ``//`` (or ``/\\``) would be read by a browser as
    another host (CVE-2021-28861), so leading slashes collapse to one.
    """
    return "/" + target.raw_path.lstrip("/\\") + "/" + target.query


def is_hidden(segments: tuple[str, ...] | list[str]) -> bool:
    """Whether a path of *segments* (under the root) passes through a hidden name, ``/.well-known/`` aside."""
    return any(segment.startswith(".") and not (depth == 0 and segment == WELL_KNOWN)
               for depth, segment in enumerate(segments))


class PathResolver:
    """Maps decoded segments onto the file system under *root*.

    Without *follow_symlinks* any symbolic link on the way (below the root)
    gives 404; with it, a link is followed only when where it leads is still
    inside the root (404 otherwise, whether or not the target exists).  With
    *dotfiles* ``"deny"`` a hidden name, asked for or reached through a link,
    gives 404 (see :func:`is_hidden`).
    """

    def __init__(self, root: str, *, follow_symlinks: bool = False, dotfiles: str = "deny",
                 index: str = "index.html") -> None:
        if dotfiles not in DOTFILES:
            raise ValueError(f"dotfiles must be one of {DOTFILES}, not {dotfiles!r}")
        self.root = os.path.realpath(root)
        self.follow_symlinks = follow_symlinks
        self.hide_dotfiles = dotfiles == "deny"
        self.index = index

    def servable(self, target: bytes) -> bool:
        """Whether a request for *target* would be served (not refused): what a listing may name."""
        try:
            self.resolve(url_path(target))
        except PathRefused:
            return False
        return True

    def resolve(self, target: Target) -> Resolved:
        """Find what *target* names; raise :class:`PathRefused` (404 or 403) when nothing may be served."""
        if self.hide_dotfiles and is_hidden(target.segments):
            raise PathRefused(404, "hidden name (see --dotfiles)")
        path = os.path.join(self.root, *target.segments)
        info = self._stat(path)
        if info is None:
            # /name -> name.html when name does not exist (clean URLs).
            if target.segments and not target.trailing_slash:
                fallback = path + ".html"
                info = self._stat(fallback)
                if info is not None and stat.S_ISREG(info.st_mode):
                    return Resolved("file", self._checked(fallback))
            raise PathRefused(404, "no such file")
        if stat.S_ISDIR(info.st_mode):
            checked = self._checked(path)
            if not target.trailing_slash and target.segments:
                return Resolved("redirect", location=redirect_location(target))
            index = os.path.join(path, self.index)
            index_info = self._stat(index)
            if index_info is not None and stat.S_ISREG(index_info.st_mode):
                return Resolved("file", self._checked(index))
            return Resolved("directory", checked)
        if stat.S_ISREG(info.st_mode):
            if target.trailing_slash:
                raise PathRefused(404, "not a directory")
            return Resolved("file", self._checked(path))
        raise PathRefused(404, "not a regular file")

    def existing_file(self, path: str) -> str | None:
        """The path to open for a regular file at *path* (a precompressed sibling); None when none may be served."""
        info = self._stat(path)
        if info is None or not stat.S_ISREG(info.st_mode):
            return None
        try:
            return self._checked(path)
        except PathRefused:
            return None

    @staticmethod
    def _stat(path: str) -> os.stat_result | None:
        try:
            return os.stat(path)
        except (OSError, ValueError):
            return None

    def _checked(self, path: str) -> str:
        """*path* if no link on it leads astray; the real path is what will be opened."""
        real = os.path.realpath(path)
        if real == path:
            return path
        if not self.follow_symlinks:
            raise PathRefused(404, "symbolic link (see --follow-symlinks)")
        if real == self.root:
            return real
        inside = self.root.rstrip("/") + "/"
        if not real.startswith(inside):
            # 404 as for a missing file: 403 here would tell which files exist outside the root.
            raise PathRefused(404, "symbolic link leads outside the root")
        if self.hide_dotfiles and is_hidden(real[len(inside):].split("/")):
            raise PathRefused(404, "symbolic link leads to a hidden name (see --dotfiles)")
        return real
