"""Hidden names and links in `serve http` (issue 25 item 2): refused, never listed, no existence oracle.

A document root is often a checkout: `/.env`, `/.git/config` and `/.htpasswd` must be 404 and
absent from listings (`--dotfiles allow` serves them), `/.well-known/` is served, and with
`--follow-symlinks` a link leading outside the root answers the same whether its target exists.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from servers.http.listing import listing_page
from servers.http.paths import PathRefused, PathResolver, is_hidden, url_path
from tests.http_support import exchange

HIDDEN = ["/.env", "/.git/config", "/.git/", "/.git", "/.htpasswd", "/sub/.secret", "/%2egit/config",
          "/.well-known/.hidden", "/sub/.well-known/x.txt", "/link-to-env", "/link-to-git/config"]


def hidden_root(base: Path) -> Path:
    """A root with hidden files, a well-known file, and links in and out (an outside file and a missing one)."""
    root = base / "site"
    (root / ".git").mkdir(parents=True)
    (root / ".git" / "config").write_bytes(b"[core] SECRET\n")
    (root / ".env").write_bytes(b"PASSWORD=SECRET\n")
    (root / ".htpasswd").write_bytes(b"admin:SECRET\n")
    (root / ".well-known").mkdir()
    (root / ".well-known" / "security.txt").write_bytes(b"Contact: x\n")
    (root / ".well-known" / ".hidden").write_bytes(b"SECRET\n")
    (root / "sub").mkdir()
    (root / "sub" / ".secret").write_bytes(b"SECRET\n")
    (root / "sub" / ".well-known").mkdir()
    (root / "sub" / ".well-known" / "x.txt").write_bytes(b"SECRET\n")
    (root / "sub" / "shown.txt").write_bytes(b"shown\n")
    (root / "hello.txt").write_bytes(b"hello\n")
    (root / "link-in").symlink_to(root / "hello.txt")
    (root / "link-to-env").symlink_to(root / ".env")
    (root / "link-to-git").symlink_to(root / ".git")
    (base / "outside.txt").write_bytes(b"SECRET\n")
    (root / "out-exists").symlink_to(base / "outside.txt")
    (root / "out-missing").symlink_to(base / "no-such-file.txt")
    (root / "out-dir").symlink_to(base)
    return root


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return hidden_root(tmp_path)


def status_of(resolver: PathResolver, target: str) -> int:
    try:
        resolver.resolve(url_path(target.encode()))
    except PathRefused as refused:
        return refused.status
    return 200


def test_the_hidden_rule():
    assert is_hidden([".env"]) and is_hidden(["a", ".git", "config"]) and is_hidden([".well-known", ".x"])
    assert is_hidden(["sub", ".well-known"]), "only the top-level .well-known is public"
    assert not is_hidden([".well-known", "acme-challenge", "token"]) and not is_hidden(["a.b", "c."])


@pytest.mark.parametrize("follow", [False, True])
def test_resolver_refuses_hidden_names_with_404(root, follow):
    resolver = PathResolver(str(root), follow_symlinks=follow)
    for target in HIDDEN:
        assert status_of(resolver, target) == 404, target
    assert status_of(resolver, "/.well-known/security.txt") == 200
    assert status_of(resolver, "/hello.txt") == 200


def test_dotfiles_allow_serves_them(root):
    resolver = PathResolver(str(root), follow_symlinks=True, dotfiles="allow")
    for target in ["/.env", "/.git/config", "/.htpasswd", "/sub/.secret", "/link-to-env", "/link-to-git/config"]:
        assert status_of(resolver, target) == 200, target


def test_resolver_rejects_an_unknown_dotfiles_value(root):
    with pytest.raises(ValueError, match="dotfiles"):
        PathResolver(str(root), dotfiles="maybe")


def test_a_link_outside_the_root_is_no_existence_oracle(root):
    resolver = PathResolver(str(root), follow_symlinks=True)
    statuses = {target: status_of(resolver, target)
                for target in ["/out-exists", "/out-missing", "/out-dir/outside.txt", "/out-dir/no-such-file.txt",
                               "/out-dir/", "/out-dir", "/out-dir/outside.txt/"]}
    assert set(statuses.values()) == {404}, statuses


@pytest.mark.parametrize("follow", [False, True])
def test_listing_names_only_what_a_request_would_be_served(root, follow):
    resolver = PathResolver(str(root), follow_symlinks=follow)
    page = listing_page(str(root), "/", lambda href: resolver.servable(("/" + href).encode()))
    shown = {"hello.txt", ".well-known/", "sub/"} | ({"link-in"} if follow else set())
    for name in [".env", ".git", ".htpasswd", "link-to-env", "link-to-git", "out-exists", "out-missing", "out-dir",
                 *([] if follow else ["link-in"])]:
        assert f'href="./{name}'.encode() not in page, name
    for name in shown:
        assert f'href="./{name}"'.encode() in page, name


def get_all(server, targets: list[str]):
    """GET each target over one connection; the replies, in order."""
    requests = b"".join(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode() for target in targets)
    with server.connect() as sock:
        replies, _ = exchange(sock, requests, ["GET"] * len(targets), timeout=30)
    assert len(replies) == len(targets)
    return dict(zip(targets, replies, strict=True))


def test_hidden_files_are_404_and_unlisted_under_every_strategy(serve, strategy, root):
    server = serve("http", "--root", str(root), "--listing", "--follow-symlinks", strategy=strategy)
    replies = get_all(server, [*HIDDEN, "/out-exists", "/out-missing", "/out-dir/outside.txt",
                               "/.well-known/security.txt", "/", "/sub/", "/.well-known/"])
    for target in [*HIDDEN, "/out-exists", "/out-missing", "/out-dir/outside.txt"]:
        assert replies[target].status == 404, target
        assert b"SECRET" not in replies[target].body, target
    assert (replies["/.well-known/security.txt"].status, replies["/.well-known/security.txt"].body) \
        == (200, b"Contact: x\n")
    listing = replies["/"].body
    assert replies["/"].status == 200 and b"hello.txt" in listing and b".well-known/" in listing
    for name in [b".env", b".git", b".htpasswd", b"link-to-env", b"out-exists", b"out-missing", b"out-dir"]:
        assert name not in listing, name
    assert b"shown.txt" in replies["/sub/"].body and b".secret" not in replies["/sub/"].body \
        and b".well-known" not in replies["/sub/"].body
    assert b"security.txt" in replies["/.well-known/"].body and b".hidden" not in replies["/.well-known/"].body


def test_dotfiles_allow_over_the_wire(serve, root):
    server = serve("http", "--root", str(root), "--listing", "--dotfiles", "allow")
    replies = get_all(server, ["/.env", "/.git/config", "/"])
    assert (replies["/.env"].status, replies["/.env"].body) == (200, b"PASSWORD=SECRET\n")
    assert replies["/.git/config"].status == 200
    assert b'href="./.env"' in replies["/"].body and b'href="./.git/"' in replies["/"].body
