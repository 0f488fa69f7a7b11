"""The configuration as frozen values (DESIGN.md §4): what every module reads.

A leaf: it imports nothing of mxwatch. `config.py` is the loader that turns a TOML file into
these values; only the command line and the daemon import it.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Literal


class Cloud(enum.StrEnum):
    GLOBAL = "global"
    GCC_HIGH = "gcc-high"
    DOD = "dod"
    CHINA = "china"
    CUSTOM = "custom"


@dataclass(frozen=True)
class CloudEndpoints:
    login_url: str
    admin_url: str


CLOUDS: dict[Cloud, CloudEndpoints] = {
    Cloud.GLOBAL: CloudEndpoints(
        "https://login.microsoftonline.com", "https://outlook.office365.com"
    ),
    Cloud.GCC_HIGH: CloudEndpoints(
        "https://login.microsoftonline.us", "https://outlook.office365.us"
    ),
    Cloud.DOD: CloudEndpoints(
        "https://login.microsoftonline.us", "https://outlook-dod.office365.us"
    ),
    Cloud.CHINA: CloudEndpoints("https://login.chinacloudapi.cn", "https://partner.outlook.cn"),
}


@dataclass(frozen=True)
class Provider:
    """A filtering service: the MX hosts it answers on and the IPs it delivers from."""

    name: str
    mx: tuple[str, ...]  # normalised patterns: "*.suffix" or an exact host name
    sender_ips: tuple[ipaddress.IPv4Network, ...] = ()
    source: str = "config"  # where the values come from, for status and docs

    def matches(self, exchange: str) -> bool:
        """True when an MX exchange host belongs to this provider."""
        host = exchange.rstrip(".").lower()
        for pattern in self.mx:
            if pattern.startswith("*."):
                if host.endswith(pattern[1:]) and len(host) > len(pattern) - 1:
                    return True
            elif host == pattern:
                return True
        return False


@dataclass(frozen=True)
class _CredentialSource:
    # The key path the reference comes from, such as "tenant[2].client_secret_file". Messages
    # name it instead of the path or the variable name, and repr() leaves those out: either
    # may be a secret pasted into the wrong key. Not compared: tenants that share a credential
    # share one MSAL app.
    key: str = field(default="credential", compare=False, kw_only=True)


@dataclass(frozen=True)
class CertificateRef(_CredentialSource):
    """A PEM file holding the private key and the certificate."""

    path: Path = field(repr=False)


@dataclass(frozen=True)
class SecretFileRef(_CredentialSource):
    path: Path = field(repr=False)


@dataclass(frozen=True)
class SecretEnvRef(_CredentialSource):
    name: str = field(repr=False)


CredentialRef = CertificateRef | SecretFileRef | SecretEnvRef


@dataclass(frozen=True)
class ResolverSpec:
    """One DNS source. `address` None means the system resolver (/etc/resolv.conf)."""

    label: str  # as written in the config: "system", "192.0.2.1", "127.0.0.1:5353"
    address: str | None
    port: int = 53


@dataclass(frozen=True)
class DaemonConfig:
    interval: timedelta = timedelta(minutes=5)
    jitter: timedelta = timedelta(seconds=30)
    state: Path = Path("state.db")
    dry_run: bool = False


@dataclass(frozen=True)
class DnsConfig:
    resolvers: tuple[ResolverSpec, ...] = (ResolverSpec("system", None),)
    authoritative: bool = True
    timeout: timedelta = timedelta(seconds=3)
    # Test/lab option: the port authoritative servers are asked on. Real ones listen on 53.
    authoritative_port: int = 53


@dataclass(frozen=True)
class PolicyConfig:
    confirmations: int = 2
    settle: timedelta | None = None  # None means "auto"
    min_settle: timedelta = timedelta(minutes=10)
    default_old_ttl: timedelta = timedelta(hours=1)
    on_regression: str = "alert"  # "alert" | "disable"
    recheck: timedelta = timedelta(hours=6)


@dataclass(frozen=True)
class ExchangeConfig:
    cloud: Cloud
    login_url: str
    admin_url: str
    ca_bundle: Path | None
    client_id: str | None
    credential: CredentialRef | None
    # The deadline of one Exchange operation: its token, pages, retries and waits included.
    timeout: timedelta = timedelta(seconds=60)


@dataclass(frozen=True)
class TenantConfig:
    name: str
    tenant_id: str
    connector: str
    provider: Provider
    domains: tuple[str, ...]  # empty: every accepted domain of the tenant (Get-AcceptedDomain)
    client_id: str
    credential: CredentialRef
    ignore_domains: tuple[str, ...] = ()  # accepted domains deliberately left out


@dataclass(frozen=True)
class MetricsConfig:
    listen: tuple[str, int] | None = None  # (host, port) for /metrics and /healthz; None: off


NotifyFormat = Literal["json", "slack", "teams"]


@dataclass(frozen=True)
class NotifyConfig:
    webhook: str | None = None  # the whole URL is a secret: Slack and Teams keep keys in it
    format: NotifyFormat = "json"
    timeout: timedelta = timedelta(seconds=5)
    retries: int = 2  # further attempts after the first one fails


@dataclass(frozen=True)
class Config:
    path: Path
    daemon: DaemonConfig
    dns: DnsConfig
    policy: PolicyConfig
    exchange: ExchangeConfig
    providers: dict[str, Provider]
    tenants: tuple[TenantConfig, ...]
    metrics: MetricsConfig = MetricsConfig()
    notify: NotifyConfig = NotifyConfig()
