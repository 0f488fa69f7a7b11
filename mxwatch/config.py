"""TOML configuration -> validated, frozen Config (DESIGN.md §4).

The loader is not written yet: see `load_config`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from .providers import Provider


class ConfigError(Exception):
    """Every problem found in a config file, each starting with its key path."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


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
class CertificateRef:
    """A PEM file holding the private key and the certificate."""

    path: Path


@dataclass(frozen=True)
class SecretFileRef:
    path: Path


@dataclass(frozen=True)
class SecretEnvRef:
    name: str


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


@dataclass(frozen=True)
class TenantConfig:
    name: str
    tenant_id: str
    connector: str
    provider: Provider
    domains: tuple[str, ...]
    client_id: str
    credential: CredentialRef


@dataclass(frozen=True)
class Config:
    path: Path
    daemon: DaemonConfig
    dns: DnsConfig
    policy: PolicyConfig
    exchange: ExchangeConfig
    providers: dict[str, Provider]
    tenants: tuple[TenantConfig, ...]
