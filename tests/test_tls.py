"""TLS under every strategy: certificates made at test time, real clients (Python ssl, http.client, curl, openssl)."""

from __future__ import annotations

import http.client
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
import warnings

import pytest

from tests.support import child_env, wait_for
from tests.tls_support import TlsFiles, client_context, client_hello, make_tls_files, tls_connect, tls_echo

SERVE = [sys.executable, "-m", "framework", "serve"]


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def site(tmp_path):
    root = tmp_path / "site"
    root.mkdir()
    body = os.urandom(1 << 20)
    (root / "big.bin").write_bytes(body)
    (root / "index.html").write_bytes(b"<h1>hello over TLS</h1>\n")
    return root, body


def assert_clean(server) -> None:
    log = server.log()
    assert "Traceback" not in log, log
    assert " ERROR " not in log, log


def assert_served(server, files: TlsFiles) -> None:
    """A well-behaved TLS client is answered (echo)."""
    with tls_connect(server.address, files) as sock:
        assert tls_echo(sock, b"next client\n") == b"next client\n"


def test_echo_several_mib_byte_exact(serve, strategy, tls_files):
    server = serve("echo", *tls_files.server_args(), "--log-level", "debug", strategy=strategy)
    payload = os.urandom(5 << 20)
    with tls_connect(server.address, tls_files) as sock:
        assert sock.version() in ("TLSv1.2", "TLSv1.3")
        assert tls_echo(sock, payload) == payload
    assert_clean(server)


