"""The web config (`metrics.web_config`): what it accepts, what it refuses and how, and the
basic auth check. The server using it is tested in tests/integration/test_status_page.py."""

from __future__ import annotations

import base64
from pathlib import Path

import bcrypt
import pytest
import trustme
from cryptography.hazmat.primitives import serialization

from mxwatch.config import ConfigError
from mxwatch.settings import MetricsConfig
from mxwatch.webconfig import TlsFiles, WebConfig, exposure, load_web_config

PASSWORD = "correct horse battery staple"
# Cost 4, bcrypt's least: the tests check the logic, not bcrypt's slowness.
HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()
TLS = TlsFiles(Path("web.crt"), Path("web.key"))


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def certificate(directory: Path) -> None:
    """web.crt and web.key for 127.0.0.1, from a throw-away CA."""
    leaf = trustme.CA().issue_cert("127.0.0.1")
    leaf.cert_chain_pems[0].write_to_path(str(directory / "web.crt"))
    leaf.private_key_pem.write_to_path(str(directory / "web.key"))


def write(directory: Path, text: str) -> Path:
    path = directory / "web.toml"
    path.write_text(text)
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as failed:
        load_web_config(path)
    return failed.value.problems


def test_tls_and_users_with_paths_relative_to_the_file(tmp_path: Path) -> None:
    certificate(tmp_path)
    path = write(
        tmp_path,
        f'[tls_server_config]\ncert_file = "web.crt"\nkey_file = "web.key"\n'
        f'min_version = "TLS13"\n[basic_auth_users]\nprometheus = "{HASH}"\n',
    )
    config = load_web_config(path)
    assert config.tls is not None and config.tls.cert_file == tmp_path / "web.crt"
    context = config.server_context()
    assert context is not None and context.minimum_version.name == "TLSv1_3"
    assert HASH not in repr(config), "a hash never reaches a log line through repr"


def test_basic_auth() -> None:
    config = WebConfig(users=(("prometheus", HASH.encode()), ("ops", HASH.encode())))
    assert config.authorised(basic("prometheus", PASSWORD))
    assert config.authorised(basic("ops", PASSWORD))
    assert not config.authorised(None)
    assert not config.authorised(basic("prometheus", "wrong"))
    assert not config.authorised(basic("nobody", PASSWORD))
    assert not config.authorised(basic("prometheus", PASSWORD + "x" * 80)), "over 72 bytes"
    assert not config.authorised("Basic !!!not-base64")
    assert not config.authorised("Basic " + base64.b64encode(b"no-colon").decode())
    assert not config.authorised("Bearer " + PASSWORD)
    assert WebConfig().authorised(None), "without users, no password is asked"


def test_htpasswd_2y_hashes_are_accepted(tmp_path: Path) -> None:
    hashed = "$2y$" + HASH[4:]
    config = load_web_config(write(tmp_path, f'[basic_auth_users]\nalice = "{hashed}"\n'))
    assert config.authorised(basic("alice", PASSWORD))


def test_a_plain_text_password_is_refused_and_never_echoed(tmp_path: Path) -> None:
    path = write(tmp_path, f'[basic_auth_users]\nalice = "{PASSWORD}"\nbob = 12\n')
    found = problems(path)
    assert [p.split(": not a bcrypt hash")[0] for p in found] == [
        "metrics.web_config: basic_auth_users.alice",
        "metrics.web_config: basic_auth_users.bob",
    ]
    assert not [p for p in found if PASSWORD in p]


def test_missing_certificate_files_are_named(tmp_path: Path) -> None:
    path = write(tmp_path, '[tls_server_config]\ncert_file = "nope.crt"\n')
    assert problems(path) == [
        f"metrics.web_config: tls_server_config.cert_file: {tmp_path / 'nope.crt'} is not a file",
        "metrics.web_config: tls_server_config.key_file: required, a path to a PEM file",
    ]


def test_a_key_that_is_not_the_certificates_is_refused(tmp_path: Path) -> None:
    certificate(tmp_path)
    other = trustme.CA().issue_cert("127.0.0.1")
    other.private_key_pem.write_to_path(str(tmp_path / "other.key"))
    path = write(tmp_path, '[tls_server_config]\ncert_file = "web.crt"\nkey_file = "other.key"\n')
    (problem,) = problems(path)
    assert problem.startswith("metrics.web_config: tls_server_config: cannot use cert_file with")


def test_an_encrypted_key_is_refused_not_prompted_for(tmp_path: Path) -> None:
    certificate(tmp_path)
    key = serialization.load_pem_private_key((tmp_path / "web.key").read_bytes(), None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase"),
    )
    (tmp_path / "web.key").write_bytes(encrypted)
    path = write(tmp_path, '[tls_server_config]\ncert_file = "web.crt"\nkey_file = "web.key"\n')
    (problem,) = problems(path)
    assert problem.endswith("the key file is encrypted; give it without a passphrase (mode 0600)")


def test_settings_mxwatch_cannot_honour_are_refused_not_ignored(tmp_path: Path) -> None:
    certificate(tmp_path)
    path = write(
        tmp_path,
        '[tls_server_config]\ncert_file = "web.crt"\nkey_file = "web.key"\n'
        'client_auth_type = "RequireAndVerifyClientCert"\nmin_version = "TLS10"\n'
        '[http_server_config]\nhttp2 = true\n[basic_auth_user]\n[basic_auth_users]\n"a:b" = "x"\n',
    )
    assert problems(path) == [
        "metrics.web_config: http_server_config: not supported by mxwatch; leave it out",
        "metrics.web_config: basic_auth_user: unknown key",
        "metrics.web_config: tls_server_config.client_auth_type: not supported by mxwatch; "
        "leave it out",
        'metrics.web_config: tls_server_config.min_version: must be "TLS12" or "TLS13"',
        "metrics.web_config: basic_auth_users.a:b: a user name must be printable and hold no ':'",
    ]


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    assert problems(tmp_path / "absent.toml")[0].startswith("metrics.web_config: cannot read")
    yaml = write(tmp_path, "basic_auth_users:\n  alice: x\n")
    assert "TOML syntax error" in problems(yaml)[0]


@pytest.mark.parametrize(
    ("listen", "web", "warned"),
    [
        (None, WebConfig(), None),
        (("127.0.0.1", 9464), WebConfig(), None),
        (("::1", 9464), WebConfig(), None),
        (("0.0.0.0", 9464), WebConfig(), "no TLS, so passwords and the page cross the network"),
        (("192.0.2.7", 9464), WebConfig(users=(("a", b"h"),)), "no TLS"),
        (("192.0.2.7", 9464), WebConfig(TLS), "no basic_auth_users, so anyone who can connect"),
        (("192.0.2.7", 9464), WebConfig(TLS, (("a", b"h"),)), None),
    ],
)
def test_exposure(listen: tuple[str, int] | None, web: WebConfig, warned: str | None) -> None:
    said = exposure(MetricsConfig(listen=listen), web)
    assert (said is None) == (warned is None)
    if warned is not None:
        assert said is not None and warned in said and "bind 127.0.0.1" in said
