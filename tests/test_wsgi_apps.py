"""``forkthread serve wsgi`` with real applications and options, under every strategy; loading failures.

Flask, Django (a one-module project) and Falcon answer GET and POST (with
Content-Length and chunked); an application inside ``wsgiref.validate``
finds nothing wrong with the server; ``--root-path`` and
``--forwarded-allow-ips``; TLS with a ``wsgi.file_wrapper`` body and the
access log; an application that cannot be loaded is one line
and exit status 2.  Each test starts its own server (the ``serve`` fixture).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from tests.http_support import exchange
from tests.support import child_env, pool_ready, wait_for
from tests.test_wsgi import PLAIN, ask, request
from tests.tls_support import make_tls_files, tls_connect


def test_the_validator_finds_nothing(serve, strategy):
    server = serve("wsgi", "--app", "tests.wsgi_apps.plain:validated", strategy=strategy)
    data = (request("GET", "/") + request("POST", "/echo-sized", body=b"x" * 1000)
            + request("GET", "/stream?size=300000") + request("HEAD", "/") + request("GET", "/write"))
    replies, _ = ask(server, data, ["GET", "POST", "GET", "HEAD", "GET"])
    assert [reply.status for reply in replies] == [200] * 5
    assert len(replies[2].body) == 300000
    assert "Error" not in server.log() and "Warning" not in server.log(), server.log()


@pytest.mark.parametrize("app", ["flask_app:app", "django_app:application", "falcon_app:app"])
def test_real_frameworks(serve, strategy, app):
    server = serve("wsgi", "--app", f"tests.wsgi_apps.{app}", strategy=strategy)
    module = app.split("_")[0]
    get_path = {"flask": "/", "django": "/", "falcon": "/things?q=1"}[module]
    post_path = {"flask": "/upload", "django": "/upload", "falcon": "/things"}[module]
    body = b"a=1&b=" + b"x" * 100_000
    data = request("GET", get_path) + request("POST", post_path, "Content-Type: application/x-www-form-urlencoded",
                                              body=body)
    (got, posted), _ = ask(server, data, ["GET", "POST"])
    assert got.status == 200 and b"hello" in got.body, got.body
    assert posted.status == 200 and json.loads(posted.body)["size"] == len(body), posted.body
    (chunked,), _ = ask(server, request("POST", post_path, "Transfer-Encoding: chunked",
                                        "Content-Type: application/octet-stream") + b"5\r\nhello\r\n0\r\n\r\n",
                        ["POST"])
    assert chunked.status == 200 and json.loads(chunked.body)["size"] == 5, chunked.body


def test_root_path_and_trusted_forwarding(serve, strategy):
    server = serve("wsgi", "--app", "tests.wsgi_apps.flask_app:app", "--root-path", "/mount/",
                   "--forwarded-allow-ips", "127.0.0.1", strategy=strategy)
    (reply,), _ = ask(server, request("GET", "/mount/user/ann", "X-Forwarded-Proto: https",
                                      "X-Forwarded-For: 203.0.113.9"))
    assert json.loads(reply.body) == {"name": "ann", "script_root": "/mount", "url": "https://test/mount/user/ann"}
    plain = serve("wsgi", "--app", PLAIN, "--forwarded-allow-ips", "192.0.2.1", strategy=strategy)
    (reply,), _ = ask(plain, request("GET", "/environ", "X-Forwarded-Proto: https", "X-Forwarded-For: 203.0.113.9"))
    environ = json.loads(reply.body)
    assert environ["wsgi.url_scheme"] == "http" and environ["REMOTE_ADDR"] == "127.0.0.1"
    assert "HTTP_X_FORWARDED_FOR" not in environ


@pytest.mark.parametrize(("target", "says"), [
    ("tests.wsgi_apps.nowhere:app", "cannot import"),
    ("tests.wsgi_apps.plain:missing", "has no"),
    ("tests.wsgi_apps.plain:not_callable", "not callable"),
    ("not a target", "expected MODULE:CALLABLE"),
])
def test_an_app_that_cannot_be_loaded_is_one_line_and_exit_2(target, says):
    done = subprocess.run([sys.executable, "-m", "framework", "serve", "wsgi", "--app", target, "--bind",
                           "127.0.0.1:0"], capture_output=True, text=True, env=child_env(), timeout=60)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and says in done.stderr and "Traceback" not in done.stderr


def test_a_factory_is_called(serve):
    server = serve("wsgi", "--app", "tests.wsgi_apps.plain:make_app()", strategy="iterative")
    (reply,), _ = ask(server, request("GET", "/"))
    assert reply.body == b"Hello, World!"


def test_tls_file_wrapper_and_access_log(serve, strategy, tmp_path):
    files = make_tls_files(tmp_path)
    content = bytes(range(256)) * 2000
    (tmp_path / "f.bin").write_bytes(content)
    log = tmp_path / "access.log"
    server = serve("wsgi", "--app", PLAIN, *files.server_args(), "--access-log", str(log), strategy=strategy)
    with tls_connect(server.address, files) as sock:
        data = request("GET", "/environ") + request("GET", f"/file?name={tmp_path / 'f.bin'}")
        (environ_reply, file_reply), _ = exchange(sock, data, ["GET", "GET"])
    assert json.loads(environ_reply.body)["wsgi.url_scheme"] == "https"
    assert file_reply.body == content
    assert wait_for(lambda: log.exists() and log.read_text().count('" 200 ') == 2), log.read_text()


def test_a_stop_waits_for_a_running_app_then_ends_its_connection(serve, strategy, tmp_path):
    # The response says keep-alive (the stop came after its request); the connection must
    # still end once it is out, well before the graceful timeout (the socket's timeout is less).
    server = serve("wsgi", "--app", PLAIN, "--graceful-timeout", "25", strategy=strategy,
                   env=child_env(WSGI_TEST_MARKS=str(tmp_path)))
    pool_ready(server, strategy)  # a request still in the backlog would be refused by the stop
    with server.connect(timeout=15) as sock:
        sock.sendall(request("GET", "/block?mark=go"))
        time.sleep(0.5)  # let the request reach the application (no assertion rests on this)
        server.send_signal(signal.SIGTERM)
        (tmp_path / "go").write_text("go")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200 OK") and data.endswith(b"Hello, World!")
    assert server.proc.wait(30) == 0