def test_http_file_and_keepalive(serve, strategy, tls_files, site):
    root, body = site
    server = serve("http", *tls_files.server_args(), "--root", str(root), "--log-level", "debug", strategy=strategy)
    host, _, port = server.address.rpartition(":")
    connection = http.client.HTTPSConnection(host, int(port), context=client_context(tls_files), timeout=20)
    try:
        for _ in range(3):  # one connection, three requests
            connection.request("GET", "/big.bin")
            response = connection.getresponse()
            assert response.status == 200
            assert response.read() == body
        assert connection.sock.version() in ("TLSv1.2", "TLSv1.3")
    finally:
        connection.close()
    if shutil.which("curl"):
        result = subprocess.run(["curl", "-sS", "--cacert", str(tls_files.ca), "--http1.1", "-w", "%{http_version}",
                                 f"https://{server.address}/big.bin", "-o", "-"],
                                capture_output=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert result.stdout[:len(body)] == body and result.stdout[len(body):] == b"1.1"
    assert_clean(server)


def test_alpn_offers_http_1_1(serve, tls_files, site):
    root, _ = site
    server = serve("http", *tls_files.server_args(), "--root", str(root), strategy="poll")
    context = client_context(tls_files)
    context.set_alpn_protocols(["h2", "http/1.1"])
    with tls_connect(server.address, tls_files, context=context) as sock:
        assert sock.selected_alpn_protocol() == "http/1.1"


def test_plain_text_is_closed_and_next_client_served(serve, strategy, tls_files):
    server = serve("echo", *tls_files.server_args(), "--log-level", "debug", strategy=strategy)
    with server.connect() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while chunk := sock.recv(4096):  # an alert at most, then the end
            data += chunk
        assert b"HTTP" not in data and len(data) < 64
    assert_served(server, tls_files)
    assert wait_for(lambda: "WRONG_VERSION_NUMBER" in server.log() or "ended" in server.log())
    assert_clean(server)


@pytest.mark.parametrize("how", ["garbage", "truncated", "vanish", "half-close"])
def test_confused_peers_end_quietly(serve, strategy, tls_files, how):
    server = serve("echo", *tls_files.server_args(), "--log-level", "debug", strategy=strategy)
    hello = client_hello(tls_files)
    with server.connect() as sock:
        if how == "garbage":
            sock.sendall(hello[:5] + os.urandom(len(hello) - 5))  # a record header, then noise
        elif how == "truncated":
            sock.sendall(hello[: len(hello) // 2])
            sock.shutdown(socket.SHUT_WR)
        elif how == "half-close":
            sock.shutdown(socket.SHUT_WR)
        else:
            sock.sendall(hello)  # then vanish with a reset, mid-handshake
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        if how != "vanish":
            sock.settimeout(10)
            while sock.recv(4096):
                pass
    assert_served(server, tls_files)
    assert_clean(server)


def test_silent_client_dropped_after_timeout(serve, strategy, tls_files):
    server = serve("echo", *tls_files.server_args(), "--timeout", "1", "--log-level", "debug", strategy=strategy)
    with server.connect(timeout=30) as sock:  # the socket timeout is the hang deadline
        assert sock.recv(1) == b""  # the server closed: the handshake never came
    assert_served(server, tls_files)
    assert_clean(server)


def test_tls_1_0_client_refused(serve, strategy, tls_files):
    server = serve("echo", *tls_files.server_args(), "--log-level", "debug", strategy=strategy)
    old = client_context(tls_files)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # that is the point
        old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1
    old.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this client try at all
    with pytest.raises(ssl.SSLError):
        tls_connect(server.address, tls_files, context=old).close()
    assert_served(server, tls_files)
    assert_clean(server)


@pytest.mark.only_strategies("poll")
def test_slow_handshake_never_stalls_others(serve, tls_files):
    server = serve("echo", *tls_files.server_args(), strategy="poll")
    hello = client_hello(tls_files)
    stalled = [server.connect() for _ in range(3)]
    try:
        for sock in stalled:
            sock.sendall(hello[:10])  # and then nothing
        assert_served(server, tls_files)
    finally:
        for sock in stalled:
            sock.close()
    assert_clean(server)


def test_unix_socket_over_tls(serve, tls_files, tmp_path):
    serve("echo", *tls_files.server_args(), bind=f"unix:{tmp_path}/tls.sock", strategy="poll")
    with socket.socket(socket.AF_UNIX) as raw:
        raw.settimeout(10)
        raw.connect(str(tmp_path / "tls.sock"))
        with client_context(tls_files).wrap_socket(raw, server_hostname="localhost") as sock:
            assert tls_echo(sock, b"unix and TLS") == b"unix and TLS"


def test_encrypted_key_with_password_file(serve, tls_files):
    server = serve("echo", "--tls-cert", str(tls_files.cert), "--tls-key", str(tls_files.encrypted_key),
                   "--tls-password-file", str(tls_files.password_file), strategy="iterative")
    assert_served(server, tls_files)


def test_client_certificate_required(serve, tls_files):
    server = serve("echo", *tls_files.server_args(), "--tls-client-ca", str(tls_files.ca), "--log-level", "debug",
                   strategy="threading")
    # TLS 1.3: the refusal may come only with the first read.
    with pytest.raises((ssl.SSLError, ConnectionError)), tls_connect(server.address, tls_files) as sock:
        sock.sendall(b"x")
        sock.recv(1)
    context = client_context(tls_files)
    context.load_cert_chain(tls_files.client_cert, tls_files.client_key)
    with tls_connect(server.address, tls_files, context=context) as sock:
        assert tls_echo(sock, b"with a certificate") == b"with a certificate"
    assert_clean(server)


def run_serve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SERVE, *args], capture_output=True, text=True, env=child_env(), timeout=30,
                          stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("problem", ["missing cert", "garbage cert", "wrong key", "wrong password", "missing CA"])
def test_bad_files_are_one_line_exit_1(tls_files, tmp_path, problem):
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    other = make_tls_files(tmp_path)  # a key that does not match tls_files.cert
    wrong_password = tmp_path / "wrong.txt"
    wrong_password.write_text("nope\n")
    args = {
        "missing cert": ["--tls-cert", str(tmp_path / "absent.pem"), "--tls-key", str(tls_files.key)],
        "garbage cert": ["--tls-cert", str(garbage), "--tls-key", str(tls_files.key)],
        "wrong key": ["--tls-cert", str(tls_files.cert), "--tls-key", str(other.key)],
        "wrong password": ["--tls-cert", str(tls_files.cert), "--tls-key", str(tls_files.encrypted_key),
                           "--tls-password-file", str(wrong_password)],
        "missing CA": [*tls_files.server_args(), "--tls-client-ca", str(tmp_path / "absent-ca.pem")],
    }[problem]
    result = run_serve("echo", "--bind", "127.0.0.1:0", *args)
    assert result.returncode == 1, result
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith("forkthread: cannot"), result.stderr


@pytest.mark.parametrize("args", [["--bind", "udp:127.0.0.1:0", "--strategy", "iterative", "--tls-cert", "C"],
                                  ["--bind", "127.0.0.1:0", "--tls-key", "K"]])
def test_usage_errors_exit_2(args):
    result = run_serve("echo", *args)
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr


def test_forkthread_client_over_tls(serve, tls_files, site):
    root, body = site
    server = serve("http", *tls_files.server_args(), "--root", str(root), strategy="poll")
    client = [sys.executable, "-m", "framework", "client"]
    result = subprocess.run([*client, "http", server.address, "/big.bin", "--tls", "--cacert", str(tls_files.ca)],
                            capture_output=True, env=child_env(), timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == body
    untrusted = subprocess.run([*client, "http", server.address, "/", "--tls"], capture_output=True,
                               env=child_env(), timeout=60)
    assert untrusted.returncode == 1
    assert b"CERTIFICATE_VERIFY_FAILED" in untrusted.stderr and b"Traceback" not in untrusted.stderr
    echo = serve("echo", *tls_files.server_args(), strategy="threading")
    result = subprocess.run([*client, "echo", echo.address, "--tls", "--cacert", str(tls_files.ca), "--timeout", "1"],
                            input=b"hello\n", capture_output=True, env=child_env(), timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"hello\n"


@pytest.mark.needs_tool("openssl")
@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_openssl_s_client(serve, tls_files, site):
    root, _ = site
    server = serve("http", *tls_files.server_args(), "--root", str(root), strategy="threading")
    request = b"GET /index.html HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    result = subprocess.run(["openssl", "s_client", "-connect", server.address, "-CAfile", str(tls_files.ca),
                             "-verify_return_error", "-alpn", "http/1.1", "-ign_eof", "-quiet"],
                            input=request, capture_output=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert b"hello over TLS" in result.stdout
    for version in ("-tls1", "-tls1_1"):
        refused = subprocess.run(["openssl", "s_client", "-connect", server.address, version,
                                  "-cipher", "DEFAULT:@SECLEVEL=0"], input=b"", capture_output=True, timeout=30)
        assert refused.returncode != 0
    assert_clean(server)


def test_graceful_stop_during_a_handshake(serve, strategy, tls_files):
    """A client stuck in its handshake does not hold a stop for --timeout (or --graceful-timeout)."""
    server = serve("echo", *tls_files.server_args(), "--timeout", "600", "--graceful-timeout", "300",
                   "--log-level", "debug", strategy=strategy)
    hello = client_hello(tls_files)
    with server.connect() as sock:
        sock.sendall(hello[:20])  # part of a ClientHello, then nothing
        time.sleep(0.5)  # accepted and waiting in the handshake (the event itself: no timing is asserted)
        assert server.stop(timeout=60) == 0
        sock.settimeout(10)
        try:
            assert sock.recv(100) == b""
        except ConnectionResetError:
            pass  # still in the backlog when the listener closed: ended all the same
    assert_clean(server)


@pytest.mark.needs_tool("openssl")
@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_renegotiation_refused(serve, strategy, tls_files):
    server = serve("echo", *tls_files.server_args(), "--log-level", "debug", strategy=strategy)
    client = subprocess.Popen(["openssl", "s_client", "-connect", server.address, "-tls1_2", "-CAfile",
                               str(tls_files.ca)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT)
    try:
        assert client.stdin is not None and client.stdout is not None
        client.stdin.write(b"hello\n")
        client.stdin.flush()
        while (line := client.stdout.readline()) and line != b"hello\n":
            pass  # the session details, then our echo
        assert line == b"hello\n"
        client.stdin.write(b"R\n")  # s_client: renegotiate
        client.stdin.flush()
        output = client.stdout.read()  # s_client ends when the server refuses
        client.wait(30)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait(10)
        for stream in (client.stdin, client.stdout):
            if stream is not None:
                stream.close()
    assert b"no renegotiation" in output, output
    assert_served(server, tls_files)
    assert_clean(server)


def test_trickled_handshake_dropped(serve, strategy, tls_files):
    """Progress does not renew the handshake's limit: a ClientHello trickled in never completes it."""
    import select

    server = serve("echo", *tls_files.server_args(), "--timeout", "1", "--log-level", "debug", strategy=strategy)
    hello = client_hello(tls_files)
    closed = False
    with server.connect() as sock:
        for start in range(0, len(hello) - 1, 2):  # never the last byte
            try:
                sock.sendall(hello[start:start + 2])
                if select.select([sock], [], [], 0.2)[0] and sock.recv(100) == b"":
                    closed = True
            except ConnectionError:
                closed = True
            if closed:
                break
    assert closed, "the server waited for the whole trickled ClientHello"
    assert_served(server, tls_files)
    assert_clean(server)
