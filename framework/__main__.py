"""``python -m framework`` is the ``forkthread`` command (and :func:`main` its console script)."""

import sys

from framework.deferred import defer_unused


def main(prog: str | None = None) -> int:
    """The ``forkthread`` command: defer what a server rarely uses (:mod:`framework.deferred`), then run the CLI.

    *prog* as :func:`framework.cli.main` takes it (default: the script's own name).
    """
    defer_unused()
    from framework.cli import main as run

    return run(prog=prog)


if __name__ == "__main__":
    sys.exit(main(prog="forkthread"))
