"""What to answer to one request head: the static-file site, independent of connections.

:class:`StaticSite` holds the configuration (root, listing, symbolic links)
and the shared :class:`~servers.http.files.FileCache`; :meth:`StaticSite.respond`
turns a parsed GET or HEAD into a :class:`Response`: a head to write and,
for a file, the segment to ``sendfile``.
"""

from __future__ import annotations

import dataclasses
import mimetypes
import os
from urllib.parse import unquote

from servers.http import responses
from servers.http.conditional import not_modified
from servers.http.files import FileCache, FileEntry, NotServable
from servers.http.listing import listing_page
from servers.http.parser import RequestHead
from servers.http.paths import PathRefused, PathResolver, Resolved, url_path
from servers.http.ranges import Unsatisfiable, parse_range


@dataclasses.dataclass(slots=True)
class Response:
    """One response: *head* (and any small generated *body* already appended), then a file segment."""

    status: int
    head: bytes
    #: Bytes of body the response carries (for the access log), whether written or sent from a file.
    body_size: int = 0
    file: FileEntry | None = None
    offset: int = 0
    count: int = 0


class StaticSite:
    """Serves the files under *root*; see :mod:`servers.http.paths` for what may be reached."""

    def __init__(self, root: str, *, listing: bool = False, follow_symlinks: bool = False,
                 cache: FileCache | None = None) -> None:
        if not os.path.isdir(root):
            raise ValueError(f"--root {root!r} is not a directory")
        mimetypes.init()
        self.resolver = PathResolver(root, follow_symlinks=follow_symlinks)
        self.listing = listing
        self.cache = cache if cache is not None else FileCache()

    @property
    def root(self) -> str:
        """The document root (its real path)."""
        return self.resolver.root

    def respond(self, request: RequestHead, keep_alive: bool) -> Response:
        """The response to a GET or HEAD *request*."""
        with_body = request.method == b"GET"
        key = request.target.partition(b"?")[0]
        entry = self.cache.get(key)
        if entry is None:
            try:
                target = url_path(request.target)
                resolved = self.resolver.resolve(target)
                if resolved.kind == "file":
                    entry = self.cache.open(key, resolved.path)
                else:
                    return self._not_a_file(resolved, target.raw_path, keep_alive, with_body)
            except PathRefused as refused:
                return error(refused.status, keep_alive, with_body)
            except NotServable:
                return error(404, keep_alive, with_body)
        return self._file(request, entry, keep_alive, with_body)

    def _not_a_file(self, resolved: Resolved, raw_path: str, keep_alive: bool, with_body: bool) -> Response:
        if resolved.kind == "redirect":
            return error(301, keep_alive, with_body, extra=f"Location: {resolved.location}\r\n")
        if not self.listing:
            return error(404, keep_alive, with_body)
        try:
            page = listing_page(resolved.path, unquote(raw_path))
        except OSError:
            return error(404, keep_alive, with_body)
        return Response(200, responses.html_response(200, page, keep_alive=keep_alive, with_body=with_body),
                        len(page) if with_body else 0)

    @staticmethod
    def _file(request: RequestHead, entry: FileEntry, keep_alive: bool, with_body: bool) -> Response:
        fields = request.fields
        validators = f"Last-Modified: {entry.last_modified}\r\nETag: {entry.etag}\r\n"
        if (b"if-none-match" in fields or b"if-modified-since" in fields) \
                and not_modified(fields, entry.etag, entry.mtime):
            return Response(304, responses.head(304, validators, keep_alive=keep_alive))
        size = entry.size
        status, first, count = 200, 0, size
        extra = ""
        range_header = fields.get(b"range")
        if range_header is not None and with_body and _if_range_holds(fields.get(b"if-range"), entry):
            try:
                span = parse_range(range_header, size)
            except Unsatisfiable:
                return error(416, keep_alive, with_body, extra=f"Content-Range: bytes */{size}\r\n")
            if span is not None:
                first, last = span
                status, count = 206, last - first + 1
                extra = f"Content-Range: bytes {first}-{last}/{size}\r\n"
        headers = (f"Content-Type: {entry.content_type}\r\nContent-Length: {count}\r\n{validators}"
                   f"Accept-Ranges: bytes\r\n{extra}")
        head = responses.head(status, headers, keep_alive=keep_alive)
        if not with_body:
            return Response(status, head)
        return Response(status, head, count, entry, first, count)


def _if_range_holds(if_range: bytes | None, entry: FileEntry) -> bool:
    """True when there is no ``If-Range``, or it names the current version (by ETag or date)."""
    if if_range is None:
        return True
    value = if_range.decode("latin-1").strip()
    return value in (entry.etag, entry.last_modified)


def error(status: int, keep_alive: bool, with_body: bool = True, *, extra: str = "") -> Response:
    """An error (or redirect) response with its small text body."""
    payload = responses.error_response(status, keep_alive=keep_alive, with_body=with_body, extra=extra)
    return Response(status, payload, len(responses.error_body(status)) if with_body else 0)
