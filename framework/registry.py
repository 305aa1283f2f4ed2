"""Finding servers by name: the bundled ones and those other packages register."""

from __future__ import annotations

import importlib

from framework.server import Server

ENTRY_POINT_GROUP = "forkthread.servers"


class UnknownServerError(LookupError):
    """No server has that name."""


def server_targets() -> dict[str, str]:
    """name -> ``module:Class`` for every known server, bundled ones first."""
    # Imported here, not at the top: importlib.metadata brings email, csv,
    # datetime... (about 1.8 MiB of heap) into a serving process that only
    # needs a bundled name, and every fork copies that heap's page tables.
    from importlib import metadata

    from servers import SERVERS

    targets = dict(SERVERS)
    for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
        targets.setdefault(entry.name, entry.value)
    return targets


def server_class(name: str) -> type[Server]:
    """Import and return the server class registered as *name*."""
    from servers import SERVERS

    # A bundled name wins over a plug-in's anyway (server_targets()): no need to read entry points.
    targets = SERVERS if name in SERVERS else server_targets()
    try:
        target = targets[name]
    except KeyError:
        raise UnknownServerError(f"unknown server {name!r} (choose from {', '.join(targets)})") from None
    module_name, _, class_name = target.partition(":")
    cls: type[Server] = getattr(importlib.import_module(module_name), class_name)
    return cls
