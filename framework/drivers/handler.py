"""Blocking handlers: a ``socketserver`` request handler runs unchanged over one connection.

A server may name a handler class (``handler = MyHandler``, a subclass of the
standard library's :class:`socketserver.BaseRequestHandler`, such as
:class:`socketserver.StreamRequestHandler`) instead of a protocol.  The
handler is called exactly as ``socketserver`` calls it,
``handler(request, client_address, server)``: its constructor runs
``setup()``, ``handle()`` and ``finish()`` in the calling thread, reading and
writing the connected socket itself and blocking as long as it likes.  Only
strategies that give every connection a thread of its own carry it
(:meth:`framework.strategies.base.Strategy.carries_blocking_handlers`).

The framework keeps its promises around the handler, not inside it:

* **Time limits.**  The socket is blocking with a timeout
  (``sock.settimeout(timeout)``, ``--timeout``), so a silent peer makes the
  handler's read raise :class:`TimeoutError`, which ends the connection
  quietly.  A handler class's own ``timeout`` attribute
  (``StreamRequestHandler.timeout``) wins, as in ``socketserver``.
* **The graceful stop** (:class:`~framework.drivers.watch.ConnectionWatch`:
  a helper thread of the process, started only when a stop begins while
  handlers run).  Once a
  stop began, a connection idle for :data:`~framework.drivers.common.STOP_IDLE_GRACE` seconds (nothing
  received or sent, nothing queued: see the watch) sees
  end-of-input: its reading side is shut down, so a
  handler waiting in ``readline`` for the next request gets ``b""`` and
  returns, as if the client had closed; bytes already received are still
  read first, and writing still works, so a response in progress is
  completed.  A connection still receiving keeps going.  At the graceful
  deadline every connection still served is shut down in both directions:
  a read returns ``b""``, a write fails with ``EPIPE`` (a quiet end).
* **Signals in the main thread.**  A handler in the main thread (iterative,
  a forking child, an iterative pre-forked worker) never polls the wakeup
  pipe, so while it runs the same helper thread runs the signal actions
  (SIGTERM starts the stop, SIGUSR1 logs the status line); the first signal
  starts it, from :attr:`framework.signals.SignalDispatcher.on_record`.
  Signals must reach the main thread: threads a handler starts should be
  started with them blocked (:func:`framework.signals.start_thread_without_signals`),
  as the framework's own threads are.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

from framework.drivers.common import LINGER_MAX_BYTES, RECV_SIZE
from framework.drivers.watch import ConnectionWatch

#: What a server's ``handler`` is called as: ``handler(request, client_address, server)``.
HandlerClass = Callable[[socket.socket, object, object], object]


def run_handler(handler: HandlerClass, request: socket.socket, server: object, *, timeout: float | None,
                watch: ConnectionWatch, main_thread: bool) -> None:
    """Run *handler* over the connected *request* in the calling thread, as ``socketserver`` does.

    *request* is whatever socket the server hands the handler (a TLS socket
    later, a plain one now); *server* becomes the handler's ``self.server``.
    ``client_address`` is the peer's address as ``accept()`` reports it (a
    tuple for TCP, ``''`` or a path for a Unix socket).  Whatever the handler
    raises propagates; the caller closes *request* (:func:`close_request`).
    """
    request.settimeout(timeout)  # blocking, with the idle limit on every call
    client_address = request.getpeername()
    watch.attach(request, main_thread)
    try:
        handler(request, client_address, server)
    finally:
        watch.detach(request, main_thread)


def close_request(request: socket.socket) -> None:
    """End a handler's connection as ``socketserver.shutdown_request`` does, then close it.

    The sending side is shut down first (the peer reads end-of-file after
    everything written), and input that already arrived unread is discarded
    without waiting, so the close sends FIN rather than a reset.
    """
    try:
        request.shutdown(socket.SHUT_WR)
        request.setblocking(False)
        budget = LINGER_MAX_BYTES
        while budget > 0 and (data := request.recv(RECV_SIZE)):
            budget -= len(data)
    except OSError:
        pass  # nothing more to read now, or the peer is gone: nothing left to protect
    finally:
        request.close()
