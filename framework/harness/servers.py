"""The servers one test starts: started by target and ``forkthread serve`` options, then stopped and checked together.

:class:`ServerGroup` is what the pytest plugin's ``forkthread_server``
fixture is made of (and what the project's own ``serve`` fixture uses):
:meth:`ServerGroup.start` runs a server under the test's strategy and
returns a :class:`ServerHandle`; :meth:`ServerGroup.finish` stops every
server and runs the checks of :mod:`~framework.harness.checks`.  Whether a
strategy can carry a server is asked of the framework
(:meth:`framework.server.Server.refusal`), with the options parsed exactly
as ``forkthread serve`` parses them.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Mapping
from signal import SIGTERM

from framework.harness.checks import leftover_problems, log_problems, socket_file_problems, stop_problems
from framework.harness.process import ServerProcess, child_env
from framework.harness.proctree import proc_children
from framework.server import DEFAULT_GRACEFUL_TIMEOUT, Server

#: Options a server gets unless the test gives its own: a short graceful stop (a test that
#: leaves a connection open waits this long at teardown), and a pool of two under preforked.
DEFAULT_OPTIONS: Mapping[str, object] = {"graceful_timeout": 5}
STRATEGY_DEFAULTS: Mapping[str, Mapping[str, object]] = {"preforked": {"workers": 2}}
#: Seconds beyond the graceful timeout that a stop may take on a loaded machine before it is a hang.
STOP_SLACK = 10.0


class StrategyRefused(Exception):
    """The strategy cannot carry this server (the reason is the message): a skip, not a failure."""


def target_name(target: type[Server] | str) -> str:
    """``module:Class`` for a :class:`~framework.server.Server` subclass; text (``module:Class``, a name) as given."""
    if isinstance(target, str):
        return target
    if target.__module__ == "__main__" or "<locals>" in target.__qualname__:
        raise ValueError(f"{target.__qualname__} must be defined at the top level of an importable module:"
                         " the server process imports it by name")
    return f"{target.__module__}:{target.__qualname__}"


def option_words(options: Mapping[str, object]) -> list[str]:
    """``forkthread serve`` words for *options* by long name: ``max_connections=3`` -> ``--max-connections 3``.

    True gives the bare flag, False and None leave the option out, a list
    or tuple repeats it.
    """
    words: list[str] = []
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            words.append(flag)
        elif value is None or value is False:
            continue
        elif isinstance(value, list | tuple):
            for item in value:
                words += [flag, str(item)]
        else:
            words += [flag, str(value)]
    return words


def refusal(target: type[Server] | str, strategy: str, words: list[str]) -> str | None:
    """Why *strategy*, with the options in *words*, cannot carry *target*; None when it can (or it cannot be told).

    The framework's rule (:func:`framework.cli.strategy_refusal`).  A target
    that does not load or options that do not parse are left to the server
    process, whose own standard error then says what is wrong.
    """
    from framework.cli import UsageError, load_server_target, serve_arguments, strategy_refusal
    from framework.registry import UnknownServerError, server_class

    try:
        if isinstance(target, type):
            cls = target
        else:
            cls = load_server_target(target) if ":" in target else server_class(target)
        serve_arguments(cls, words)
    except (UsageError, UnknownServerError, ValueError):
        return None
    try:
        return strategy_refusal(cls, strategy, words)
    except Exception as exc:  # a strategy this Python cannot run (its module or options refuse)
        return f"strategy {strategy!r} cannot run here: {exc}"


class ServerHandle:
    """A running server, as a test sees it: where it listens, how to talk to it, how to stop it."""

    def __init__(self, process: ServerProcess, strategy: str, *, tls: bool, stop_timeout: float) -> None:
        #: The underlying process runner (its ``proc``, ``argv``, ``tree()``...).
        self.process = process
        #: The strategy it runs under.
        self.strategy = strategy
        #: Seconds a graceful stop may take: the server's graceful timeout, plus slack for a loaded machine.
        self.stop_timeout = stop_timeout
        self._tls = tls

    @property
    def address(self) -> str:
        """The address as the ``listening on`` line printed it (``127.0.0.1:41234``, ``unix:/tmp/.../server.sock``)."""
        return self.process.address

    @property
    def pid(self) -> int:
        """The server's process id (the master, under a pre-forked pool)."""
        return self.process.pid

    @property
    def log(self) -> str:
        """What the server wrote to standard error so far."""
        return self.process.log()

    def connect(self, timeout: float | None = 10.0, *, tls: bool | None = None) -> socket.socket:
        """A connected client socket (TCP or Unix, as bound); TLS-wrapped when the server speaks TLS.

        ``tls=False`` gives the bare socket (to test the handshake yourself);
        the TLS client checks no certificate: it is a test's client.
        """
        sock = self.process.connect(timeout)
        if not (self._tls if tls is None else tls):
            return sock
        from framework.tls import client_context

        try:
            return client_context(insecure=True).wrap_socket(sock)
        except BaseException:
            sock.close()
            raise

    def stop(self, timeout: float | None = None) -> int:
        """Stop gracefully (SIGTERM) and return the exit status; the test then owns the verdict on it."""
        status = self.process.stop(SIGTERM, timeout=timeout or self.stop_timeout)
        self.process.expected_status = status
        return status

    def signal(self, signum: int) -> None:
        """Send *signum* to the server process."""
        self.process.send_signal(signum)


