"""Conditional GET (RFC 9110 section 13): does the client already have this version?"""

from __future__ import annotations

from servers.http.dates import parse_http_date


def etag_matches(header: bytes, etag: str) -> bool:
    """True when the ``If-None-Match`` list *header* names *etag* (weak comparison) or is ``*``."""
    text = header.decode("latin-1").strip()
    if text == "*":
        return True
    wanted = etag.removeprefix("W/")
    return any(candidate.strip().removeprefix("W/") == wanted for candidate in text.split(","))


def not_modified(fields: dict[bytes, bytes], etag: str, mtime: int) -> bool:
    """True when a 304 answers the request: ``If-None-Match`` decides first, else ``If-Modified-Since``.

    An ``If-Modified-Since`` that is not a valid date is ignored, as RFC 9110 asks.
    """
    if_none_match = fields.get(b"if-none-match")
    if if_none_match is not None:
        return etag_matches(if_none_match, etag)
    if_modified_since = fields.get(b"if-modified-since")
    if if_modified_since is None:
        return False
    since = parse_http_date(if_modified_since.decode("latin-1"))
    return since is not None and mtime <= since
