"""Modules the ``forkthread`` command imports but a server never uses, loaded at their first use.

A server that forks per connection copies the page-table entry of every
resident page at every fork, and every child's exit tears them down: each
megabyte the process holds costs a fork per connection about 28 µs
(docs/lab.md, "The sixth round").  :mod:`inspect` comes in with
:mod:`dataclasses`, which on Python 3.11 calls it once, for the text
signature of a dataclass without a docstring, and brings :mod:`ast`,
:mod:`dis` (with the ``_opcode`` extension: five more mappings) and
:mod:`tokenize`: about 1 MB that no server uses.  (From 3.12 on,
``dataclasses`` reads it as it makes every dataclass: deferring it changes
nothing there.)

Not :mod:`traceback`, which :mod:`logging` imports: a server uses it to
log a failure, and importing it then would cost a forked child
milliseconds, and would fail when the failure is running out of
descriptors, losing the very traceback.

:func:`defer_unused` puts a :class:`DeferredModule` in :data:`sys.modules`
for each module not loaded yet.  ``import inspect`` then binds the
stand-in, and the first attribute read through it (``inspect.signature``,
``from inspect import signature``) imports the real module, which from
then on is the one in :data:`sys.modules`; the stand-in passes every later
read on to it.  The ``forkthread`` command calls it before anything else
(``framework.__main__``); a program of its own may call it first too.  A
library never should: :data:`sys.modules` belongs to the program.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
import types

#: What :func:`defer_unused` defers: imported with the framework, used by no server.
UNUSED_BY_SERVERS = ("inspect",)

#: Where a stand-in keeps the real module once loaded: a name no module defines.
_REAL = "__deferred_module__"


class DeferredModule(types.ModuleType):
    """Stands in :data:`sys.modules` for a module not loaded yet; the first attribute read loads it.

    Its ``__spec__`` is the real module's, so ``import NAME`` elsewhere (which
    asks whether the module is still initializing) binds the stand-in
    without loading anything.  Any other name it lacks, dunder names such
    as ``__file__`` included, is read from the real module, loaded by the
    first such read.  Under the interpreter lock two threads reading at
    once load it once: the import system's own lock for the name makes the
    second wait for the first's import.
    """

    def __init__(self, name: str, spec: importlib.machinery.ModuleSpec) -> None:
        super().__init__(name)
        self.__spec__ = spec

    def __getattr__(self, name: str) -> object:
        # Only for names the stand-in lacks.  (The class defines no other name: each would
        # hide the module's own of that name.)
        return getattr(_load(self), name)


def _load(stand_in: DeferredModule) -> types.ModuleType:
    """Import the real module (the first time), which then stands in :data:`sys.modules`; return it."""
    module: types.ModuleType | None = vars(stand_in).get(_REAL)
    if module is not None:
        return module
    name = stand_in.__name__
    if sys.modules.get(name) is stand_in:
        sys.modules.pop(name, None)
    try:
        module = importlib.import_module(name)
    except BaseException:
        sys.modules.setdefault(name, stand_in)  # the next read tries again
        raise
    vars(stand_in)[_REAL] = module
    return module


def defer(name: str) -> bool:
    """Put a :class:`DeferredModule` for *name* in :data:`sys.modules`; False if already loaded or not found."""
    if name in sys.modules:
        return False
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        return False
    sys.modules[name] = DeferredModule(name, spec)
    return True


def defer_unused() -> list[str]:
    """Defer each of :data:`UNUSED_BY_SERVERS` not loaded yet; return the names deferred."""
    return [name for name in UNUSED_BY_SERVERS if defer(name)]


def loaded(name: str) -> bool:
    """True when the real module *name* is loaded (a stand-in not yet read does not count)."""
    module = sys.modules.get(name)
    return module is not None and not (isinstance(module, DeferredModule) and _REAL not in vars(module))
