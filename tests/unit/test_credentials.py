"""Credential loading and checking: every message names the key, never the path or variable."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trustme

from mxwatch.config import load_config
from mxwatch.credentials import (
    CredentialProblem,
    check_credential,
    exposed_secret_files,
    load_credential,
)
from mxwatch.settings import CertificateRef, SecretEnvRef, SecretFileRef
from tests.fixtures.sandbox import make_app_certificate

# Paths and variable names below contain it, as if a secret had been pasted into the key.
PASTED = "Qz7pasted"
KEY = "tenant[3].certificate"


def rsa_leaf(**validity: datetime) -> trustme.LeafCert:
    return trustme.CA(key_type=trustme.KeyType.RSA).issue_cert(
        "app", key_type=trustme.KeyType.RSA, **validity
    )


def test_usable_credentials_have_no_problem_and_load_for_msal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert = make_app_certificate(tmp_path)
    secret = tmp_path / "secret"
    secret.write_text("the-secret\n")
    monkeypatch.setenv("MXWATCH_TEST_SECRET", "from-the-environment")
    refs = [cert.ref, SecretFileRef(secret), SecretEnvRef("MXWATCH_TEST_SECRET")]
    assert [check_credential(ref) for ref in refs] == [[], [], []]
    material = load_credential(cert.ref)
    assert isinstance(material, dict)
    assert material["private_key"] == cert.private_key_pem.decode().strip()
    assert len(material["thumbprint"]) == 40
    assert load_credential(SecretFileRef(secret)) == "the-secret"
    assert load_credential(SecretEnvRef("MXWATCH_TEST_SECRET")) == "from-the-environment"


def test_every_problem_names_the_key_and_never_the_path_or_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = tmp_path / PASTED
    base.mkdir()
    only_cert = base / "cert-only.pem"
    only_cert.write_bytes(make_app_certificate(tmp_path).certificate_pem)
    ecdsa = base / "ecdsa.pem"
    trustme.CA().issue_cert("x").private_key_and_cert_chain_pem.write_to_path(str(ecdsa))
    mismatch = base / "mismatch.pem"
    mismatch.write_bytes(rsa_leaf().private_key_pem.bytes() + rsa_leaf().cert_chain_pems[0].bytes())
    binary = base / "binary"
    binary.write_bytes(b"\xff\xfe")
    empty = base / "empty-secret"
    empty.write_text("\n")
    monkeypatch.delenv(f"{PASTED}_UNSET", raising=False)
    monkeypatch.setenv(f"{PASTED}_BLANK", " ")

    found = {
        "missing": check_credential(CertificateRef(base / "nope.pem", key=KEY)),
        "directory": check_credential(CertificateRef(base, key=KEY)),
        "no key": check_credential(CertificateRef(only_cert, key=KEY)),
        "not rsa": check_credential(CertificateRef(ecdsa, key=KEY)),
        "mismatch": check_credential(CertificateRef(mismatch, key=KEY)),
        "binary": check_credential(SecretFileRef(binary, key="exchange.client_secret_file")),
        "empty": check_credential(SecretFileRef(empty, key="exchange.client_secret_file")),
        "unset": check_credential(
            SecretEnvRef(f"{PASTED}_UNSET", key="tenant[0].client_secret_env")
        ),
        "blank": check_credential(
            SecretEnvRef(f"{PASTED}_BLANK", key="tenant[0].client_secret_env")
        ),
    }
    assert found == {
        "missing": [f"{KEY}: file not found"],
        "directory": [f"{KEY}: is a directory, not a file"],
        "no key": [f"{KEY}: no PEM private key found (need key and certificate)"],
        "not rsa": [f"{KEY}: the private key is not RSA (Entra needs RSA)"],
        "mismatch": [f"{KEY}: the private key does not match the first certificate"],
        "binary": ["exchange.client_secret_file: not a text file (expected PEM or a secret)"],
        "empty": ["exchange.client_secret_file: the client secret file is empty"],
        "unset": ["tenant[0].client_secret_env: the environment variable it names is not set"],
        "blank": ["tenant[0].client_secret_env: the environment variable it names is empty"],
    }


def test_loading_for_msal_raises_the_same_keyed_problem(tmp_path: Path) -> None:
    with pytest.raises(CredentialProblem) as caught:
        load_credential(SecretFileRef(tmp_path / PASTED, key="tenant[1].client_secret_file"))
    assert str(caught.value) == "tenant[1].client_secret_file: file not found"


def test_an_expired_certificate_is_a_problem(tmp_path: Path) -> None:
    expired = datetime.now(UTC) - timedelta(days=2)
    leaf = rsa_leaf(not_before=expired - timedelta(days=365), not_after=expired)
    path = tmp_path / f"{PASTED}.pem"
    leaf.private_key_and_cert_chain_pem.write_to_path(str(path))
    assert check_credential(CertificateRef(path, key=KEY)) == [
        f"{KEY}: the certificate expired on {expired:%Y-%m-%d}"
    ]


def test_a_world_readable_file_is_named_by_its_key(tmp_path: Path) -> None:
    secret = tmp_path / PASTED
    secret.write_text("the-secret\n")
    config = tmp_path / "mxwatch.toml"
    config.write_text(
        '[exchange]\nclient_id = "33333333-3333-3333-3333-333333333333"\n'
        'client_secret_env = "MXWATCH_UNUSED"\n'
        '[[tenant]]\nname = "a"\ntenant_id = "11111111-1111-1111-1111-111111111111"\n'
        f'connector = "c"\ndomains = ["a.example"]\nclient_secret_file = "{secret}"\n'
    )
    loaded = load_config(config, environ={"HOME": str(tmp_path)})
    for mode, expected in ((0o600, []), (0o640, []), (0o604, [0o604])):
        secret.chmod(mode)
        exposed = exposed_secret_files(loaded)
        assert [(e.key, e.mode) for e in exposed] == [
            ("tenant[0].client_secret_file", m) for m in expected
        ]
    (warning,) = exposed
    assert warning.message() == (
        "tenant[0].client_secret_file: the file is readable by every user (mode 0604); "
        "it holds a secret: chmod o-rwx it (0600, or 0640 for a group)"
    )
