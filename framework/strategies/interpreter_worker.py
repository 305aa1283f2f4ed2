"""One worker of the ``interpreters`` strategy, as it runs inside its own sub-interpreter.

The supervising main interpreter (:mod:`framework.strategies.interpreters`)
cannot hand a sub-interpreter Python objects, only text and numbers, so a
worker gets a :class:`WorkerSpec` pickled into the code it runs, with
descriptors *as numbers*: a duplicate of the listener, its end of a channel
(``AF_UNIX`` ``SOCK_SEQPACKET``, as a pre-forked worker's) and a duplicate of
the scoreboard's memory file.  The worker owns those descriptors from then on.

Then it does what a pre-forked worker does after its fork
(:mod:`framework.strategies.prefork_worker`), with the same pieces: it makes
the server again from its import path and arguments, enters its role with
one call (:meth:`~framework.strategies.base.Host.enter_child`: the listener
kept, its scoreboard counters, ``worker_init``), says :data:`READY`, and
serves with its inner strategy (``--worker iterative|threads|poll``).
Signals never reach it (a sub-interpreter cannot handle them); its control
thread obeys what the main interpreter writes on the channel instead:
:data:`STOP`, :data:`STOP_QUICKLY`, :data:`STATUS`.  An uncaught exception
ends the worker and goes back to the main interpreter as text, where it is
logged once.
"""

from __future__ import annotations

import _thread
import contextlib
import dataclasses
import importlib
import logging
import os
import pickle
import select
import socket
import sys
import threading
import time
from typing import Any

from framework.accepting import Acceptor
from framework.signals import Latch
from framework.strategies.base import ChildRole, Strategy
from framework.strategies.prefork_worker import READY, RetireRequest
from framework.strategies.scoreboard import Scoreboard, ScoredConnections

log = logging.getLogger("forkthread")

#: What the main interpreter writes on a worker's channel.
STOP = b"T"
STOP_QUICKLY = b"Q"
STATUS = b"U"
#: At the end, how long the worker waits for the threads of its interpreter to leave.
THREADS_GRACE = 5.0
#: ... and then for the last one's state to be deleted (it leaves the count just before).
THREAD_TEARDOWN = 0.1


@dataclasses.dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs, pickled into the code its interpreter runs."""

    number: int
    slot: int
    #: ``module:qualified.name`` of the server class.
    server: str
    #: ``pickle.dumps((args, kwargs))`` of the server's construction, less the listener and strategy.
    arguments: bytes
    inner: Strategy
    max_requests: int
    listener_fd: int
    channel_fd: int
    board_fd: int
    board_slots: int
    #: The main interpreter's import path and logging (a new interpreter has its own).
    path: list[str]
    log_level: int
    log_format: str | None


def code_for(spec: WorkerSpec) -> str:
    """The source text a worker's interpreter runs."""
    return ("import sys\n"
            f"sys.path[:] = {spec.path!r}\n"
            "from framework.strategies.interpreter_worker import run\n"
            f"run({pickle.dumps(spec)!r})\n")


def run(pickled: bytes) -> None:
    """The whole life of one worker, in its interpreter; an exception that escapes is its death."""
    spec: WorkerSpec = pickle.loads(pickled)
    channel = socket.socket(fileno=spec.channel_fd)
    listener = socket.socket(fileno=spec.listener_fd)
    try:
        board = Scoreboard(spec.board_slots, memory_file=spec.board_fd)
    finally:
        os.close(spec.board_fd)
    try:
        _configure_logging(spec)
        _serve(spec, listener, channel, board)
    finally:
        listener.close()
        channel.close()
        board.close()


def _configure_logging(spec: WorkerSpec) -> None:
    if spec.log_format is not None:
        logging.basicConfig(level=spec.log_level, format=spec.log_format, stream=sys.stderr)
    log.setLevel(spec.log_level)


def server_class(path: str) -> type[Any]:
    """The class at ``module:qualified.name``."""
    module_name, _, qualname = path.partition(":")
    found: Any = importlib.import_module(module_name)
    for name in qualname.split("."):
        found = getattr(found, name)
    return found  # type: ignore[no-any-return]


def _serve(spec: WorkerSpec, listener: socket.socket, channel: socket.socket, board: Scoreboard) -> None:
    args, kwargs = pickle.loads(spec.arguments)
    if kwargs.get("tls") is not None:  # a ContextRecipe: the same files, loaded here
        kwargs["tls"] = kwargs["tls"].make()
    # The server as it was made, on this worker's listener, serving by the inner strategy.
    server = server_class(spec.server)(*args, **kwargs, listener=listener, strategy=spec.inner)
    run = server.enter_child(ChildRole(
        acceptor=Acceptor(listener, shared=True),  # every worker accepts from it
        connections=ScoredConnections(board, spec.slot, RetireRequest.for_limit(channel, spec.max_requests)),
        keep_listener=True,
        strategy=spec.inner,
        worker=True,
    ))
    done = Latch()
    # Both latches make their pipes on demand: the stop latch at a connection's first wait for
    # its peer, this one when the control thread starts.  Made now, every descriptor the worker
    # keeps is open by the time it says "ready" (the workers share the process's descriptor
    # table: a count taken then stays true).
    server.lifecycle.stop_latch.fileno()
    done.fileno()
    channel.send(READY)
    control = threading.Thread(target=_obey, args=(channel, server, spec.number, done),
                               name=f"worker-{spec.number}-control")
    control.start()
    try:
        run.serve()
    finally:
        done.set()
        control.join()
        done.close()
        _wait_for_threads()
        server.server_close()  # its listener (this worker's duplicate), lifecycle and the server's own (an access log)


def _obey(channel: socket.socket, server: Any, number: int, done: Latch) -> None:
    """The worker's control thread: what the main interpreter writes on the channel, done here."""
    lifecycle = server.lifecycle
    poller = select.poll()
    poller.register(channel.fileno(), select.POLLIN)
    poller.register(done.fileno(), select.POLLIN)
    while not done.is_set():
        if not poller.poll():
            continue
        try:
            message = channel.recv(64, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            continue
        except OSError:
            message = b""
        if not message:  # the main interpreter closed our channel: stop
            lifecycle.request_stop(graceful=True)
            return
        if message == STOP:
            lifecycle.request_stop(graceful=True)
        elif message == STOP_QUICKLY:
            lifecycle.request_stop(graceful=False)
        elif message == STATUS:
            with contextlib.suppress(Exception):  # a status line must not end the worker
                log.info("status: worker %d: %s", number, server.status())


def _wait_for_threads() -> None:
    """Wait (boundedly) for every other thread of this interpreter: it cannot be destroyed while one runs.

    The connection watch's helper thread leaves by itself once no connection
    is watched; pool threads have been joined by the inner run.
    """
    deadline = time.monotonic() + THREADS_GRACE
    while _thread._count() > 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    # A thread leaves the count just before its state is cleared and deleted; destroying the
    # interpreter before that is fatal ("Py_EndInterpreter: not the last thread"): let it finish.
    time.sleep(THREAD_TEARDOWN)
