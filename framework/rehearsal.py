"""A rehearsal of the serving path, in a process about to fork a child per connection.

CPython (3.11 and later) specializes its bytecode as it runs: a function run
a few times has its instructions rewritten for what they met (an attribute
read straight from an instance's values, a global from a module dictionary
whose version is known, a method of a known class).  A process that forks a
child per connection runs the serving path -- the blocking driver, the
server's bookkeeping around it -- only in its children, once in each, and
each child's specializations end with it: every child runs that path cold.
Cold code costs a forked child twice over.  The specializing attempts
themselves are work; and the generic paths write to pages the child shares
with its parent, each write a page copied: a generic attribute lookup raises
the reference count of the attribute's *name*, and each miss of the
interpreter's type cache replaces an entry, releasing the name it held.

A rehearsal runs the path in the parent first, before the first fork: a few
connections over socket pairs, served through the very code a child runs
once its connection is admitted, so every child inherits it specialized.
Nothing of the server's own runs -- no admission hook, no protocol factory,
no handler of its own -- the protocol and the blocking handler are this
module's; nothing is counted or logged; no descriptor outlives it; and a
rehearsal that meets an error stops, the server none the worse.  (A fault
inside a rehearsal connection would reach ``handle_error`` as any
connection's does; none is expected: both ends are this process's.)  What
it saves a forked child is measured in ``docs/lab.md`` ("The fifth round: a
rehearsal, and what loaded modules cost").
"""

from __future__ import annotations

import socket
from collections.abc import Callable

from framework.protocol import Protocol

#: Connections rehearsed: enough for the interpreter to specialize what they run
#: (CPython 3.11 first quickens a function on its eighth call).
ROUNDS = 20

#: What the rehearsal's client sends: one short request, as most connections bring.
REQUEST = b"rehearsal\n"
#: What the rehearsal's protocol and handler answer it with.
ANSWER = b"ok\n"

#: Serve one rehearsal connection to its end and close it: the server's path after admission.
ServeOne = Callable[[socket.socket, bool], None]


class RehearsalProtocol(Protocol):
    """Answer a request; close the connection itself, or leave that to the peer's end of input."""

    def __init__(self, closes_first: bool) -> None:
        self._closes_first = closes_first

    def data_received(self, data: bytes) -> None:
        """Answer; close at once, or wait for the peer's end of input."""
        self.transport.write(ANSWER)
        if self._closes_first:
            self.transport.close()

    def connection_lost(self, exc: BaseException | None) -> None:
        """Let go of the transport, which holds this protocol: no cycle is left for the collector."""
        del self.transport


class RehearsalHandler:
    """A blocking handler, called as ``socketserver`` calls one: read a request, answer it."""

    def __init__(self, request: socket.socket, client_address: object, server: object) -> None:
        if request.recv(len(REQUEST)):
            request.sendall(ANSWER)


def rehearse(serve_one: ServeOne, rounds: int = ROUNDS) -> int:
    """Serve *rounds* connections over socket pairs with *serve_one*; return how many were served.

    *serve_one(sock, peer_closes)* serves one connection to its end and
    closes *sock*; with *peer_closes* the client has half-closed its side
    after the request.  The client end sends :data:`REQUEST` first and reads
    what comes back after, so nothing ever waits: the answer fits in the
    socket buffer.  An error ends the rehearsal quietly (a server that
    cannot make a socket pair now meets the same limit with its first
    client, and says so there).
    """
    served = 0
    for turn in range(rounds):
        try:
            ours, theirs = socket.socketpair()
        except OSError:
            break
        try:
            peer_closes = turn % 2 == 1
            theirs.sendall(REQUEST)
            if peer_closes:
                theirs.shutdown(socket.SHUT_WR)
            serve_one(ours, peer_closes)
            theirs.setblocking(False)
            while theirs.recv(len(ANSWER) + 1024):
                pass
        except OSError:
            break
        finally:
            ours.close()
            theirs.close()
        served += 1
    return served


__all__ = ["ANSWER", "REQUEST", "ROUNDS", "RehearsalHandler", "RehearsalProtocol", "ServeOne", "rehearse"]
