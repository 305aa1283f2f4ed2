"""What to answer to one request head: the static-file site, independent of connections.

:class:`StaticSite` holds the configuration (root, listing, symbolic links,
``Cache-Control``) and the shared :class:`~servers.http.files.FileCache`;
:meth:`StaticSite.respond` turns a parsed GET or HEAD into a :class:`Response`:
a head to write (with the body after it, for a small file: one ``send``)
and, for a larger file, the segment (or, for several ranges, the segments)
to ``sendfile``.

For a file, in this order: the representation is chosen (the file, or a
precompressed sibling the client accepts: :mod:`~servers.http.coding`); its
preconditions are evaluated (:mod:`~servers.http.conditional`: 412 or 304);
then its ranges (:mod:`~servers.http.ranges`: 206, multipart when several).
Validators, ranges and lengths are those of the representation sent.
"""

from __future__ import annotations

import dataclasses
import mimetypes
import os
from typing import TYPE_CHECKING
from urllib.parse import unquote

from servers.http import plain, responses
from servers.http.coding import Siblings, choose_coding
from servers.http.conditional import if_range_holds, precondition_status
from servers.http.files import FileCache, FileEntry, NotServable
from servers.http.listing import listing_page
from servers.http.multipart import byteranges
from servers.http.parser import RequestHead
from servers.http.paths import PathRefused, PathResolver, Resolved, Target, url_path
from servers.http.ranges import Unsatisfiable, parse_ranges

if TYPE_CHECKING:
    from servers.http.protocol import HttpProtocol

_VARY = "Vary: Accept-Encoding\r\n"
# The fields that make a request conditional (RFC 9110 section 13.1).
_PRECONDITIONS = frozenset({b"if-match", b"if-none-match", b"if-modified-since", b"if-unmodified-since"})


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
    #: For ``multipart/byteranges``: each part's head and file segment (instead of *offset* and
    #: *count*), then *tail*.
    parts: list[tuple[bytes, int, int]] | None = None
    tail: bytes = b""


