"""Certificates generated in the test (cryptography): a CA, a server and a client certificate."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class TlsFiles:
    """PEM files in one directory."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    server_name: str
    ca_key: Path


def issue_client(files: TlsFiles, name: str, cert: Path, key: Path) -> None:
    """Write another client certificate (SAN ``name``) signed by the CA of ``files``."""
    ca_cert = x509.load_pem_x509_certificate(files.ca.read_bytes())
    ca_key = serialization.load_pem_private_key(files.ca_key.read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    client_key = _key()
    issued = _issue(
        name,
        client_key,
        ca_cert.subject,
        ca_key,
        sans=[x509.DNSName(name)],
        usage=ExtendedKeyUsageOID.CLIENT_AUTH,
    )
    cert.write_bytes(issued.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(_pem_key(client_key))


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _issue(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    ca_name: x509.Name,
    ca_key: ec.EllipticCurvePrivateKey,
    *,
    sans: list[x509.GeneralName],
    usage: x509.ObjectIdentifier,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )


def generate(directory: Path, server_name: str = "istiod.test", prefix: str = "") -> TlsFiles:
    """Write a fresh CA, a server cert for ``server_name`` and 127.0.0.1, and a client cert."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = _key()
    ca_name = _name(f"{prefix}test-ca")
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    server_key, client_key = _key(), _key()
    server_cert = _issue(
        server_name,
        server_key,
        ca_name,
        ca_key,
        sans=[x509.DNSName(server_name), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
    )
    client_cert = _issue(
        "wasm-agent",
        client_key,
        ca_name,
        ca_key,
        sans=[x509.DNSName("wasm-agent.test")],
        usage=ExtendedKeyUsageOID.CLIENT_AUTH,
    )
    files = TlsFiles(
        ca=directory / f"{prefix}ca.pem",
        server_cert=directory / f"{prefix}server.pem",
        server_key=directory / f"{prefix}server-key.pem",
        client_cert=directory / f"{prefix}client.pem",
        client_key=directory / f"{prefix}client-key.pem",
        server_name=server_name,
        ca_key=directory / f"{prefix}ca-key.pem",
    )
    files.ca_key.write_bytes(_pem_key(ca_key))
    pem = serialization.Encoding.PEM
    files.ca.write_bytes(ca_cert.public_bytes(pem))
    files.server_cert.write_bytes(server_cert.public_bytes(pem))
    files.server_key.write_bytes(_pem_key(server_key))
    files.client_cert.write_bytes(client_cert.public_bytes(pem))
    files.client_key.write_bytes(_pem_key(client_key))
    return files