class ServerGroup:
    """Every server one test starts, stopped and checked at its end (:meth:`finish`)."""

    def __init__(self, strategy: str | None = None, *, expect_errors: bool = False) -> None:
        self.strategy = strategy
        self.expect_errors = expect_errors
        # Children this process had before the test: not the test's to account for.
        self._keep = frozenset(proc_children(os.getpid()))
        self._entries: list[tuple[ServerProcess, float, bool, str | None]] = []
        self._directories: list[str] = []
        self._finished = False

    def add(self, process: ServerProcess, stop_timeout: float, *, check_log: bool = False,
            socket_path: str | None = None) -> ServerProcess:
        """Take *process* into the group: it is stopped (within *stop_timeout*) and checked at the end."""
        self._entries.append((process, stop_timeout, check_log, socket_path))
        return process

    def start(self, target: type[Server] | str, *, bind: str = "127.0.0.1:0", expect_errors: bool = False,
              start_timeout: float = 20.0, **options: object) -> ServerHandle:
        """Run *target* (a Server subclass or ``module:Class``) under this group's strategy; see the plugin's docs.

        ``bind="unix"`` binds a fresh Unix socket path.  Raises
        :class:`StrategyRefused` when the strategy cannot carry the server,
        and :class:`~framework.harness.process.ServerStartError` (with the
        server's standard error) when it does not start.
        """
        strategy = self.strategy or "iterative"
        merged = {**DEFAULT_OPTIONS, **STRATEGY_DEFAULTS.get(strategy, {}), **options}
        words = option_words(merged)
        reason = refusal(target, strategy, words)
        if reason is not None:
            raise StrategyRefused(reason)
        socket_path = None
        if bind == "unix":
            directory = tempfile.mkdtemp(prefix="forkthread-")
            self._directories.append(directory)
            socket_path = os.path.join(directory, "server.sock")
            bind = f"unix:{socket_path}"
        # faulthandler: a server that will not stop is made to show its threads' stacks.
        process = ServerProcess(target_name(target), *words, strategy=strategy, bind=bind,
                                env=child_env(PYTHONFAULTHANDLER="1"), start_timeout=start_timeout)
        graceful = merged.get("graceful_timeout")
        stop_timeout = (DEFAULT_GRACEFUL_TIMEOUT if graceful is None else float(str(graceful))) + STOP_SLACK
        handle = ServerHandle(process, strategy, tls=bool(merged.get("tls_cert")), stop_timeout=stop_timeout)
        self.add(process, stop_timeout, check_log=not (expect_errors or self.expect_errors),
                 socket_path=socket_path)
        return handle

    def finish(self) -> list[str]:
        """Stop every server, run the checks, clean up; return the problems found (the first call only: later, [])."""
        if self._finished:
            return []
        self._finished = True
        problems: list[str] = []
        for process, stop_timeout, check_log, socket_path in self._entries:
            try:
                stopped = stop_problems(process, stop_timeout)
                problems += stopped
                if check_log and not stopped:  # a failed stop shows the log already
                    problems += log_problems(process.log())
                if socket_path is not None:
                    problems += socket_file_problems(socket_path)
            finally:
                process.close()
        if self._entries:
            problems += leftover_problems(self._keep)
        for directory in self._directories:
            shutil.rmtree(directory, ignore_errors=True)
        return problems
