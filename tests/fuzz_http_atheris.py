"""Coverage-guided fuzzing of the HTTP protocol with atheris (optional; not a dependency).

Not collected by pytest (the name does not start with ``test_``).  Run::

    pip install atheris
    python tests/fuzz_http_atheris.py -atheris_runs=200000

Each input is fed to a fresh :class:`servers.http.protocol.HttpProtocol`
split at a point taken from the input itself, then closed; any exception
escaping the protocol is a crash atheris reports and minimizes.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from servers.http.protocol import HttpProtocol
    from servers.http.site import StaticSite

from framework.testing import RecordingTransport

ROOT = Path(tempfile.mkdtemp(prefix="forkthread-atheris-"))
(ROOT / "index.html").write_bytes(b"<h1>index</h1>\n")
(ROOT / "hello.txt").write_bytes(b"hello\n")
SITE = StaticSite(str(ROOT))


def one_input(data: bytes) -> None:
    """Feed *data* in two pieces (split where its first byte says), then end the connection."""
    if not data:
        return
    cut = data[0] % len(data)
    transport = RecordingTransport()
    protocol = HttpProtocol(SITE)
    protocol.connection_made(transport)
    for piece in (data[1:cut], data[cut:]):
        if transport.is_closing():
            break
        protocol.data_received(piece)
    if not transport.is_closing():
        protocol.eof_received()
    protocol.connection_lost(None)


if __name__ == "__main__":
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
