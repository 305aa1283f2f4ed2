"""The tutorial's example server works as the docs say, unit-tested and under every strategy."""

from __future__ import annotations

import subprocess
import sys

import pytest

from framework.testing import RecordingTransport, feed
from tests.support import ROOT, child_env, echo_exchange

sys.path.insert(0, str(ROOT / "docs" / "examples"))
from upper import UpperProtocol

EXAMPLE = ROOT / "docs" / "examples" / "upper.py"
TEXT = b"hello\nworld\r\n\0nul\nlast"
EXPECTED = b"HELLO\nWORLD\r\n\0NUL\nLAST\n4 lines\n"


@pytest.mark.parametrize("chunk_size", [None, 1, 3])
def test_upper_protocol_any_chunking(chunk_size):
    transport = RecordingTransport()
    protocol = UpperProtocol()
    protocol.connection_made(transport)
    assert feed(protocol, TEXT, chunk_size=chunk_size, eof=True) is None
    assert transport.output() == EXPECTED


def test_upper_server_under_every_strategy(serve, strategy):
    if strategy == "interpreters":  # the tutorial's server is defined in __main__: one clear line, exit 2
        done = subprocess.run([sys.executable, str(EXAMPLE), "--bind", "127.0.0.1:0", "--strategy", strategy],
                              capture_output=True, text=True, env=child_env(), timeout=30, stdin=subprocess.DEVNULL)
        assert done.returncode == 2 and "__main__" in done.stderr and "Traceback" not in done.stderr, done
        assert done.stdout == ""  # refused before it announced itself
        return
    server = serve("upper", strategy=strategy, program=[sys.executable, str(EXAMPLE)])
    with server.connect() as sock:
        assert echo_exchange(sock, TEXT, chunk=2) == EXPECTED


def test_upper_protocol_is_between_messages_only_without_half_a_line():
    transport = RecordingTransport()
    protocol = UpperProtocol()
    protocol.connection_made(transport)
    assert protocol.between_messages()
    protocol.data_received(b"half a li")
    protocol.server_stopping()
    assert not transport.closed  # the line may still come
    protocol.data_received(b"ne\n")
    protocol.server_stopping()
    assert transport.closed
