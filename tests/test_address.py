"""Address parsing, listening sockets, and Unix socket files."""

from __future__ import annotations

import errno
import logging
import os
import socket

import pytest

from framework.address import (
    AddressError,
    bind_socket,
    connect,
    format_peer,
    local_address,
    parse_address,
    peer_credentials,
    remove_unix_socket,
    socket_file_inode,
)


@pytest.mark.parametrize(("text", "expected"), [
    ("127.0.0.1:8000", "127.0.0.1:8000"),
    ("[::1]:0", "[::1]:0"),
    ("unix:/tmp/x.sock", "unix:/tmp/x.sock"),
    (":80", "0.0.0.0:80"),
    ("*:80", "0.0.0.0:80"),
    ("udp:127.0.0.1:9", "udp:127.0.0.1:9"),
    ("udp:[::1]:9", "udp:[::1]:9"),
])
def test_parse_and_format_round_trip(text, expected):
    assert str(parse_address(text)) == expected


@pytest.mark.parametrize("text", [
    "nocolon", "1.2.3.4:http", "1.2.3.4:70000", "::1:80", "[::1]80", "unix:", "h:-1",
    # int() alone accepted these: a sign, spaces, another script's digit (Arabic-Indic 3), thousands of digits.
    "1.2.3.4:+80", "1.2.3.4: 80", "1.2.3.4:\u0663", "1.2.3.4:" + "9" * 5000,
])
def test_bad_addresses_are_refused_with_a_reason(text):
    with pytest.raises(AddressError, match=r"\S"):
        parse_address(text)


def test_unresolvable_host():
    with pytest.raises(AddressError, match="cannot resolve"):
        bind_socket(parse_address("no-such-host.invalid:0"))


def test_a_host_name_the_idna_codec_refuses_is_an_address_error():
    # A 300-character label raised UnicodeError out of getaddrinfo's encoding, not an AddressError.
    with pytest.raises(AddressError, match="cannot resolve"):
        bind_socket(parse_address("a" * 300 + ":0"))


@pytest.mark.parametrize("text", ["127.0.0.1:0", "[::1]:0", "localhost:0"])
def test_port_zero_reports_the_real_port(text):
    sock = bind_socket(parse_address(text))
    with sock:
        address = local_address(sock)
        assert address.port != 0
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
        assert not sock.get_inheritable()  # close-on-exec
        assert sock.getblocking() is False
        with connect(str(address)):
            pass


def test_busy_port_is_refused():
    with bind_socket(parse_address("127.0.0.1:0")) as first:
        with pytest.raises(OSError) as info:
            bind_socket(local_address(first))
        assert info.value.errno == errno.EADDRINUSE


def test_stale_unix_socket_is_replaced_and_live_one_refused(tmp_path, caplog):
    path = str(tmp_path / "s.sock")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)
    stale.close()  # the file stays: a crashed server's leftover
    with caplog.at_level(logging.INFO, logger="forkthread"):
        live = bind_socket(parse_address(f"unix:{path}"))
    assert "replaced a stale socket file" in caplog.text
    try:
        with pytest.raises(OSError) as info:
            bind_socket(parse_address(f"unix:{path}"))
        assert info.value.errno == errno.EADDRINUSE
    finally:
        inode = socket_file_inode(path)
        live.close()
        remove_unix_socket(path, inode)
    assert not os.path.exists(path)


def test_unix_path_that_is_not_a_socket_is_refused(tmp_path):
    path = tmp_path / "plain"
    path.write_text("keep me")
    with pytest.raises(OSError) as info:
        bind_socket(parse_address(f"unix:{path}"))
    assert info.value.errno == errno.EEXIST
    assert path.read_text() == "keep me"


def test_remove_leaves_a_newer_servers_file(tmp_path):
    path = str(tmp_path / "s.sock")
    with bind_socket(parse_address(f"unix:{path}")):
        inode = socket_file_inode(path)
    os.unlink(path)
    with bind_socket(parse_address(f"unix:{path}")):
        remove_unix_socket(path, inode)  # not ours any more
        assert os.path.exists(path)


def test_format_peer():
    assert format_peer(socket.AF_INET, ("1.2.3.4", 5)) == "1.2.3.4:5"
    assert format_peer(socket.AF_INET6, ("::1", 5, 0, 0)) == "[::1]:5"
    assert format_peer(socket.AF_UNIX, "") == "unix"


def test_peer_credentials_name_the_process_at_the_other_end():
    left, right = socket.socketpair()
    with left, right:
        assert peer_credentials(left) == (os.getpid(), os.getuid(), os.getgid())
