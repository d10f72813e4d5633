"""Transport security for both gRPC links: TLS, mutual TLS, and who an agent is.

A fleet has one certificate authority (:func:`make_fleet_certs`, ``cachenet certs``):
the cloud's server certificate (named for the hosts agents dial), and one client
certificate per agent whose common name is the agent's id. With mutual TLS the
cloud knows who calls from the certificate alone (:func:`peer_identity`), and an
agent may register, subscribe, ack, report and escalate only as itself.

:class:`TLSFiles` names a side's PEM files: ``ca`` (whom to trust), ``cert`` and
``key`` (who it is). Plaintext remains for local development, logged loudly by the
daemons. Certificate generation needs the ``cryptography`` package.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from cachenet.exceptions import ConfigError


@dataclass(frozen=True)
class TLSFiles:
    ca: Path
    cert: Path | None = None
    key: Path | None = None

    def read(self) -> tuple[bytes, bytes | None, bytes | None]:
        try:
            return (Path(self.ca).read_bytes(),
                    Path(self.cert).read_bytes() if self.cert else None,
                    Path(self.key).read_bytes() if self.key else None)
        except OSError as exc:
            raise ConfigError(f"cannot read a TLS file: {exc}") from None


def server_credentials(files: TLSFiles, *, require_client_cert: bool = True
                       ) -> grpc.ServerCredentials:
    """The cloud's: its certificate and key, and (mutual TLS) the CA its clients show."""
    ca, cert, key = files.read()
    if cert is None or key is None:
        raise ConfigError("a TLS server needs its certificate and key")
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca,
                                       require_client_auth=require_client_cert)


def channel_credentials(files: TLSFiles) -> grpc.ChannelCredentials:
    """A client's: the CA it trusts, and its own certificate for mutual TLS."""
    ca, cert, key = files.read()
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key,
                                        certificate_chain=cert)


def peer_identity(context: Any) -> str | None:
    """The common name of the client certificate a call came with, or None."""
    try:
        names = context.auth_context().get("x509_common_name") or []
    except Exception:
        return None
    return names[0].decode() if names else None


def _name(common_name: str) -> Any:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _issue(subject: str, key: Any, issuer_key: Any, issuer: str, *, ca: bool,
           hosts: list[str] | None = None, days: int = 825, usage: str | None = None) -> Any:
    """A certificate; ``usage`` "server" or "client" limits what it may be used for."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID

    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(_name(subject))
               .issuer_name(_name(issuer)).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if usage is not None:
        oid = (ExtendedKeyUsageOID.SERVER_AUTH if usage == "server"
               else ExtendedKeyUsageOID.CLIENT_AUTH)
        builder = builder.add_extension(x509.ExtendedKeyUsage([oid]), critical=True)
    if hosts:
        alt = []
        for h in hosts:
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(h)))
            except ValueError:
                alt.append(x509.DNSName(h))
        builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make_fleet_certs(out: Path, agents: list[str], hosts: list[str]) -> dict[str, Path]:
    """A CA, the cloud's certificate for ``hosts``, and one client certificate per agent
    (common name: its id), as PEM files in ``out``; keys mode 0600."""
    import os

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from cachenet.core.ids import check_agent_id

    for a in agents:
        check_agent_id(a)
    clash = sorted(set(agents) & set(hosts))
    if clash or not hosts:
        raise ConfigError(f"agent ids must not be the cloud's host names ({clash}), and the "
                          "cloud needs at least one host name")
    out.mkdir(parents=True, exist_ok=True)
    if (out / "ca.pem").exists():
        raise ConfigError(f"{out / 'ca.pem'} exists; refusing to replace a fleet's CA")
    written: dict[str, Path] = {}

    def save(name: str, cert: Any, key: Any) -> None:
        (out / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        fd = os.open(out / f"{name}.key", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
        written[name] = out / f"{name}.pem"

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _issue("cachenet fleet CA", ca_key, ca_key, "cachenet fleet CA", ca=True, days=3650)
    save("ca", ca, ca_key)
    key = ec.generate_private_key(ec.SECP256R1())
    save("cloud", _issue(hosts[0], key, ca_key, "cachenet fleet CA", ca=False, hosts=hosts,
                         usage="server"), key)
    for agent in agents:
        key = ec.generate_private_key(ec.SECP256R1())
        save(f"agent-{agent}", _issue(agent, key, ca_key, "cachenet fleet CA", ca=False,
                                      usage="client"), key)
    return written
