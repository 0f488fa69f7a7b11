"""The web config of the daemon's HTTP server (`metrics.web_config`): HTTPS and basic auth.

Its keys are those of the web config of Prometheus's exporter-toolkit, so that an operator who
protects node_exporter knows them already; it is written in TOML, as mxwatch's own config is:

    [tls_server_config]
    cert_file = "web.crt"        # PEM; relative paths are relative to this file
    key_file = "web.key"
    min_version = "TLS12"        # or "TLS13"

    [basic_auth_users]
    prometheus = "$2b$12$..."    # a bcrypt hash, never the password

Every problem is reported at once, each naming its key. A password or a hash is never echoed:
a value in the wrong place may be a password in plain text.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import ssl
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt

from .config import ConfigError
from .settings import MetricsConfig

KEY = "metrics.web_config"

# $2a$, $2b$ or $2y$ (htpasswd -B writes 2y), a two-digit cost, then salt and hash: 53 characters
# of bcrypt's base64 alphabet.
_BCRYPT_RE = re.compile(r"\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")
_TLS = ("cert_file", "key_file", "min_version")
_TLS_VERSIONS = {"TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
# The exporter-toolkit's other settings. Each would change who may connect, so one that mxwatch
# cannot honour is refused rather than ignored.
_UNSUPPORTED = {
    "http_server_config",
    "rate_limit",
    "tls_server_config.client_auth_type",
    "tls_server_config.client_ca_file",
    "tls_server_config.client_allowed_sans",
    "tls_server_config.cipher_suites",
    "tls_server_config.curve_preferences",
    "tls_server_config.max_version",
    "tls_server_config.prefer_server_cipher_suites",
}
_HASH_HOWTO = (
    "store a bcrypt hash, such as the output of "
    "`python3 -c 'import bcrypt, getpass; "
    "print(bcrypt.hashpw(getpass.getpass().encode(), bcrypt.gensalt()).decode())'` "
    "or `htpasswd -nBC 12 USER`"
)


@dataclass(frozen=True)
class TlsFiles:
    cert_file: Path
    key_file: Path
    min_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2


@dataclass(frozen=True)
class WebConfig:
    tls: TlsFiles | None = None
    # (user, bcrypt hash); not in repr, so that no log line or traceback carries a hash.
    users: tuple[tuple[str, bytes], ...] = field(default=(), repr=False)

    def server_context(self) -> ssl.SSLContext | None:
        """The TLS context for the listening socket, or None for plain HTTP."""
        return None if self.tls is None else _server_context(self.tls)

    def authorised(self, header: str | None) -> bool:
        """Whether an Authorization header lets the request in (always, without users)."""
        if not self.users:
            return True
        user, password = _basic_credentials(header)
        hashes = dict(self.users)
        # An unknown user still costs one bcrypt check, so the answer's timing does not tell
        # which user names exist.
        hashed = hashes.get(user, self.users[0][1])
        return _password_matches(password, hashed) and user in hashes


def load_web_config(path: Path) -> WebConfig:
    """Read and check the file; ConfigError lists every problem, as for the config file."""
    raw = _read(path)
    problems = [f"{KEY}: {key}: {text}" for key, text in _unknown_keys(raw)]
    tls, tls_problems = _tls(raw.get("tls_server_config"), path.parent)
    users, user_problems = _users(raw.get("basic_auth_users"))
    problems += [f"{KEY}: {problem}" for problem in tls_problems + user_problems]
    if problems:
        raise ConfigError(problems)
    return WebConfig(tls, users)


def _read(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError([f"{KEY}: cannot read {path}: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{KEY}: {path} is not UTF-8 text (byte {exc.start})"]) from None
    except tomllib.TOMLDecodeError as exc:
        # tomllib names the line and column, never the value.
        raise ConfigError(
            [f"{KEY}: {path}: TOML syntax error: {exc} (the web config is TOML)"]
        ) from None


def _unknown_keys(raw: Mapping[str, Any]) -> list[tuple[str, str]]:
    found = []
    tls = raw.get("tls_server_config")
    keys = [*raw, *(f"tls_server_config.{k}" for k in tls)] if isinstance(tls, dict) else [*raw]
    known = {"tls_server_config", "basic_auth_users", *(f"tls_server_config.{k}" for k in _TLS)}
    for key in keys:
        if key in _UNSUPPORTED:
            found.append((key, "not supported by mxwatch; leave it out"))
        elif key not in known:
            found.append((key, "unknown key"))
    return found


def _tls(table: object, base: Path) -> tuple[TlsFiles | None, list[str]]:
    if table is None:
        return None, []
    if not isinstance(table, dict):
        return None, ["tls_server_config: must be a table"]
    problems = []
    paths = {}
    for key in ("cert_file", "key_file"):
        value = table.get(key)
        if not isinstance(value, str) or not value:
            problems.append(f"tls_server_config.{key}: required, a path to a PEM file")
        elif not (base / value).is_file():
            problems.append(f"tls_server_config.{key}: {base / value} is not a file")
        else:
            paths[key] = base / value
    version = table.get("min_version", "TLS12")
    if version not in _TLS_VERSIONS:
        problems.append('tls_server_config.min_version: must be "TLS12" or "TLS13"')
    if problems:
        return None, problems
    tls = TlsFiles(paths["cert_file"], paths["key_file"], _TLS_VERSIONS[version])
    try:
        _server_context(tls)
    except (ssl.SSLError, ValueError) as exc:
        return None, [f"tls_server_config: cannot use cert_file with key_file: {_ssl_reason(exc)}"]
    return tls, []


def _server_context(tls: TlsFiles) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = tls.min_version
    # An encrypted key would make OpenSSL prompt on the terminal; the callback refuses instead.
    context.load_cert_chain(tls.cert_file, tls.key_file, password=_no_passphrase)
    return context


def _no_passphrase() -> bytes:
    raise ValueError("the key file is encrypted; give it without a passphrase (mode 0600)")


def _ssl_reason(exc: Exception) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return f"{exc.reason} (not PEM, or the key does not belong to the certificate)"
    return str(exc)


def _users(table: object) -> tuple[tuple[tuple[str, bytes], ...], list[str]]:
    if table is None:
        return (), []
    if not isinstance(table, dict):
        return (), ["basic_auth_users: must be a table of user = bcrypt hash"]
    problems, users = [], []
    for user, hashed in table.items():
        where = f"basic_auth_users.{user}" if _printable_name(user) else "basic_auth_users"
        if not _printable_name(user) or ":" in user:
            problems.append(f"{where}: a user name must be printable and hold no ':'")
        elif not isinstance(hashed, str) or not _BCRYPT_RE.fullmatch(hashed):
            # Not echoed: it is most likely the password itself.
            problems.append(
                f"{where}: not a bcrypt hash; passwords are never stored in plain "
                f"text: {_HASH_HOWTO}"
            )
        else:
            users.append((user, hashed.encode("ascii")))
    return tuple(users), problems


def _printable_name(name: str) -> bool:
    return bool(name) and name.isprintable()


def _basic_credentials(header: str | None) -> tuple[str, bytes]:
    """(user, password) of a Basic Authorization header; ("", b"") when there is none."""
    scheme, _, encoded = (header or "").partition(" ")
    if scheme.lower() != "basic":
        return "", b""
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return "", b""
    user, colon, password = decoded.partition(b":")
    if not colon:
        return "", b""
    return user.decode("utf-8", "replace"), password


def _password_matches(password: bytes, hashed: bytes) -> bool:
    try:
        return bcrypt.checkpw(password, hashed)
    except ValueError:  # longer than bcrypt's 72 bytes: no stored password is
        return False


def web_config_of(metrics: MetricsConfig) -> WebConfig:
    """The web config `metrics.web_config` names, or plain HTTP without passwords."""
    return WebConfig() if metrics.web_config is None else load_web_config(metrics.web_config)


def exposure(metrics: MetricsConfig, web_config: WebConfig) -> str | None:
    """Why the page and metrics are open to the network, or None when they are not.

    A warning rather than a refusal: in a container, or behind a firewall that admits only
    Prometheus, binding beyond loopback is how the scraper reaches mxwatch at all.
    """
    if metrics.listen is None or ipaddress.ip_address(metrics.listen[0]).is_loopback:
        return None
    missing = []
    if web_config.tls is None:
        missing.append("no TLS, so passwords and the page cross the network in clear")
    if not web_config.users:
        missing.append("no basic_auth_users, so anyone who can connect reads it")
    if not missing:
        return None
    return (
        f"metrics.listen {metrics.listen[0]} is not loopback and the status page lists every "
        f"tenant and domain: {'; '.join(missing)}. Set metrics.web_config (TLS and users), "
        "or bind 127.0.0.1"
    )
