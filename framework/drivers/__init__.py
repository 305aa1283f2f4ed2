"""Drivers run one :class:`~framework.protocol.Protocol` over one connected socket.

* :mod:`framework.drivers.blocking` — one connection per call, the calling
  thread blocks (in ``poll``, with deadlines) until the connection is over.
  Used by the iterative, forking, threading and pre-forked strategies.
* :mod:`framework.drivers.nonblocking` — many connections in one event loop.
  Used by the poll strategy.

Both use :func:`framework.drivers.common.sendfile_some` for file bodies.
"""
