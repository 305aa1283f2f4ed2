"""Sub-interpreters (PEP 684: each with its own GIL; PEP 734), behind one small interface.

Python 3.14 makes them public as :mod:`concurrent.interpreters`; 3.13 has
the same machinery as the private ``_interpreters`` module, which 3.12 lacks
(and 3.12.1 aborts at exit once ssl, hashlib or asyncio were imported in
one).  This module is the only place that knows which is there:
:func:`unavailable` says why there are none, :class:`Interpreter` creates,
runs code in and destroys one, :func:`exist` tells whether any lives now
without importing anything.  An interpreter is created *isolated*: its own
GIL, its own module state; it refuses ``os.fork``, ``os.exec*``,
``signal.signal`` and daemon threads.
"""

from __future__ import annotations

import sys
from typing import Any

#: The first Python whose isolated sub-interpreters this framework uses.
MINIMUM = (3, 13)


def unavailable() -> str | None:
    """Why this Python has no usable sub-interpreters (one line), or None when it has them."""
    # Here, not at the top: every server imports this module, and a forking server's
    # every connection pays for the size of its heap (the fork copies its page tables).
    import platform

    if sys.version_info < MINIMUM:
        return (f"needs Python {MINIMUM[0]}.{MINIMUM[1]} or newer (sub-interpreters with their own GIL);"
                f" this is Python {platform.python_version()}")
    try:
        _backend()
    except ImportError:
        return f"this Python ({platform.python_version()}, {sys.implementation.name}) has no sub-interpreters"
    return None


def _backend() -> tuple[str, Any]:
    """``("public", concurrent.interpreters)`` where it exists, else ``("private", _interpreters)``."""
    try:
        import concurrent.interpreters as public  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        import _interpreters as private  # type: ignore[import-not-found,unused-ignore]

        return "private", private
    return "public", public


def gil_state() -> str:
    """``enabled``, or ``disabled`` on a free-threaded build running without it (``sys._is_gil_enabled()``)."""
    is_enabled = getattr(sys, "_is_gil_enabled", None)
    return "enabled" if is_enabled is None or is_enabled() else "disabled"


def in_main_interpreter() -> bool:
    """Whether this code runs in the process's main interpreter (the one that handles signals)."""
    if sys.version_info < MINIMUM:
        return True
    try:
        private = _backend_private()
    except ImportError:
        return True
    return bool(private.get_current()[0] == private.get_main()[0])


def _backend_private() -> Any:
    import _interpreters  # type: ignore[import-not-found,unused-ignore]

    return _interpreters


#: ``sys.modules``, bound once: :func:`exist` runs at every fork (per connection under
#: ``forking``), where each object touched is a page copied.
_MODULES = sys.modules

#: The module that makes sub-interpreters: none can exist before it is loaded.
MACHINERY = "_interpreters"


def exist() -> bool:
    """Whether a sub-interpreter exists in this process now (False when the machinery was never imported).

    Forking then would abort the child (CPython issue 139759): :func:`framework.processes.fork` asks
    (first whether :data:`MACHINERY` is in ``sys.modules`` at all: a dictionary test, not a call).
    """
    private = _MODULES.get(MACHINERY)
    return private is not None and len(private.list_all()) > 1


class Interpreter:
    """One isolated sub-interpreter: :meth:`run` code in it (in the calling thread), then :meth:`close`."""

    def __init__(self) -> None:
        self._kind, self._module = _backend()
        if self._kind == "public":
            self._handle: Any = self._module.create()
        else:
            self._handle = self._module.create("isolated")

    def run(self, code: str) -> str | None:
        """Run *code* (source text) to its end in this thread; None, or the uncaught exception's traceback as text.

        Blocks the calling thread (the interpreter runs under its own GIL
        meanwhile).  The code's uncaught exception does not cross back as an
        object: only its text does.
        """
        if self._kind == "public":
            try:
                self._handle.exec(code)
            except self._module.ExecutionFailed as failed:
                return _describe(failed.excinfo)
            return None
        excinfo = self._module.exec(self._handle, code)
        return None if excinfo is None else _describe(excinfo)

    def close(self) -> None:
        """Destroy the interpreter (it must be running no code)."""
        if self._kind == "public":
            self._handle.close()
        else:
            self._module.destroy(self._handle)


def _describe(excinfo: Any) -> str:
    """The traceback of an exception snapshot, or its one-line form when there is no traceback."""
    return str(getattr(excinfo, "errdisplay", None) or getattr(excinfo, "formatted", None) or excinfo)
