"""TLS contexts: what ``--tls-cert``, ``--tls-key``, ``--tls-password-file`` and ``--tls-client-ca`` build.

The one place that decides how a server's :class:`ssl.SSLContext` is set up:

* the standard library's server defaults (``ssl.create_default_context(Purpose.CLIENT_AUTH)``:
  its cipher list, no compression, a fresh ticket key per context, ...);
* TLS 1.2 at least: a TLS 1.0 or 1.1 client is refused in the handshake;
* renegotiation refused (``OP_NO_RENEGOTIATION``; TLS 1.3 has none at all);
* ALPN protocols when the server names some (``http/1.1`` for http);
* a client certificate required and checked against ``--tls-client-ca`` when given
  (that file only: the system's CAs are never trusted for client certificates);
* ``SSLKEYLOGFILE`` ignored: session secrets are never written out.

A certificate, key or password that does not load is a :class:`TlsConfigError`
with a one-line message (the command line prints it and exits 1).

This module imports :mod:`ssl`; nothing imports it unless TLS is asked for, so
a server without TLS never loads OpenSSL.
"""

from __future__ import annotations

import dataclasses
import ssl
import weakref
from collections.abc import Sequence

#: The oldest protocol a server accepts.
MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2


class TlsConfigError(ValueError):
    """A certificate, key, password or CA file that cannot be used; the message is one line."""


def _read_password(path: str) -> bytes:
    """The first line of *path*, without its line end: the private key's pass phrase."""
    try:
        with open(path, "rb") as file:
            return file.readline().rstrip(b"\r\n")
    except OSError as exc:
        raise TlsConfigError(f"cannot read TLS password file {path!r}: {exc.strerror or exc}") from None


def _reason(exc: BaseException) -> str:
    """One line out of whatever OpenSSL or the file system said."""
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc).splitlines()[0]
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def server_context(
    cert: str,
    key: str | None = None,
    *,
    password_file: str | None = None,
    client_ca: str | None = None,
    alpn_protocols: Sequence[str] = (),
) -> ssl.SSLContext:
    """A server-side context for the certificate chain *cert* and private key *key*.

    *key* may be None when *cert* holds the key too.  *password_file* holds
    the key's pass phrase on its first line.  With *client_ca*, clients must
    present a certificate signed by one of those CAs.  Raises
    :class:`TlsConfigError` for anything that does not load.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    # A server must not write its session secrets wherever an inherited SSLKEYLOGFILE points.
    context.keylog_filename = None  # type: ignore[assignment]
    context.minimum_version = MINIMUM_VERSION
    context.options |= ssl.OP_NO_RENEGOTIATION | ktls_option()
    password = _read_password(password_file) if password_file is not None else None
    try:
        # A None password makes OpenSSL ask on the terminal; an empty one fails instead.
        context.load_cert_chain(cert, key, password=password if password is not None else b"")
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise TlsConfigError(f"cannot load TLS certificate {cert!r} / key {key or cert!r}: {_reason(exc)}") from None
    if client_ca is not None:
        try:
            context.load_verify_locations(cafile=client_ca)
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise TlsConfigError(f"cannot load TLS client CA file {client_ca!r}: {_reason(exc)}") from None
        context.verify_mode = ssl.CERT_REQUIRED
    if alpn_protocols:
        context.set_alpn_protocols(list(alpn_protocols))
    _recipes[context] = ContextRecipe(cert, key, password_file, client_ca, tuple(alpn_protocols))
    return context


@dataclasses.dataclass(frozen=True)
class ContextRecipe:
    """How a :func:`server_context` was made: another interpreter makes the same context from it.

    An :class:`ssl.SSLContext` cannot cross interpreters (nor be pickled);
    its files can be loaded again (the ``interpreters`` strategy's workers).
    """

    cert: str
    key: str | None
    password_file: str | None
    client_ca: str | None
    alpn_protocols: tuple[str, ...]

    def make(self) -> ssl.SSLContext:
        """The context again (:class:`TlsConfigError` if a file no longer loads)."""
        return server_context(self.cert, self.key, password_file=self.password_file, client_ca=self.client_ca,
                              alpn_protocols=self.alpn_protocols)


#: The recipe of every context server_context() made (and only those).
_recipes: weakref.WeakKeyDictionary[ssl.SSLContext, ContextRecipe] = weakref.WeakKeyDictionary()


def context_recipe(context: ssl.SSLContext) -> ContextRecipe | None:
    """How *context* was made, when :func:`server_context` made it (None: a context made elsewhere)."""
    return _recipes.get(context)


def client_context(cafile: str | None = None, *, insecure: bool = False) -> ssl.SSLContext:
    """A client context: the system's trust store, or *cafile*; *insecure* checks nothing (lab use)."""
    context = ssl.create_default_context(cafile=cafile)
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def ktls_option() -> int:
    """``ssl.OP_ENABLE_KTLS`` where this Python has it (3.12+), else 0.

    Kernel TLS lets ``sendfile(2)`` run on a TLS socket, the kernel
    encrypting; it needs OpenSSL built with it, the ``tls`` kernel module, and
    a socket OpenSSL writes itself (not a memory BIO).  Where any of that is
    missing OpenSSL quietly goes on in user space.
    """
    return int(getattr(ssl, "OP_ENABLE_KTLS", 0))


__all__ = ["MINIMUM_VERSION", "TlsConfigError", "client_context", "ktls_option", "server_context"]
