"""Conditional requests (RFC 9110 section 13): preconditions, in the order section 13.2.2 gives them.

For a GET or HEAD of one representation (its entity tag and modification
time): ``If-Match`` (else ``If-Unmodified-Since``) can fail with 412, then
``If-None-Match`` (else ``If-Modified-Since``) can answer 304; ``If-Range``
decides whether a ``Range`` applies.  A date that is not a valid HTTP date
is ignored, as the RFC asks; so is an ``If-Modified-Since`` after a
``If-None-Match``, and an ``If-Unmodified-Since`` after an ``If-Match``.
"""

from __future__ import annotations

from servers.http.dates import parse_http_date


def _candidates(header: bytes) -> list[str]:
    return [candidate.strip() for candidate in header.decode("latin-1").split(",")]


def etag_matches(header: bytes, etag: str) -> bool:
    """True when the ``If-None-Match`` list *header* names *etag* (weak comparison) or is ``*``."""
    if header.strip() == b"*":
        return True
    wanted = etag.removeprefix("W/")
    return any(candidate.removeprefix("W/") == wanted for candidate in _candidates(header))


def etag_matches_strongly(header: bytes, etag: str) -> bool:
    """True when the ``If-Match`` list *header* names *etag* (strong comparison: no ``W/``) or is ``*``."""
    if header.strip() == b"*":
        return True
    return not etag.startswith("W/") and etag in _candidates(header)


def _date(header: bytes) -> int | None:
    return parse_http_date(header.decode("latin-1"))


def precondition_status(fields: dict[bytes, bytes], etag: str, mtime: int) -> int | None:
    """412 or 304 when the request's preconditions decide the answer to a GET or HEAD; None to go on."""
    if_match = fields.get(b"if-match")
    if if_match is not None:
        if not etag_matches_strongly(if_match, etag):
            return 412
    elif (if_unmodified_since := fields.get(b"if-unmodified-since")) is not None:
        since = _date(if_unmodified_since)
        if since is not None and mtime > since:
            return 412
    if_none_match = fields.get(b"if-none-match")
    if if_none_match is not None:
        return 304 if etag_matches(if_none_match, etag) else None
    if_modified_since = fields.get(b"if-modified-since")
    if if_modified_since is not None:
        since = _date(if_modified_since)
        if since is not None and mtime <= since:
            return 304
    return None


def if_range_holds(if_range: bytes | None, etag: str, mtime: int) -> bool:
    """True when there is no ``If-Range``, or it names the current representation.

    An entity tag must match strongly (a weak one never does); a date must
    equal the modification time exactly (RFC 9110 section 13.1.5).
    """
    if if_range is None:
        return True
    value = if_range.strip(b" \t")
    if value.startswith((b'"', b"W/")):
        return not etag.startswith("W/") and value.decode("latin-1") == etag
    return _date(value) == mtime
