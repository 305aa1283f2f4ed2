"""``python -m framework`` is the ``forkthread`` command."""

import sys

from framework.cli import PROG, main

sys.exit(main(prog=PROG))
