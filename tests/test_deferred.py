"""framework.deferred: a module stands in sys.modules until its first use, then is the real one."""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from framework.deferred import DeferredModule, defer, loaded
from tests.support import child_env

NAME = "forkthread_deferred_probe"


@pytest.fixture
def probe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A module of our own on the path, whose every execution leaves a line in runs.log."""
    log = tmp_path / "runs.log"
    (tmp_path / f"{NAME}.py").write_text(textwrap.dedent(f"""
        import time
        with open({str(log)!r}, "a") as log:
            log.write("ran\\n")
        time.sleep(0.2)  # a slow import: a second reader arrives meanwhile
        ANSWER = 42
        def load():  # a name the stand-in must not hide
            return "the module's own"
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    yield log
    sys.modules.pop(NAME, None)


def runs(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


def test_a_deferred_module_loads_at_its_first_attribute_read(probe):
    assert defer(NAME)
    stand_in = sys.modules[NAME]
    assert isinstance(stand_in, DeferredModule) and not loaded(NAME) and runs(probe) == 0
    assert stand_in.ANSWER == 42
    assert runs(probe) == 1 and loaded(NAME)
    real = sys.modules[NAME]
    assert real is not stand_in and type(real) is type(sys)
    assert stand_in.load() == "the module's own" == real.load()
    assert stand_in.__file__ == real.__file__
    assert runs(probe) == 1


def test_the_stand_in_reads_through_to_the_real_module(probe):
    defer(NAME)
    stand_in = sys.modules[NAME]
    assert stand_in.ANSWER == 42
    sys.modules[NAME].ANSWER = 43  # as mock.patch would: code that bound the stand-in sees it
    assert stand_in.ANSWER == 43


def test_import_statements_bind_the_stand_in_without_loading(probe):
    defer(NAME)
    namespace: dict[str, object] = {}
    exec(f"import {NAME}", namespace)
    assert namespace[NAME] is sys.modules[NAME] and runs(probe) == 0
    exec(f"from {NAME} import ANSWER", namespace)  # reads the attribute: loads
    assert namespace["ANSWER"] == 42 and runs(probe) == 1


def test_two_threads_reading_at_once_load_it_once(probe):
    defer(NAME)
    stand_in = sys.modules[NAME]
    answers: list[object] = []
    readers = [threading.Thread(target=lambda: answers.append(stand_in.ANSWER)) for _ in range(4)]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join(10)
    assert answers == [42] * 4 and runs(probe) == 1


def test_a_missing_name_is_an_attribute_error_after_the_load(probe):
    defer(NAME)
    with pytest.raises(AttributeError):
        sys.modules[NAME].no_such_name  # noqa: B018
    assert loaded(NAME)


def test_a_module_that_fails_to_load_is_tried_again(tmp_path, monkeypatch):
    flag = tmp_path / "broken"
    flag.touch()
    (tmp_path / f"{NAME}.py").write_text(
        f"import os\nif os.path.exists({str(flag)!r}):\n    raise ImportError('not yet')\nX = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    try:
        defer(NAME)
        stand_in = sys.modules[NAME]
        with pytest.raises(ImportError, match="not yet"):
            stand_in.X  # noqa: B018
        assert sys.modules[NAME] is stand_in and not loaded(NAME)
        flag.unlink()
        assert stand_in.X == 1 and loaded(NAME)
    finally:
        sys.modules.pop(NAME, None)


def test_loaded_or_unknown_modules_are_not_deferred():
    assert not defer("json" if "json" in sys.modules else "sys")
    assert not defer("no_such_module_anywhere")
    assert "no_such_module_anywhere" not in sys.modules
    assert loaded("sys") and not loaded("no_such_module_anywhere")


#: The forkthread command as far as a server's options (``serve nbytes --help``): what it has loaded.
COMMAND = textwrap.dedent("""
    import contextlib, io, sys
    from framework.__main__ import main
    sys.argv = ["forkthread", "serve", "nbytes", "--help"]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
        main()
    from framework.deferred import UNUSED_BY_SERVERS, loaded
    assert {"dataclasses", "logging", "servers.nbytes"} <= sys.modules.keys()  # the importers ran
    print(sorted(name for name in UNUSED_BY_SERVERS if loaded(name)))
""")


def test_the_command_defers_them_before_its_first_import():
    done = subprocess.run([sys.executable, "-S", "-c", COMMAND], capture_output=True, text=True, timeout=60,
                          env=child_env(), check=False)
    assert done.returncode == 0, done.stderr
    # On 3.12 and later, dataclasses reads inspect as it makes each dataclass.
    assert done.stdout.strip() == ("[]" if sys.version_info < (3, 12) else "['inspect']")


#: A failure logged with the process out of descriptors, by a command that deferred what it defers.
#: (Python's traceback imports ast to point at the failing expression, when it can read the line:
#: on 3.13 it can, for ``-c`` code, and a process without ast would lose the record there too.)
OUT_OF_DESCRIPTORS = textwrap.dedent("""
    import os, resource, sys
    from framework.deferred import defer_unused
    defer_unused()
    import logging
    import framework.cli, framework.strategies.forking  # what a server's process has loaded
    logging.basicConfig(stream=sys.stdout, format="%(message)s")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (32, hard))
    held = []
    try:
        while True:
            held.append(os.open(os.devnull, os.O_RDONLY))
    except OSError:
        pass
    try:
        1 / 0
    except ZeroDivisionError:
        logging.getLogger("server").exception("handler failed")
""")


def test_a_failure_logged_out_of_descriptors_keeps_its_traceback():
    # What a server logs failures with is never deferred: loading it then would need a
    # descriptor (and cost a forked child milliseconds).
    done = subprocess.run([sys.executable, "-S", "-c", OUT_OF_DESCRIPTORS], capture_output=True, text=True,
                          timeout=60, env=child_env(), check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[:2] == ["handler failed", "Traceback (most recent call last):"]
    assert "ZeroDivisionError: division by zero" in done.stdout and "Logging error" not in done.stdout + done.stderr
