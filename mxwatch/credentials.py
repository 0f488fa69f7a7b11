"""The app's credential: a certificate file, a client secret file or an environment variable.

Loading for MSAL (exchange.py), checking for `mxwatch check-config` (cli.py), and the warning
about files every user may read (cli.py and daemon.py).

Every message starts with the key path the reference comes from (`exchange.certificate`,
`tenant[2].client_secret_file`) and never contains the path or the variable name: an operator
may have pasted the secret itself into the key. These messages reach check-config, the logs, a
tenant's `blocked` reason in the state, and the append-only journal, which cannot be scrubbed.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import assert_never

from .settings import CertificateRef, Config, CredentialRef, SecretEnvRef, SecretFileRef

_PEM_BLOCK = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.*?-----END \1-----", re.DOTALL)


class CredentialProblem(Exception):
    """A credential that cannot be used; the text names its key and is safe to show."""


@dataclass(frozen=True)
class _CertificateMaterial:
    private_key_pem: str
    certificate_pem: str
    sha1_thumbprint: str
    expires: datetime


def load_credential(ref: CredentialRef) -> str | dict[str, str]:
    """The client_credential argument for MSAL; raises CredentialProblem."""
    if isinstance(ref, CertificateRef):
        material = _load_certificate(ref)
        return {
            "private_key": material.private_key_pem,
            "thumbprint": material.sha1_thumbprint,
            # Sending x5c lets tenants that use subject-name/issuer auth accept a renewed cert.
            "public_certificate": material.certificate_pem,
        }
    if isinstance(ref, SecretFileRef):
        secret = _read_text(ref).rstrip("\r\n")
        if not secret.strip():
            raise CredentialProblem(f"{ref.key}: the client secret file is empty")
        return secret
    if isinstance(ref, SecretEnvRef):
        value = os.environ.get(ref.name)
        if value is None:
            raise CredentialProblem(f"{ref.key}: the environment variable it names is not set")
        if not value.strip():
            raise CredentialProblem(f"{ref.key}: the environment variable it names is empty")
        return value
    assert_never(ref)


def check_credential(ref: CredentialRef) -> list[str]:
    """Problems with a credential, for `mxwatch check-config`: unusable, or expired."""
    try:
        if isinstance(ref, CertificateRef):
            return _expiry_problems(ref, _load_certificate(ref))
        load_credential(ref)
    except CredentialProblem as problem:
        return [str(problem)]
    return []


def credential_refs(config: Config) -> list[CredentialRef]:
    """Each credential the tenants use, once, under the key path of its first mention."""
    return list(dict.fromkeys(tenant.credential for tenant in config.tenants))


@dataclass(frozen=True)
class ExposedSecretFile:
    """A certificate or client secret file that every user of the machine may read."""

    key: str  # the key path it comes from, e.g. "tenant[2].client_secret_file"
    mode: int  # the permission bits, e.g. 0o644

    def message(self) -> str:
        return (
            f"{self.key}: the file is readable by every user (mode {self.mode:04o}); "
            "it holds a secret: chmod o-rwx it (0600, or 0640 for a group)"
        )


def exposed_secret_files(config: Config) -> list[ExposedSecretFile]:
    """Credential files readable by others: a warning, not an error (the file still works).

    A file that cannot be inspected is left to check_credential, which reports it as a problem.
    """
    exposed = []
    for ref in credential_refs(config):
        if isinstance(ref, SecretEnvRef):
            continue
        try:
            mode = ref.path.stat().st_mode
        except OSError:
            continue
        if stat.S_ISREG(mode) and mode & stat.S_IROTH:
            exposed.append(ExposedSecretFile(ref.key, stat.S_IMODE(mode)))
    return exposed


def _read_text(ref: CertificateRef | SecretFileRef) -> str:
    try:
        return ref.path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CredentialProblem(f"{ref.key}: file not found") from None
    except IsADirectoryError:
        raise CredentialProblem(f"{ref.key}: is a directory, not a file") from None
    except PermissionError:
        raise CredentialProblem(f"{ref.key}: permission denied (cannot read the file)") from None
    except UnicodeDecodeError:
        raise CredentialProblem(f"{ref.key}: not a text file (expected PEM or a secret)") from None
    except OSError as exc:
        raise CredentialProblem(f"{ref.key}: cannot read the file: {exc.strerror}") from None


def _load_certificate(ref: CertificateRef) -> _CertificateMaterial:
    # Imported here: a steady `--once` reads no credential, and cryptography takes ~70 ms.
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    text = _read_text(ref)
    blocks = [(m.group(1), m.group(0)) for m in _PEM_BLOCK.finditer(text)]
    keys = [pem for label, pem in blocks if label.endswith("PRIVATE KEY")]
    certs = [pem for label, pem in blocks if label == "CERTIFICATE"]
    if not keys:
        raise CredentialProblem(f"{ref.key}: no PEM private key found (need key and certificate)")
    if not certs:
        raise CredentialProblem(f"{ref.key}: no PEM certificate found (need key and certificate)")
    if "ENCRYPTED" in keys[0]:
        raise CredentialProblem(f"{ref.key}: the private key is encrypted; store it unencrypted")
    try:
        key = serialization.load_pem_private_key(keys[0].encode(), password=None)
    except (ValueError, TypeError):
        raise CredentialProblem(f"{ref.key}: the private key cannot be parsed") from None
    try:
        cert = x509.load_pem_x509_certificate(certs[0].encode())
    except ValueError:
        raise CredentialProblem(f"{ref.key}: the certificate cannot be parsed") from None
    # MSAL signs the client assertion with RS256/PS256, which need an RSA key.
    if not isinstance(key, rsa.RSAPrivateKey):
        raise CredentialProblem(f"{ref.key}: the private key is not RSA (Entra needs RSA)")
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    encoding = serialization.Encoding.DER
    if key.public_key().public_bytes(encoding, public) != cert.public_key().public_bytes(
        encoding, public
    ):
        raise CredentialProblem(f"{ref.key}: the private key does not match the first certificate")
    thumbprint = hashlib.sha1(cert.public_bytes(encoding), usedforsecurity=False).hexdigest()
    return _CertificateMaterial(keys[0], certs[0], thumbprint.upper(), cert.not_valid_after_utc)


def _expiry_problems(ref: CertificateRef, material: _CertificateMaterial) -> list[str]:
    if material.expires <= datetime.now(UTC):
        return [f"{ref.key}: the certificate expired on {material.expires:%Y-%m-%d}"]
    return []
