"""A WSGI server (PEP 3333) on the HTTP core: ``forkthread serve wsgi --app MODULE:CALLABLE``.

The modules, one job each: :mod:`~servers.wsgi.loading` (finding the
application), :mod:`~servers.wsgi.environ` (a request as an environ),
:mod:`~servers.wsgi.input` (``wsgi.input``: the body, spooled),
:mod:`~servers.wsgi.response` (``start_response`` and the bytes on the wire),
:mod:`~servers.wsgi.exchange` (one request: the application called, its
response written, its ``close()`` called) and :mod:`~servers.wsgi.server`
(the command line).  Parsing, limits, smuggling defences, keep-alive and
time limits are those of the static-file server: :mod:`servers.http.protocol`.
"""

from servers.wsgi.server import WsgiServer

__all__ = ["WsgiServer"]
