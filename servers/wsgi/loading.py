"""Finding the application: ``MODULE:CALLABLE`` or ``MODULE:FACTORY()``, as gunicorn and Flask accept.

The current directory comes first on the import path (a console script
starts with its own directory there, not the user's).  Whatever goes wrong
is one line (:class:`AppLoadError`): the command line prints it and exits 2.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from typing import Any

#: What a WSGI application is called as: ``app(environ, start_response)``.
Application = Callable[[dict[str, Any], Callable[..., Any]], Any]


class AppLoadError(ValueError):
    """The application cannot be imported, found, made or called (one line for the user)."""


def _dotted(name: str) -> bool:
    return bool(name) and all(part.isidentifier() for part in name.split("."))


def load_app(target: str) -> Application:
    """Import the application *target* names: ``MODULE:NAME``, ``MODULE:FACTORY()`` or ``MODULE``
    (then its ``application``, as gunicorn looks for)."""
    module_name, _, name = target.partition(":")
    name = name or "application"
    factory = name.endswith("()")
    if factory:
        name = name[:-2]
    if not _dotted(module_name) or not _dotted(name):
        raise AppLoadError(f"--app {target!r}: expected MODULE:CALLABLE or MODULE:FACTORY() (e.g. myapp:app)")
    cwd = os.getcwd()
    if sys.path[:1] != [cwd]:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except (Exception, SystemExit) as exc:
        raise AppLoadError(f"--app {target}: cannot import {module_name!r}: {type(exc).__name__}: {exc}") from None
    found: Any = module
    for part in name.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise AppLoadError(f"--app {target}: module {module_name!r} has no {name!r}") from None
    if factory:
        if not callable(found):
            raise AppLoadError(f"--app {target}: {name!r} is not callable, so it is no factory")
        try:
            found = found()
        except (Exception, SystemExit) as exc:
            raise AppLoadError(f"--app {target}: the factory raised {type(exc).__name__}: {exc}") from None
    if not callable(found):
        raise AppLoadError(f"--app {target}: {type(found).__name__} object is not callable, so it is no WSGI"
                           " application")
    app: Application = found
    return app
