"""Certificates made at test time (the ``cryptography`` package) and TLS clients for the tests."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class TlsFiles:
    """A CA, a server certificate for 127.0.0.1/::1/localhost signed by it, and a client certificate."""

    ca: Path
    cert: Path
    key: Path
    encrypted_key: Path
    password_file: Path
    client_cert: Path
    client_key: Path

    def server_args(self) -> list[str]:
        """``--tls-cert`` and ``--tls-key`` for ``forkthread serve``."""
        return ["--tls-cert", str(self.cert), "--tls-key", str(self.key)]


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(subject: str, key: ec.EllipticCurvePrivateKey, issuer: str, issuer_key: ec.EllipticCurvePrivateKey,
                 *, ca: bool = False, sans: list[x509.GeneralName] | None = None) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=2))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                          key_encipherment=False, data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False), critical=True)
        builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    else:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _pem_key(key: ec.EllipticCurvePrivateKey, password: bytes | None = None) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


def make_tls_files(directory: Path) -> TlsFiles:
    """Write a fresh CA, server and client certificate (ECDSA P-256) into *directory*."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _certificate("forkthread test CA", ca_key, "forkthread test CA", ca_key, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                    x509.IPAddress(ipaddress.ip_address("::1")), x509.DNSName("localhost")]
    server_cert = _certificate("127.0.0.1", server_key, "forkthread test CA", ca_key, sans=sans)
    client_key = ec.generate_private_key(ec.SECP256R1())
    client_cert = _certificate("test client", client_key, "forkthread test CA", ca_key)
    files = TlsFiles(ca=directory / "ca.pem", cert=directory / "cert.pem", key=directory / "key.pem",
                     encrypted_key=directory / "key-encrypted.pem", password_file=directory / "password.txt",
                     client_cert=directory / "client.pem", client_key=directory / "client-key.pem")
    pem = serialization.Encoding.PEM
    files.ca.write_bytes(ca_cert.public_bytes(pem))
    files.cert.write_bytes(server_cert.public_bytes(pem))
    files.key.write_bytes(_pem_key(server_key))
    files.encrypted_key.write_bytes(_pem_key(server_key, b"s3cret pass"))
    files.password_file.write_bytes(b"s3cret pass\n")
    files.client_cert.write_bytes(client_cert.public_bytes(pem))
    files.client_key.write_bytes(_pem_key(client_key))
    return files


def client_context(files: TlsFiles) -> ssl.SSLContext:
    """A client context trusting the test CA."""
    return ssl.create_default_context(cafile=str(files.ca))


def tls_connect(address: str, files: TlsFiles, timeout: float = 10.0,
                context: ssl.SSLContext | None = None) -> ssl.SSLSocket:
    """A TLS client connection to ``HOST:PORT`` (handshake done), checking the certificate."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    sock = socket.create_connection((host, int(port)), timeout=timeout)
    try:
        return (context or client_context(files)).wrap_socket(sock, server_hostname=host)
    except BaseException:
        sock.close()
        raise


def client_hello(files: TlsFiles) -> bytes:
    """The bytes of a real ClientHello, as a TLS client would send first."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = client_context(files).wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def tls_echo(sock: ssl.SSLSocket, payload: bytes, chunk: int = 65536) -> bytes:
    """Send *payload* while reading the echo in one thread (non-blocking); return what came back."""
    import selectors
    import time

    sock.setblocking(False)
    received = bytearray()
    sent = 0
    deadline = time.monotonic() + 60
    with selectors.DefaultSelector() as selector:
        selector.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
        while len(received) < len(payload) and time.monotonic() < deadline:
            for _, events in selector.select(1):
                if events & selectors.EVENT_WRITE and sent < len(payload):
                    try:
                        sent += sock.send(payload[sent:sent + chunk])
                    except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
                        pass
                    if sent == len(payload):
                        selector.modify(sock, selectors.EVENT_READ)
                if events & selectors.EVENT_READ:
                    while True:
                        try:
                            data = sock.recv(65536)
                        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                            break
                        if not data:
                            return bytes(received)
                        received += data
    return bytes(received)
