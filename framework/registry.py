"""Finding servers by name: the bundled ones and those other packages register."""

from __future__ import annotations

import importlib
from importlib import metadata

from framework.server import Server

ENTRY_POINT_GROUP = "forkthread.servers"


class UnknownServerError(LookupError):
    """No server has that name."""


def server_targets() -> dict[str, str]:
    """name -> ``module:Class`` for every known server, bundled ones first."""
    from servers import SERVERS

    targets = dict(SERVERS)
    for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
        targets.setdefault(entry.name, entry.value)
    return targets


def server_class(name: str) -> type[Server]:
    """Import and return the server class registered as *name*."""
    targets = server_targets()
    try:
        target = targets[name]
    except KeyError:
        raise UnknownServerError(f"unknown server {name!r} (choose from {', '.join(targets)})") from None
    module_name, _, class_name = target.partition(":")
    cls: type[Server] = getattr(importlib.import_module(module_name), class_name)
    return cls
