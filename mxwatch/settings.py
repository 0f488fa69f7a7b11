"""The configuration (DESIGN.md §4): the file's keys, and the frozen values every module reads.

A leaf: it imports nothing of mxwatch. Each key of the file is written once, here, as a field
of a frozen dataclass: its name, its type, its default, and in the field's metadata (`Key`) its
bounds and its description. `config.py` is the loader: it builds its validation from these
fields and turns a TOML file into a `Config`; only the command line and the daemon import it.
The README's table of keys is generated from them and the example file is checked against them
(tests/unit/test_config_docs.py).

Most tables are read as written (`DaemonConfig` ... `NotifyConfig`). Three are resolved by the
loader, so their keys have dataclasses of their own (`ExchangeKeys`, `ProviderKeys`,
`TenantKeys`): a tenant's credential and client ID fall back to [exchange]'s, its provider is
looked up by name, and a named cloud brings its endpoints.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

# How the file writes a string, for the keys whose type does not say it. config.py holds the
# rule of each form.
Form = Literal[
    "guid",
    "tenant name",
    "connector",
    "environment variable",
    "https URL",
    "webhook",
    "domain",
    "MX pattern",
    "listen address",
    "state",
]


@dataclass(frozen=True)
class Key:
    """What a dataclass field says about itself as a key of the config file.

    The field gives the key's name, type and default (a field without one is a required key);
    this gives the rest. A `tuple[X, ...]` is written as an array; None is the value of a key
    left out, as TOML has no null.
    """

    doc: str  # the README's description (Markdown)
    form: Form | None = None  # of the value, or of each item of an array
    auto: bool = False  # "auto" is accepted, and is the default
    positive: bool = False  # a duration that must be greater than zero
    at_least: int | None = None
    # Every duration key has one: a larger value is a slip of unit or digit, and an unbounded
    # one ("9999999d") passed validation, then overflowed the date arithmetic of every cycle.
    # Each bound is far above any sensible value and far below that overflow.
    at_most: int | timedelta | None = None
    not_empty: bool = False  # an array that is given must have an item
    absent: str = "—"  # what leaving out a key without a default value means, for the docs


KEY = "mxwatch.key"


def key(doc: str, **details: Any) -> dict[str, Key]:
    """The metadata of a field that is a key: `field(default=..., metadata=key("..."))`."""
    return {KEY: Key(doc, **details)}


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


# ---------------------------------------------------------------------------------------------
# Tables read as written

# One DNS or webhook answer: a server silent for a minute is down, and waiting longer only
# holds up the cycle (DNS) or the notification queue (webhook).
_ANSWER_WAIT_LIMIT = timedelta(minutes=1)
# Settle waits for old MX records to leave caches, which is a TTL; resolvers cap the TTLs they
# cache at a day (Unbound) or a week (BIND), so a month is past any real one.
_TTL_LIMIT = timedelta(days=30)


@dataclass(frozen=True)
class PostgresUri:
    """A libpq connection URI for a state shared by replicas; it never holds a password (libpq
    finds that in its passfile, PGPASSFILE or PGPASSWORD)."""

    uri: str

    def __str__(self) -> str:
        return self.uri


@dataclass(frozen=True)
class DaemonConfig:
    interval: timedelta = field(
        default=timedelta(minutes=5),
        metadata=key(
            "time between cycles; with `--once` on a timer, the timer's period. Two "
            "observations of a domain more than `1.5 x interval + jitter` (plus the last "
            "cycle's duration) apart restart its streak",
            positive=True,
            # Cycles at least daily: a regression (mail bouncing) must not stay unseen longer.
            at_most=timedelta(days=1),
        ),
    )
    jitter: timedelta = field(
        default=timedelta(seconds=30),
        # Jitter only spreads the cycles of many instances; an hour does that as well as more.
        metadata=key("random delay added to each cycle", at_most=timedelta(hours=1)),
    )
    state: Path | PostgresUri = field(
        default=Path("state.db"),  # for code and tests; the file's default is "auto"
        metadata=key(
            "SQLite file. `auto`: `$STATE_DIRECTORY/state.db`, else "
            "`$XDG_STATE_HOME/mxwatch/state.db`, else `~/.local/state/mxwatch/state.db`. Or a "
            "PostgreSQL URI `postgresql://user@host:port/db?sslmode=verify-full`, shared by "
            "replicas of which one acts; the password never goes here (libpq's passfile, "
            "`PGPASSFILE`, `PGPASSWORD`, or `passfile=$CREDENTIALS_DIRECTORY/...`)",
            form="state",
            auto=True,
        ),
    )
    dry_run: bool = field(
        default=False, metadata=key("never write to Exchange; log `would_enable` instead")
    )


@dataclass(frozen=True)
class DnsConfig:
    resolvers: tuple[ResolverSpec, ...] = field(
        default=(ResolverSpec("system", None),),
        metadata=key(
            'each entry is one source: `"system"` (`/etc/resolv.conf`), `"IP"`, `"IP:PORT"` '
            'or `"[IPv6]:PORT"`',
            not_empty=True,
        ),
    )
    authoritative: bool = field(
        default=True,
        metadata=key(
            "also ask each domain's authoritative servers directly (RD off, AA required); "
            "each distinct server address is a source (NS names that share it are asked "
            "once), so a lagging secondary holds the cutover back. At most 16 name servers "
            "and 16 addresses are asked per zone: a domain whose zone has more is never "
            "`filtered`, and its reason says how many there are. A CNAME leaving the zone is "
            "asked of the target zone's own servers. The zone, its NS set and their IPv4 "
            "addresses are found through the resolvers and kept for their TTLs (a day at "
            "most), in the state too, so `--once` on a timer does not look them up again"
        ),
    )
    timeout: timedelta = field(
        default=timedelta(seconds=3),
        metadata=key(
            "per lookup; one domain's whole observation gets 3 x this, after which the "
            "sources that have not answered are `unknown`",
            positive=True,
            at_most=_ANSWER_WAIT_LIMIT,
        ),
    )
    authoritative_port: int = field(
        default=53,
        metadata=key(
            "**test/lab only**: the port authoritative servers are asked on. Leave it at 53 "
            "in production",
            at_least=1,
            at_most=65535,
        ),
    )


OnRegression = Literal["alert", "disable"]


@dataclass(frozen=True)
class PolicyConfig:
    confirmations: int = field(
        default=2,
        metadata=key(
            "consecutive `filtered` observations each covered domain needs before the "
            "enable; also consecutive not-filtered observations of a domain that confirm a "
            "regression",
            at_least=1,
        ),
    )
    settle: timedelta | None = field(  # None: "auto"
        default=None,
        metadata=key(
            "how long each covered domain must have been filtered (from the start of its "
            "streak). `auto`: `max(min_settle, the largest TTL of any not-filtered answer "
            "seen)`, a resolver's TTL counting as at least `default_old_ttl`; "
            "`max(min_settle, default_old_ttl)` when none was seen (see Safety)",
            auto=True,
            at_most=_TTL_LIMIT,
        ),
    )
    min_settle: timedelta = field(
        default=timedelta(minutes=10),
        metadata=key("lower bound of `auto`", at_most=_TTL_LIMIT),
    )
    default_old_ttl: timedelta = field(
        default=timedelta(hours=1),
        metadata=key(
            "the old TTL assumed when the old MX was never observed, and the least a TTL seen "
            "only through a resolver counts for",
            at_most=_TTL_LIMIT,
        ),
    )
    on_regression: OnRegression = field(
        default="alert",
        metadata=key("`alert` logs at error level; `disable` turns the connector off again"),
    )
    recheck: timedelta = field(
        default=timedelta(hours=6),
        metadata=key(
            "re-read each connector this often (spread over 75-100 %) to notice manual changes",
            # The longest a connector changed by hand (switched off, say) goes unnoticed.
            at_most=timedelta(days=7),
        ),
    )


@dataclass(frozen=True)
class MetricsConfig:
    listen: tuple[str, int] | None = field(  # (host, port)
        default=None,
        metadata=key(
            '`"IP:PORT"` (e.g. `"127.0.0.1:9464"`) where the daemon serves the status page '
            "`/`, Prometheus `/metrics` and `/healthz`; a change needs a restart. The page "
            "lists every tenant and domain: bind it to loopback, or set `web_config`",
            form="listen address",
            absent="off",
        ),
    )
    web_config: Path | None = field(
        default=None,
        metadata=key(
            "a TOML file with the keys of Prometheus's exporter web config: "
            "`[tls_server_config]` `cert_file` and `key_file` (HTTPS), and "
            "`[basic_auth_users]` with a bcrypt hash per user, for `/`, `/metrics` and "
            "`/healthz` alike (README: Monitoring a fleet); a relative path in it is "
            "relative to the file. Read at start: a change needs a restart",
            absent="plain HTTP, no password",
        ),
    )


NotifyFormat = Literal["json", "slack", "teams"]


@dataclass(frozen=True)
class NotifyConfig:
    webhook: str | None = field(
        default=None,
        metadata=key(
            "an https URL posted to when a tenant becomes `enabled`, `regressed` or "
            "`blocked`, or goes back to `waiting` after being enabled (http only to "
            "127.0.0.1/::1). Treated as a secret, as Slack and Teams keep keys in it: logs "
            "show scheme and host only",
            form="webhook",
            absent="off",
        ),
    )
    format: NotifyFormat = field(
        default="json",
        metadata=key(
            "`json` (tenant, from, to, reason, at, text), `slack` (incoming webhook `text`) or "
            "`teams` (Adaptive Card for a Teams incoming webhook or Workflows)"
        ),
    )
    timeout: timedelta = field(
        default=timedelta(seconds=5),
        metadata=key("per post", positive=True, at_most=_ANSWER_WAIT_LIMIT),
    )
    retries: int = field(
        default=2,
        metadata=key(
            "further attempts after a failed post, 1 s, 2 s, ... apart. Posts go out in the "
            "background and never delay a cycle",
            at_least=0,
            at_most=10,
        ),
    )


# ---------------------------------------------------------------------------------------------
# Tables the loader resolves: the keys as written


@dataclass(frozen=True)
class CredentialKeys:
    """The keys [exchange] and every [[tenant]] share; a tenant's own win over [exchange]'s."""

    client_id: str | None = field(
        default=None,
        metadata=key(
            "the app registration's application (client) ID. `[exchange]`'s is every "
            "tenant's default; each tenant must end up with one",
            form="guid",
        ),
    )
    certificate: Path | None = field(
        default=None,
        metadata=key(
            "PEM file with the private key and the certificate (preferred). Each tenant must "
            "end up with exactly one credential: this, `client_secret_file` or "
            "`client_secret_env`, its own or `[exchange]`'s"
        ),
    )
    client_secret_file: Path | None = field(
        default=None, metadata=key("or a file holding the client secret")
    )
    client_secret_env: str | None = field(
        default=None,
        metadata=key(
            "or the name of an environment variable holding the client secret. Never inline. "
            "Messages about the credential name its key, never the path or the variable "
            "(either may be a secret pasted into the wrong key)",
            form="environment variable",
        ),
    )


@dataclass(frozen=True)
class ExchangeKeys(CredentialKeys):
    cloud: Cloud = field(
        default=Cloud.GLOBAL,
        metadata=key("`global`, `gcc-high`, `dod`, `china` or `custom`"),
    )
    login_url: str | None = field(
        default=None,
        metadata=key(
            'an https URL, the Entra login endpoint: required with `cloud = "custom"`, refused '
            "with the named clouds, which have their own",
            form="https URL",
        ),
    )
    admin_url: str | None = field(
        default=None,
        metadata=key(
            'an https URL, the Exchange Online endpoint: required with `cloud = "custom"`, '
            "refused with the named clouds, which have their own",
            form="https URL",
        ),
    )
    ca_bundle: Path | None = field(
        default=None,
        metadata=key(
            "a CA bundle trusted **instead of** the system store for login and admin URLs "
            "(TLS-inspecting proxy, the sandbox)"
        ),
    )
    timeout: timedelta = field(
        default=timedelta(seconds=60),
        metadata=key(
            "the longest one Exchange operation (read the connector, read the accepted "
            "domains, or enable and read back) may take, with its token, every page, retry "
            "and wait; past it the operation is a transient failure, tried again next cycle",
            positive=True,
            # Room for a whole operation, retries and Retry-After waits included; anything
            # slower is better retried next cycle.
            at_most=timedelta(minutes=10),
        ),
    )


@dataclass(frozen=True)
class ProviderKeys:
    """A [providers.NAME] table: a built-in provider keeps the value of each key left out."""

    mx: tuple[str, ...] | None = field(
        default=None,
        metadata=key(
            "MX patterns: `*.suffix` or an exact host",
            form="MX pattern",
            not_empty=True,
            absent="built in for the built-in providers (`mxwatch providers`)",
        ),
    )
    sender_ips: tuple[ipaddress.IPv4Network, ...] | None = field(
        default=None,
        metadata=key(
            "the provider's IPv4 ranges; when set, the audit checks the connector covers them",
            absent="`[]`; a built-in provider's own",
        ),
    )


# kw_only: the required keys come after CredentialKeys' keys, which have defaults.
@dataclass(frozen=True, kw_only=True)
class TenantKeys(CredentialKeys):
    name: str = field(metadata=key("label in logs and status", form="tenant name"))
    tenant_id: str = field(metadata=key("the Entra tenant ID (a GUID)", form="guid"))
    connector: str = field(metadata=key("the connector's Name or GUID", form="connector"))
    provider: str = field(
        default="mailprotector",
        metadata=key("which provider's MX patterns apply, by its name in `[providers]`"),
    )
    domains: tuple[str, ...] | None = field(
        default=None,
        metadata=key(
            "mail domains to watch from the first cycle (normalised: lower case, IDNA 2008, "
            "no trailing dot; `straße.de` is `xn--strae-oqa.de`). Every accepted domain of the "
            "tenant (`Get-AcceptedDomain`) except `*.onmicrosoft.com` is covered too, given or "
            "not: the connector would bounce its mail",
            form="domain",
            not_empty=True,  # given but empty is likely a mistake: leave it out instead
            absent="the accepted domains",
        ),
    )
    ignore_domains: tuple[str, ...] = field(
        default=(),
        metadata=key(
            "accepted domains deliberately left uncovered: neither waited for nor watched "
            "(their mail will bounce once the connector is on)",
            form="domain",
        ),
    )


@dataclass(frozen=True)
class ConfigFile:
    """The file as written, one dataclass of keys per table, in the README's order."""

    daemon: DaemonConfig = DaemonConfig()
    dns: DnsConfig = DnsConfig()
    policy: PolicyConfig = PolicyConfig()
    exchange: ExchangeKeys = ExchangeKeys()
    providers: dict[str, ProviderKeys] = field(default_factory=dict)
    tenant: tuple[TenantKeys, ...] = ()
    metrics: MetricsConfig = MetricsConfig()
    notify: NotifyConfig = NotifyConfig()


# ---------------------------------------------------------------------------------------------
# The resolved values


@dataclass(frozen=True)
class ExchangeConfig:
    cloud: Cloud
    login_url: str
    admin_url: str
    ca_bundle: Path | None
    client_id: str | None
    credential: CredentialRef | None
    # The deadline of one Exchange operation: its token, pages, retries and waits included.
    timeout: timedelta = ExchangeKeys.timeout


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
