"""The floor of each model: the least a Python server does, ``python -P floor_peer.py KIND [--bind H:P]``.

KIND is one of :data:`KINDS`, ``floor-{iterative,threads,forks}-nbytes``:

* ``iterative``: one thread, ``accept`` then serve, in a loop (beside the
  main thread, which only waits for the stop).
* ``threads``: :data:`THREADS` threads, each in that loop, all waiting in
  ``accept`` on the one listener (the kernel wakes one per connection).
* ``forks``: a parent and as many forked children as the machine has CPUs,
  each in that loop on the inherited listener (Stevens §30.6).

Each connection gets UNP ch. 30's exchange, as :mod:`servers.nbytes` serves
it: read ``COUNT\\n``, send COUNT bytes, close (or say ``error:`` and close).
Nothing else: no admission, no time limit, no counters, no logging, no
error handling beyond ending the connection.  A server of the framework costs at least this much
per connection in its model, and the distance between the two is what the
framework adds.  These are measurements, not servers to use: a client that
never sends its line holds a thread (or a child) for good.

Run by path (``-P``: its folder stays off the import path) for the reason
:mod:`framework.bench.socketserver_peer` gives: a forked child's cost grows
with what its parent imported, and this program imports :mod:`socket`,
:mod:`signal` and :mod:`threading` alone.  Like every lab server it prints
``listening on HOST:PORT``; on SIGTERM it ends its children and waits for
them, so that their CPU is charged to it.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading

_CHUNK = (bytes(range(ord("a"), ord("z") + 1)) * 2521)[:65536]

#: Threads of ``floor-threads``: the prethreaded strategy's default ``--threads``.
THREADS = 8
#: Every KIND this program serves.
KINDS = [f"floor-{model}-nbytes" for model in ("iterative", "threads", "forks")]
#: The most a request line may hold before the connection is ended.
LINE_MAX = 32


def serve_one(conn: socket.socket) -> None:
    """UNP ch. 30's exchange on *conn*: read ``COUNT\\n``, send COUNT bytes; then close it."""
    with conn:
        line = b""
        while not line.endswith(b"\n") and len(line) < LINE_MAX:
            data = conn.recv(LINE_MAX)
            if not data:
                return
            line += data
        if not line.strip().isdigit():
            conn.sendall(b"error: expected a decimal byte count and a newline\r\n")
            conn.shutdown(socket.SHUT_WR)  # the answer first: a close with input unread resets
            return
        count = int(line)
        while count > 0:
            piece = min(count, len(_CHUNK))
            conn.sendall(_CHUNK[:piece])
            count -= piece


def accept_loop(listener: socket.socket) -> None:
    """Accept and serve, one connection at a time, until the listener is shut down."""
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return  # shut down: the stop
        try:
            serve_one(conn)
        except OSError:
            pass  # the client went away: the next one


def main(argv: list[str]) -> int:
    """``KIND [--bind HOST:PORT]``: listen, say where, serve until SIGTERM or SIGINT."""
    if len(argv) not in (1, 3) or argv[0] not in KINDS or (len(argv) == 3 and argv[1] != "--bind"):
        print(f"usage: python -P floor_peer.py {{{','.join(KINDS)}}} [--bind HOST:PORT]", file=sys.stderr)
        return 2
    host, _, port = (argv[2] if len(argv) == 3 else "127.0.0.1:0").rpartition(":")
    model = argv[0].split("-")[1]
    listener = socket.create_server((host, int(port)), backlog=1024)
    # The stop: signals are held here and taken with sigwait, so no accept is interrupted.
    stops = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stops)
    children: list[int] = []
    if model == "forks":
        for _ in range(os.cpu_count() or 1):
            pid = os.fork()
            if pid == 0:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, stops)  # default action: the parent's SIGTERM ends it
                accept_loop(listener)
                os._exit(0)
            children.append(pid)
    else:
        for _ in range(THREADS if model == "threads" else 1):
            threading.Thread(target=accept_loop, args=(listener,), daemon=True).start()
    print(f"listening on {host}:{listener.getsockname()[1]}", flush=True)
    signal.sigwait(stops)
    for pid in children:
        os.kill(pid, signal.SIGTERM)
    for pid in children:
        os.waitpid(pid, 0)
    listener.shutdown(socket.SHUT_RD)  # ends every thread's accept
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
