"""A static-file HTTP/1.1 server: ``forkthread serve http --root DIR``.

The modules, one job each: :mod:`~servers.http.parser` (request heads),
:mod:`~servers.http.paths` (target to file, safely), :mod:`~servers.http.files`
(open files and their metadata, cached), :mod:`~servers.http.site` (what a
request gets), :mod:`~servers.http.plain` (responses reused for plain
requests), :mod:`~servers.http.responses` and :mod:`~servers.http.dates`
(bytes on the wire), :mod:`~servers.http.conditional` and
:mod:`~servers.http.ranges`, :mod:`~servers.http.listing`,
:mod:`~servers.http.access_log`, :mod:`~servers.http.protocol` (the
connection) and :mod:`~servers.http.server` (the command line).
"""

from servers.http.server import HttpServer

__all__ = ["HttpServer"]