class StaticSite:
    """Serves the files under *root*; see :mod:`servers.http.paths` for what may be reached.

    *cache_control*, when given, is the ``Cache-Control`` value of every
    successful response (200, 206, 304); it must already be a valid field value.
    The :class:`~servers.http.protocol.Responder` of the static server.
    """

    #: GET and HEAD are answered at once; request bodies are skipped by the connection.
    answers_later = False

    def __init__(self, root: str, *, listing: bool = False, follow_symlinks: bool = False, dotfiles: str = "deny",
                 cache: FileCache | None = None, cache_control: str | None = None) -> None:
        if not os.path.isdir(root):
            raise ValueError(f"--root {root!r} is not a directory")
        mimetypes.init()
        self.resolver = PathResolver(root, follow_symlinks=follow_symlinks, dotfiles=dotfiles)
        self.listing = listing
        self.cache = cache if cache is not None else FileCache()
        self.siblings = Siblings(self.resolver.existing_file)
        self.cache_control = f"Cache-Control: {cache_control}\r\n" if cache_control else ""

    @property
    def root(self) -> str:
        """The document root (its real path)."""
        return self.resolver.root

    def answer(self, connection: HttpProtocol, request: RequestHead, keep_alive: bool) -> None:
        """Write the response to a GET or HEAD *request* on *connection*, and log it."""
        response = self.respond(request, keep_alive)
        transport = connection.transport
        transport.write(response.head)
        if response.file is not None:
            if response.parts is None:
                transport.sendfile(response.file, response.offset, response.count)
            else:
                for part_head, offset, count in response.parts:
                    transport.write(part_head)
                    transport.sendfile(response.file, offset, count)
                transport.write(response.tail)
        access_log = connection.access_log
        if access_log is not None:
            access_log.log(transport.peer, request.request_line, response.status, response.body_size)

    def respond(self, request: RequestHead, keep_alive: bool) -> Response:
        """The response to a GET or HEAD *request*."""
        with_body = request.method == b"GET"
        raw = request.target
        key = raw.partition(b"?")[0] if b"?" in raw else raw  # no tuple made when there is no query
        entry = self.cache.get(key)
        if entry is None:
            try:
                target = url_path(request.target)
                resolved = self.resolver.resolve(target)
                if resolved.kind == "file":
                    entry = self.cache.open(key, resolved.path)
                else:
                    return self._not_a_file(resolved, target, keep_alive, with_body)
            except PathRefused as refused:
                return error(refused.status, keep_alive, with_body)
            except NotServable:
                return error(404, keep_alive, with_body)
        if not plain.is_plain(request.fields):
            return self._file(request, entry, keep_alive, with_body)
        # Built once a second per variant, not per request (see servers.http.plain).
        which = plain.variant(keep_alive, with_body)
        response: Response | None = plain.kept(entry, which)
        if response is None:
            response = self._file(request, entry, keep_alive, with_body)
            plain.keep(entry, which, response)
        return response

    def _not_a_file(self, resolved: Resolved, target: Target, keep_alive: bool, with_body: bool) -> Response:
        if resolved.kind == "redirect":
            return error(301, keep_alive, with_body, extra=f"Location: {resolved.location}\r\n")
        if not self.listing:
            return error(404, keep_alive, with_body)
        try:
            # An entry is named only if a request for it would be served: one rule for both.
            base = target.raw_path if target.raw_path.endswith("/") else target.raw_path + "/"
            page = listing_page(resolved.path, unquote(target.raw_path),
                                lambda href: self.resolver.servable((base + href).encode("ascii")))
        except OSError:
            return error(404, keep_alive, with_body)
        return Response(200, responses.html_response(200, page, keep_alive=keep_alive, with_body=with_body,
                                                     extra=self.cache_control),
                        len(page) if with_body else 0)

    def _representation(self, fields: dict[bytes, bytes],
                        entry: FileEntry) -> tuple[FileEntry, str, str | None, str]:
        """What to send for *entry*: the file itself or a precompressed sibling.

        Returns its file, its entity tag, its coding (None for the file as it
        is) and the ``Vary`` line the choice calls for ("" when there was none
        to make).  A tuple, not an object: this is on every request's path.
        """
        siblings = self.siblings.of(entry.path)
        if not siblings:
            return entry, entry.etag, None, ""
        coding = choose_coding(fields.get(b"accept-encoding"), [name for name, _ in siblings])
        if coding is not None:
            path = dict(siblings)[coding]
            key = f"\0{coding}\0{path}".encode("utf-8", "surrogateescape")  # no request target holds a NUL
            try:
                sibling = self.cache.get(key) or self.cache.open(key, path)
            except NotServable:
                pass  # gone since it was found: the file itself will do
            else:
                # Its own tag, told apart from the file's even if their times and sizes agree.
                return sibling, f'{sibling.etag[:-1]}-{coding}"', coding, _VARY
        return entry, entry.etag, None, _VARY

    def _file(self, request: RequestHead, entry: FileEntry, keep_alive: bool, with_body: bool) -> Response:
        fields = request.fields
        file, etag, coding, vary = self._representation(fields, entry)
        validators = f"Last-Modified: {file.last_modified}\r\nETag: {etag}\r\n{vary}{self.cache_control}"
        if not _PRECONDITIONS.isdisjoint(fields):
            status = precondition_status(fields, etag, file.mtime)
            if status == 304:
                return Response(304, responses.head(304, validators, keep_alive=keep_alive))
            if status is not None:
                return error(status, keep_alive, with_body)
        size = file.size
        spans = None
        range_header = fields.get(b"range")
        if range_header is not None and with_body \
                and if_range_holds(fields.get(b"if-range"), etag, file.mtime):
            try:
                spans = parse_ranges(range_header, size)
            except Unsatisfiable:
                return error(416, keep_alive, with_body, extra=f"Content-Range: bytes */{size}\r\n")
        encoding = f"Content-Encoding: {coding}\r\n" if coding else ""
        common = f"{validators}{encoding}Accept-Ranges: bytes\r\n"
        if spans is None:
            head = responses.head(200, f"Content-Type: {entry.content_type}\r\nContent-Length: {size}\r\n{common}",
                                  keep_alive=keep_alive)
            if not with_body:
                return Response(200, head)
            if file.body is not None:
                # A small file is in memory: head and body go out in one send, not a send and a sendfile.
                return Response(200, head + file.body, size)
            return Response(200, head, size, file, 0, size)
        if len(spans) == 1:
            ((first, last),) = spans
            count = last - first + 1
            head = responses.head(206, f"Content-Type: {entry.content_type}\r\nContent-Length: {count}\r\n"
                                  f"{common}Content-Range: bytes {first}-{last}/{size}\r\n", keep_alive=keep_alive)
            if file.body is not None:
                return Response(206, head + file.body[first:first + count], count)
            return Response(206, head, count, file, first, count)
        frame = byteranges(spans, entry.content_type, size)
        head = responses.head(206, f"Content-Type: {frame.content_type}\r\nContent-Length: {frame.length}\r\n"
                              f"{common}", keep_alive=keep_alive)
        return Response(206, head, frame.length, file, parts=frame.parts, tail=frame.tail)


def error(status: int, keep_alive: bool, with_body: bool = True, *, extra: str = "") -> Response:
    """An error (or redirect) response with its small text body."""
    payload = responses.error_response(status, keep_alive=keep_alive, with_body=with_body, extra=extra)
    return Response(status, payload, len(responses.error_body(status)) if with_body else 0)
