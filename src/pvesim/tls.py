"""A self-signed certificate for the emulator (its own CA, valid for localhost and 127.0.0.1)."""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def make_self_signed(directory: Path, hostnames: list[str] | None = None) -> tuple[Path, Path, str]:
    """Write cert.pem and key.pem into directory; return (cert, key, SHA-256 fingerprint AA:BB:...)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "pvesim"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pvesim (PVE API emulator)"),
        ]
    )
    now = dt.datetime.now(dt.UTC)
    sans: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    for h in hostnames or []:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_path = directory / "pvesim-cert.pem"
    key_path = directory / "pvesim-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_path.chmod(0o600)
    fp = cert.fingerprint(hashes.SHA256()).hex().upper()
    return cert_path, key_path, ":".join(fp[i : i + 2] for i in range(0, len(fp), 2))


# --- the node certificates PVE reports under /nodes/{node}/certificates/info --------------------

_SHORT = {
    NameOID.COMMON_NAME: "CN",
    NameOID.ORGANIZATION_NAME: "O",
    NameOID.ORGANIZATIONAL_UNIT_NAME: "OU",
    NameOID.COUNTRY_NAME: "C",
    NameOID.STATE_OR_PROVINCE_NAME: "ST",
    NameOID.LOCALITY_NAME: "L",
}


def oneline(name: x509.Name) -> str:
    """OpenSSL's X509_NAME_oneline form (`/CN=.../O=...`), the form PVE reports."""
    return "".join(f"/{_SHORT.get(a.oid, a.oid.dotted_string)}={a.value!s}" for a in name)


def fingerprint(cert: x509.Certificate) -> str:
    fp = cert.fingerprint(hashes.SHA256()).hex().upper()
    return ":".join(fp[i : i + 2] for i in range(0, len(fp), 2))


def issue(
    subject: x509.Name,
    sans: list[str],
    not_before: float,
    not_after: float,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None,
    ca: bool = False,
) -> x509.Certificate:
    """A certificate for `key` signed by `issuer` (None: self-signed), valid between the two epochs."""
    names: list[x509.GeneralName] = []
    for h in sans:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            names.append(x509.DNSName(h))
    signer_cert, signer_key = issuer if issuer else (None, key)
    b = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(signer_cert.subject if signer_cert else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(dt.datetime.fromtimestamp(int(not_before), dt.UTC))
        .not_valid_after(dt.datetime.fromtimestamp(int(not_after), dt.UTC))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if names:
        b = b.add_extension(x509.SubjectAlternativeName(names), critical=False)
    # key identifiers and usages as a strict verifier (Python 3.13's VERIFY_X509_STRICT) wants them
    b = b.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    b = b.add_extension(
        x509.AuthorityKeyIdentifier.from_issuer_public_key(signer_key.public_key()), critical=False
    )
    b = b.add_extension(
        x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
            key_agreement=False, key_cert_sign=ca, crl_sign=ca, encipher_only=False, decipher_only=False,
        ),
        critical=True,
    )
    if not ca:
        b = b.add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    return b.sign(signer_key, hashes.SHA256())


def certificate_info(cert: x509.Certificate, filename: str) -> dict[str, Any]:
    """What PVE::Certificate::get_certificate_info returns for one certificate file."""
    try:
        san_ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        # in the certificate's order; IPv6 written out in full as PVE's unpack("H4" x 8) does
        san = [
            (n.value.exploded if n.value.version == 6 else str(n.value)) if isinstance(n, x509.IPAddress)
            else str(n.value)
            for n in san_ext
        ]
    except x509.ExtensionNotFound:
        san = []
    pub = cert.public_key()
    key_type = "id-ecPublicKey" if isinstance(pub, ec.EllipticCurvePublicKey) else "rsaEncryption"
    return {
        "filename": filename,
        "fingerprint": fingerprint(cert),
        "subject": oneline(cert.subject),
        "issuer": oneline(cert.issuer),
        "notbefore": int(cert.not_valid_before_utc.timestamp()),
        "notafter": int(cert.not_valid_after_utc.timestamp()),
        "san": san,
        "pem": cert.public_bytes(serialization.Encoding.PEM).decode(),
        "public-key-type": key_type,
        "public-key-bits": pub.key_size,  # type: ignore[union-attr]
    }
