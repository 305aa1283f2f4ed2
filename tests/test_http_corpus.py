"""Replay the raw-request corpus (tests/http_corpus/) against a real server: whole, by lines, by bytes.

Each file is one case.  Its name starts with the expected statuses, in order
(``405-200--post-body-then-get.http``); ``#`` lines at the top describe it,
and ``# then: close|open`` says whether the server must close the connection
afterwards (``open`` is proved by a further request on it).  In the rest,
every line ends in CRLF, except one ending in a backslash (no line end at
all), and Python escapes (``\\n``, ``\\x00``) stand for their bytes.
"""

from __future__ import annotations

import codecs
import dataclasses
import socket
from pathlib import Path

import pytest

from tests.http_support import SMALL, exchange, make_root
from tests.support import module_server

CORPUS = Path(__file__).parent / "http_corpus"


@dataclasses.dataclass
class Case:
    name: str
    statuses: list[int]
    methods: list[str]
    then: str | None
    data: bytes


def load(path: Path) -> Case:
    text = path.read_text("ascii")
    comments, lines = [], text.split("\n")
    while lines and lines[0].startswith("#"):
        comments.append(lines.pop(0))
    if text.endswith("\n"):
        lines.pop()
    raw = "".join(line[:-1] if line.endswith("\\") else line + "\\r\\n" for line in lines)
    data = codecs.escape_decode(raw.encode("latin-1"))[0]
    statuses = [int(part) for part in path.stem.split("--")[0].split("-")]
    methods = ["HEAD" if data.lstrip().startswith(b"HEAD ") else "GET"] * len(statuses)
    then = next((c.split(":", 1)[1].strip() for c in comments if c.startswith("# then:")), None)
    return Case(path.stem, statuses, methods, then, data)


CASES = sorted(CORPUS.glob("*.http"))


def test_corpus_is_there():
    assert len(CASES) >= 40
    for path in CASES:
        case = load(path)
        assert case.statuses and case.data, path.name
        assert case.then in ("open", "close"), path.name


@pytest.fixture(scope="module")
def corpus_server(strategy, tmp_path_factory):
    """One server per strategy for the whole corpus (``strategy`` is module-scoped: tests/conftest.py)."""
    root = make_root(tmp_path_factory.mktemp("corpus"))
    with module_server("http", "--root", str(root), "--header-timeout", "5", strategy=strategy) as server:
        yield server


@pytest.mark.parametrize("path", CASES, ids=[path.stem for path in CASES])
@pytest.mark.parametrize("chunk", [None, -1, 1], ids=["whole", "lines", "bytes"])
def test_replay(corpus_server, path, chunk):
    case = load(path)
    if chunk == 1 and len(case.data) > 4096:
        chunk = 509  # byte by byte through 64 KiB proves nothing more, slowly
    with corpus_server.connect() as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        replies, closed = exchange(sock, case.data, case.methods, chunk=chunk)
        assert [reply.status for reply in replies] == case.statuses, case.name
        for reply in replies:
            assert b"SECRET" not in reply.body
            if reply.status == 301:
                assert not reply.header("location").startswith("//")
            if reply.status >= 400:
                assert reply.body.startswith(f"{reply.status} ".encode())
        if case.then == "close":
            assert closed, f"{case.name}: the server should have closed"
        else:
            assert not closed
            (after,), _ = exchange(sock, b"GET /hello.txt HTTP/1.1\r\nHost: x\r\n\r\n", ["GET"])
            assert after.body == SMALL
