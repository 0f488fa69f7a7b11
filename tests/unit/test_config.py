"""Config loading: defaults, values, key paths of errors, secrets never echoed."""

from __future__ import annotations

import dataclasses
import ipaddress
import typing
from collections.abc import Callable, Mapping
from datetime import timedelta
from pathlib import Path

import pytest

from mxwatch.config import (
    DEFAULT_CONFIG_PATH,
    ConfigError,
    default_config_path,
    duration_text,
    load_config,
    parse_duration,
)
from mxwatch.credentials import credential_refs
from mxwatch.providers import BUILTIN_PROVIDERS, MAILPROTECTOR
from mxwatch.settings import (
    CLOUDS,
    CertificateRef,
    Cloud,
    Config,
    DaemonConfig,
    DnsConfig,
    ExchangeKeys,
    MetricsConfig,
    NotifyConfig,
    PolicyConfig,
    PostgresUri,
    ResolverSpec,
    SecretEnvRef,
    SecretFileRef,
)

REPO = Path(__file__).resolve().parents[2]
GUID_A = "11111111-1111-1111-1111-111111111111"
GUID_B = "22222222-2222-2222-2222-222222222222"
APP_ID = "33333333-3333-3333-3333-333333333333"
GUID_C = "44444444-4444-4444-4444-444444444444"

EXCHANGE = f"""
[exchange]
client_id = "{APP_ID}"
certificate = "/etc/mxwatch/app.pem"
"""

TENANT = f"""
[[tenant]]
name = "contoso"
tenant_id = "{GUID_A}"
connector = "Inbound from Mailprotector Only"
domains = ["contoso.com"]
"""

ENV = {"HOME": "/home/op"}

Load = Callable[..., Config]


@pytest.fixture
def load(tmp_path: Path) -> Load:
    def load_text(text: str, environ: Mapping[str, str] = ENV) -> Config:
        path = tmp_path / "mxwatch.toml"
        path.write_text(text, encoding="utf-8")
        return load_config(path, environ=environ)

    return load_text


@pytest.fixture
def problems(load: Load) -> Callable[..., list[str]]:
    def load_failing(text: str, environ: Mapping[str, str] = ENV) -> list[str]:
        with pytest.raises(ConfigError) as caught:
            load(text, environ)
        assert str(caught.value) == "\n".join(caught.value.problems)
        return caught.value.problems

    return load_failing


def paths(found: list[str]) -> set[str]:
    return {problem.split(": ", 1)[0] for problem in found}


# --- defaults ------------------------------------------------------------------------------


def test_minimal_file_gets_every_default(load: Load) -> None:
    config = load(EXCHANGE + TENANT)
    assert config.daemon.interval == timedelta(minutes=5)
    assert config.daemon.jitter == timedelta(seconds=30)
    assert config.daemon.state == Path("/home/op/.local/state/mxwatch/state.db")
    assert config.daemon.dry_run is False
    assert config.dns.resolvers == (ResolverSpec("system", None, 53),)
    assert config.dns.authoritative is True
    assert config.dns.timeout == timedelta(seconds=3)
    policy = config.policy
    assert (policy.confirmations, policy.settle, policy.on_regression) == (2, None, "alert")
    assert policy.min_settle == timedelta(minutes=10)
    assert policy.default_old_ttl == timedelta(hours=1)
    assert policy.recheck == timedelta(hours=6)
    assert config.exchange.cloud is Cloud.GLOBAL
    assert config.exchange.login_url == "https://login.microsoftonline.com"
    assert config.exchange.admin_url == "https://outlook.office365.com"
    assert config.exchange.ca_bundle is None
    assert config.providers == BUILTIN_PROVIDERS
    (tenant,) = config.tenants
    assert tenant.provider == MAILPROTECTOR
    assert tenant.client_id == APP_ID
    assert tenant.credential == CertificateRef(Path("/etc/mxwatch/app.pem"))
    assert tenant.domains == ("contoso.com",)


def test_tables_left_out_get_the_defaults_of_their_dataclasses(load: Load) -> None:
    config = load(EXCHANGE + TENANT)
    assert config.daemon == DaemonConfig(state=config.daemon.state)  # "auto": from the env
    assert (config.dns, config.policy) == (DnsConfig(), PolicyConfig())
    assert (config.metrics, config.notify) == (MetricsConfig(), NotifyConfig())
    assert config.exchange.timeout == ExchangeKeys.timeout


def test_default_config_path() -> None:
    assert default_config_path({}) == DEFAULT_CONFIG_PATH == Path("/etc/mxwatch/mxwatch.toml")
    assert default_config_path({"MXWATCH_CONFIG": ""}) == DEFAULT_CONFIG_PATH
    assert default_config_path({"MXWATCH_CONFIG": "/srv/m.toml"}) == Path("/srv/m.toml")


def test_example_file_loads_cleanly() -> None:
    config = load_config(REPO / "config" / "mxwatch.example.toml", environ=ENV)
    assert [tenant.name for tenant in config.tenants] == ["contoso"]
    assert config.providers["mailprotector"].mx == MAILPROTECTOR.mx


# --- durations -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0s", timedelta(0)),
        ("90s", timedelta(seconds=90)),
        ("5m", timedelta(minutes=5)),
        ("1h", timedelta(hours=1)),
        ("2d", timedelta(days=2)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("1d2h3m4s", timedelta(days=1, hours=2, minutes=3, seconds=4)),
    ],
)
def test_parse_duration(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    "text", ["", "5", "-5m", "5 m", "5M", "m", "1.5h", "5x", "30m1h", "h5", "99999999999999d"]
)
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ValueError, match=r"90s|too large"):
        parse_duration(text)


def test_durations_in_file(load: Load, problems: Callable[..., list[str]]) -> None:
    config = load(
        '[daemon]\ninterval = "90s"\njitter = "0s"\n'
        '[policy]\nsettle = "2h"\nmin_settle = "1h30m"\ndefault_old_ttl = "2d"\nrecheck = "5m"\n'
        + EXCHANGE
        + TENANT
    )
    assert config.daemon.interval == timedelta(seconds=90)
    assert config.daemon.jitter == timedelta(0)
    assert config.policy.settle == timedelta(hours=2)
    assert config.policy.min_settle == timedelta(minutes=90)
    assert config.policy.default_old_ttl == timedelta(days=2)
    assert load('[policy]\nsettle = "0s"\n' + EXCHANGE + TENANT).policy.settle == timedelta(0)

    found = problems(
        '[daemon]\ninterval = "0s"\njitter = 30\n[dns]\ntimeout = "-1s"\n'
        '[policy]\nsettle = "soon"\nrecheck = "6 hours"\n' + EXCHANGE + TENANT
    )
    assert paths(found) == {
        "daemon.interval",
        "daemon.jitter",
        "dns.timeout",
        "policy.settle",
        "policy.recheck",
    }
    assert any("greater than zero" in p for p in found if p.startswith("daemon.interval"))
    assert any("not a bare number" in p for p in found if p.startswith("daemon.jitter"))
    assert all('"90s"' in problem for problem in found)


@pytest.mark.parametrize(
    ("duration", "text"),
    [
        (timedelta(0), "0s"),
        (timedelta(seconds=90), "1m30s"),
        (timedelta(days=30), "30d"),
        (timedelta(days=1, hours=2, minutes=3, seconds=4), "1d2h3m4s"),
    ],
)
def test_duration_text_is_the_config_files_form(duration: timedelta, text: str) -> None:
    assert duration_text(duration) == text
    assert parse_duration(text) == duration


# The upper bound of every duration key, as documented in the README and the example config.
DURATION_BOUNDS = [
    ("daemon", "interval", "1d"),
    ("daemon", "jitter", "1h"),
    ("dns", "timeout", "1m"),
    ("policy", "settle", "30d"),
    ("policy", "min_settle", "30d"),
    ("policy", "default_old_ttl", "30d"),
    ("policy", "recheck", "7d"),
    ("exchange", "timeout", "10m"),
    ("notify", "timeout", "1m"),
]


def with_duration(table: str, key: str, value: str) -> str:
    if table == "exchange":  # EXCHANGE ends inside [exchange]
        return EXCHANGE + f'{key} = "{value}"\n' + TENANT
    return f'[{table}]\n{key} = "{value}"\n' + EXCHANGE + TENANT


@pytest.mark.parametrize(("table", "key", "bound"), DURATION_BOUNDS)
def test_every_duration_key_has_an_upper_bound(
    load: Load, problems: Callable[..., list[str]], table: str, key: str, bound: str
) -> None:
    limit = parse_duration(bound)
    assert getattr(getattr(load(with_duration(table, key, bound)), table), key) == limit
    for value in (duration_text(limit + timedelta(seconds=1)), "9999999d"):
        assert problems(with_duration(table, key, value)) == [
            f"{table}.{key}: must be at most {bound}"
        ]


def test_the_bounds_cover_every_duration_key() -> None:
    durations = {
        (table, key)
        for table, section in typing.get_type_hints(Config).items()
        if dataclasses.is_dataclass(section)
        for key, hint in typing.get_type_hints(section).items()
        if timedelta in (hint, *typing.get_args(hint))
    }
    assert durations == {(table, key) for table, key, _ in DURATION_BOUNDS}


def test_over_long_durations_are_reported_with_every_other_problem(
    problems: Callable[..., list[str]],
) -> None:
    found = problems(
        '[daemon]\ninterval = "2d"\n[policy]\nmin_settle = "9999999d"\nconfirmations = 0\n'
        + EXCHANGE
        + TENANT.replace(GUID_A, "not-a-guid")
    )
    assert found == [
        "daemon.interval: must be at most 1d",
        "policy.confirmations: must be at least 1",
        "policy.min_settle: must be at most 30d",
        "tenant[0].tenant_id: not a GUID (expected 8-4-4-4-12 hexadecimal digits)",
    ]


# --- state path ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"STATE_DIRECTORY": "/var/lib/mxwatch", "XDG_STATE_HOME": "/x"}, "/var/lib/mxwatch"),
        ({"STATE_DIRECTORY": "/var/lib/a:/var/lib/b"}, "/var/lib/a"),
        ({"XDG_STATE_HOME": "/xdg", "HOME": "/home/op"}, "/xdg/mxwatch"),
        ({"XDG_STATE_HOME": "relative", "HOME": "/home/op"}, "/home/op/.local/state/mxwatch"),
        ({"HOME": "/home/op"}, "/home/op/.local/state/mxwatch"),
    ],
)
def test_auto_state_path(load: Load, environ: dict[str, str], expected: str) -> None:
    for daemon in ("", '[daemon]\nstate = "auto"\n'):
        config = load(daemon + EXCHANGE + TENANT, environ)
        assert config.daemon.state == Path(expected) / "state.db"


def test_explicit_state_path_absolute_and_relative(load: Load, tmp_path: Path) -> None:
    config = load('[daemon]\nstate = "/var/lib/m/s.db"\n' + EXCHANGE + TENANT)
    assert config.daemon.state == Path("/var/lib/m/s.db")
    config = load('[daemon]\nstate = "data/s.db"\n' + EXCHANGE + TENANT)
    assert config.daemon.state == tmp_path / "data" / "s.db"


# --- unknown keys, all problems at once ----------------------------------------------------


def test_unknown_keys_at_every_depth(problems: Callable[..., list[str]]) -> None:
    found = problems(
        "colour = 1\n[daemon]\nintervall = '5m'\n[dns]\nport = 53\n"
        "[providers.acme]\nmx = ['mx.acme.example']\nweight = 1\n"
        + EXCHANGE
        + "extra = 1\n"
        + TENANT
        + "domain = 'x.example'\n"
    )
    assert paths(found) == {
        "colour",
        "daemon.intervall",
        "dns.port",
        "providers.acme.weight",
        "exchange.extra",
        "tenant[0].domain",
    }
    assert all("unknown key" in problem for problem in found)
    assert "daemon.intervall: unknown key (did you mean 'interval'?)" in found
    assert "tenant[0].domain: unknown key (did you mean 'domains'?)" in found


def test_many_errors_reported_at_once(problems: Callable[..., list[str]]) -> None:
    text = f"""
[daemon]
interval = 5
dry_run = "yes"
[dns]
resolvers = ["system", "300.1.1.1", "127.0.0.1:70000", "[::1]:5353"]
[policy]
confirmations = 0
on_regression = "panic"
[exchange]
cloud = "mars"
client_id = "not-a-guid"
[providers.acme]
sender_ips = ["10.0.0.1/8", "2001:db8::/32"]
[[tenant]]
name = "has space"
tenant_id = "xyz"
connector = "  "
provider = "nope"
domains = []
[[tenant]]
name = "ok"
tenant_id = "{GUID_B}"
connector = "c"
domains = ["a..example", "b.example"]
[[tenant]]
name = "ok"
tenant_id = "{GUID_B}"
connector = "c"
domains = ["B.example."]
"""
    found = problems(text)
    expected = {
        "daemon.interval",
        "daemon.dry_run",
        "dns.resolvers[1]",
        "dns.resolvers[2]",
        "policy.confirmations",
        "policy.on_regression",
        "exchange.cloud",
        "exchange.client_id",
        "providers.acme.mx",
        "providers.acme.sender_ips[0]",
        "providers.acme.sender_ips[1]",
        "tenant[0].name",
        "tenant[0].tenant_id",
        "tenant[0].connector",
        "tenant[0].provider",
        "tenant[0].domains",
        "tenant[0]",
        "tenant[1]",
        "tenant[1].domains[0]",
        "tenant[2]",
        "tenant[2].name",
        "tenant[2].tenant_id",
        "tenant[2].domains[0]",
    }
    assert paths(found) == expected
    assert "tenant[0].tenant_id: not a GUID (expected 8-4-4-4-12 hexadecimal digits)" in found
    # Ordered by section, then by tenant.
    assert found.index(
        "exchange.cloud: must be 'global', 'gcc-high', 'dod', 'china' or 'custom'"
    ) < found.index(next(p for p in found if p.startswith("tenant")))


def test_missing_required_keys(problems: Callable[..., list[str]]) -> None:
    found = problems(EXCHANGE + "[[tenant]]\n")
    assert "tenant[0].name: required key is missing" in found
    assert "tenant[0].connector: required key is missing" in found
    assert not any(p.startswith("tenant[0].domains") for p in found), "optional"
    assert any(p.startswith("tenant[0].tenant_id: required key is missing") for p in found)


def test_domains_omitted_means_accepted_domains_and_ignore_is_normalised(load: Load) -> None:
    config = load(
        EXCHANGE + f'[[tenant]]\nname = "a"\ntenant_id = "{GUID_A}"\nconnector = "c"\n'
        'ignore_domains = ["Legacy.Example."]\n'
    )
    (tenant,) = config.tenants
    assert tenant.domains == ()
    assert tenant.ignore_domains == ("legacy.example",)


def test_a_domain_both_managed_and_ignored_is_an_error(problems: Callable[..., list[str]]) -> None:
    found = problems(
        EXCHANGE + f'[[tenant]]\nname = "a"\ntenant_id = "{GUID_A}"\nconnector = "c"\n'
        'domains = ["a.example"]\nignore_domains = ["A.example"]\n'
    )
    assert found == ["tenant[0].domains[0]: a.example is also in tenant[0].ignore_domains"]


def test_a_non_string_ignored_domain_is_reported_with_its_key(
    problems: Callable[..., list[str]],
) -> None:
    # The check against domains read it as a string and raised AttributeError.
    found = problems(EXCHANGE + TENANT + "ignore_domains = [1]\n")
    assert found == ["tenant[0].ignore_domains[0]: must be a string"]


def test_empty_domains_list_is_an_error(problems: Callable[..., list[str]]) -> None:
    found = problems(
        EXCHANGE
        + f'[[tenant]]\nname = "a"\ntenant_id = "{GUID_A}"\nconnector = "c"\ndomains = []\n'
    )
    assert len(found) == 1 and found[0].startswith("tenant[0].domains:")


def test_at_least_one_tenant(problems: Callable[..., list[str]]) -> None:
    assert problems(EXCHANGE) == ["tenant: at least one [[tenant]] is required"]
    assert "tenant: must be an array" in problems(EXCHANGE + "[tenant]\nname = 'x'\n")


def test_wrong_types_are_named(problems: Callable[..., list[str]]) -> None:
    found = problems("daemon = 1\n[dns]\nresolvers = 'system'\n" + EXCHANGE + TENANT)
    assert found == ["daemon: must be a table", "dns.resolvers: must be an array"]


def test_toml_syntax_error_has_line_and_column(
    tmp_path: Path, problems: Callable[..., list[str]]
) -> None:
    (problem,) = problems("[daemon]\ninterval = \n")
    assert str(tmp_path / "mxwatch.toml") in problem
    assert "TOML syntax error" in problem
    assert "line 2" in problem
    assert "column" in problem


def test_unreadable_file_names_the_path(tmp_path: Path) -> None:
    for path in (tmp_path / "absent.toml", tmp_path):
        with pytest.raises(ConfigError) as caught:
            load_config(path, environ=ENV)
        (problem,) = caught.value.problems
        assert problem.startswith(f"{path}: cannot read the config file")


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "m.toml"
    path.write_bytes(b"[daemon]\nstate = '\xff'\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(path, environ=ENV)


# --- secrets -------------------------------------------------------------------------------

SECRET = "Sup3r~Secret.Value-DoNotLog"


@pytest.mark.parametrize(
    "text",
    [
        f'[exchange]\nclient_id = "{APP_ID}"\nclient_secret = "{SECRET}"\n' + TENANT,
        EXCHANGE + TENANT + f'client_secret = "{SECRET}"\n',
        EXCHANGE + TENANT + f'password = "{SECRET}"\n',
    ],
)
def test_inline_secret_refused_without_echo(problems: Callable[..., list[str]], text: str) -> None:
    found = problems(text)
    message = "\n".join(found)
    assert SECRET not in message
    assert "client_secret_file" in message
    assert "client_secret_env" in message


PASTED = "Qz7pasted"  # in every pasted value below; no message may show any of it


@pytest.mark.parametrize("key", ["certificate", "client_secret_file", "client_secret_env"])
@pytest.mark.parametrize("where", ["exchange", "tenant[0]"])
@pytest.mark.parametrize(
    "value",
    [
        f'"{PASTED}~Secret Value"',  # a path, not a variable name
        f'"ab${PASTED}Secret/x"',  # an unset variable, within the secret
        f'"${{{PASTED}Secret}}"',  # the braced form
        f'"{PASTED}Secret\\u001b[2J"',  # a control character
        f'["{PASTED}Secret"]',  # not a string
        f'{{ value = "{PASTED}Secret" }}',  # a table
    ],
)
def test_no_message_of_a_credential_key_shows_its_value(
    load: Load, where: str, key: str, value: str
) -> None:
    line = f"{key} = {value}\n"
    if where == "exchange":
        text = f'[exchange]\nclient_id = "{APP_ID}"\n' + line + TENANT
    else:
        text = EXCHANGE + TENANT + line
    try:
        load(text)
        found = []
    except ConfigError as error:
        found = error.problems
    refused = key == "client_secret_env" or "$" in value or not value.startswith('"')
    assert [p.split(": ", 1)[0] for p in found] == ([f"{where}.{key}"] if refused else [])
    assert not any(PASTED in problem for problem in found), found


def test_credential_forms_and_overrides(load: Load) -> None:
    text = (
        f'[exchange]\nclient_id = "{APP_ID}"\nclient_secret_env = "MXWATCH_SECRET"\n'
        + TENANT
        + f'[[tenant]]\nname = "fabrikam"\ntenant_id = "{GUID_B}"\nconnector = "c"\n'
        f'domains = ["fabrikam.com"]\nclient_id = "{GUID_A.upper()}"\n'
        'client_secret_file = "/run/secret"\n'
    )
    first, second = load(text).tenants
    assert (first.client_id, first.credential) == (APP_ID, SecretEnvRef("MXWATCH_SECRET"))
    assert second.client_id == GUID_A  # GUIDs are stored lower case
    assert second.credential == SecretFileRef(Path("/run/secret"))


def test_missing_credential_and_client_id(problems: Callable[..., list[str]]) -> None:
    found = problems(TENANT)
    assert found == [
        "tenant[0]: no client_id; set client_id here or in [exchange]",
        "tenant[0]: no credential; set certificate, client_secret_file or client_secret_env "
        "here or in [exchange]",
    ]


def test_more_than_one_credential(problems: Callable[..., list[str]]) -> None:
    found = problems(
        EXCHANGE + 'client_secret_env = "X"\n' + TENANT + 'certificate = "a"\n'
        'client_secret_file = "b"\n'
    )
    assert found == [
        "exchange: set only one of certificate, client_secret_env",
        "tenant[0]: set only one of certificate, client_secret_file",
    ]


def test_credentials_directory_expansion(load: Load, problems: Callable[..., list[str]]) -> None:
    for reference in ("$CREDENTIALS_DIRECTORY", "${CREDENTIALS_DIRECTORY}"):
        text = (
            f'[exchange]\nclient_id = "{APP_ID}"\n'
            f'client_secret_file = "{reference}/secret"\n' + TENANT
        )
        environ = {**ENV, "CREDENTIALS_DIRECTORY": "/run/credentials/mxwatch.service"}
        (tenant,) = load(text, environ).tenants
        assert tenant.credential == SecretFileRef(Path("/run/credentials/mxwatch.service/secret"))
        assert problems(text) == [
            "exchange.client_secret_file: refers to an environment variable that is not set "
            "(not named: the name is part of the value, which may be a secret)"
        ]
    # Outside the credential keys a path holds no secret, so the variable is named.
    assert problems(EXCHANGE + TENANT + '[daemon]\nstate = "$NOT_SET/state.db"\n') == [
        "daemon.state: refers to $NOT_SET, which is not set in the environment"
    ]


def test_credential_refs_name_each_distinct_reference_once(load: Load, tmp_path: Path) -> None:
    text = (
        f'[exchange]\nclient_id = "{APP_ID}"\ncertificate = "app.pem"\n'
        + TENANT
        + f'[[tenant]]\nname = "b"\ntenant_id = "{GUID_B}"\nconnector = "c"\n'
        'domains = ["b.example"]\nclient_secret_env = "B_SECRET"\n'
        f'[[tenant]]\nname = "c"\ntenant_id = "{GUID_C}"\nconnector = "c"\n'
        'domains = ["c.example"]\n'
    )
    config = load(text)
    refs = credential_refs(config)
    assert refs == [CertificateRef(tmp_path / "app.pem"), SecretEnvRef("B_SECRET")]
    assert [ref.key for ref in refs] == ["exchange.certificate", "tenant[1].client_secret_env"]
    # Tenants inheriting [exchange]'s credential hold the very same reference.
    assert config.tenants[0].credential is config.tenants[2].credential


def test_the_key_path_is_not_part_of_a_references_identity(load: Load) -> None:
    """ExchangeClient keys its MSAL apps by reference: one app per distinct credential."""
    tenant_b = (
        f'[[tenant]]\nname = "b"\ntenant_id = "{GUID_B}"\nconnector = "c"\n'
        'domains = ["b.example"]\ncertificate = "/etc/mxwatch/app.pem"\n'
    )
    first, second = load(EXCHANGE + TENANT + tenant_b).tenants
    assert (first.credential.key, second.credential.key) == (
        "exchange.certificate",
        "tenant[1].certificate",
    )
    assert first.credential == second.credential
    assert len({first.credential, second.credential}) == 1
    assert "/etc/mxwatch" not in repr(second.credential)


# --- clouds --------------------------------------------------------------------------------


@pytest.mark.parametrize("cloud", ["global", "gcc-high", "dod", "china"])
def test_named_clouds_use_the_table(load: Load, cloud: str) -> None:
    exchange = load(f'[exchange]\ncloud = "{cloud}"' + EXCHANGE[11:] + TENANT).exchange
    assert exchange.cloud == Cloud(cloud)
    assert (exchange.login_url, exchange.admin_url) == (
        CLOUDS[Cloud(cloud)].login_url,
        CLOUDS[Cloud(cloud)].admin_url,
    )


def test_custom_cloud_requires_https_urls(load: Load, problems: Callable[..., list[str]]) -> None:
    custom = '[exchange]\ncloud = "custom"\n'
    rest = EXCHANGE[11:] + TENANT
    assert problems(custom + rest) == [
        'exchange.login_url: required with cloud = "custom"',
        'exchange.admin_url: required with cloud = "custom"',
    ]
    found = problems(custom + 'login_url = "http://login.test"\nadmin_url = "https:///x"\n' + rest)
    assert paths(found) == {"exchange.login_url", "exchange.admin_url"}
    exchange = load(
        custom
        + 'login_url = "https://127.0.0.1:8443/"\nadmin_url = "https://admin.test"\n'
        + 'ca_bundle = "ca.pem"\n'
        + rest
    ).exchange
    assert exchange.cloud is Cloud.CUSTOM
    assert (exchange.login_url, exchange.admin_url) == (
        "https://127.0.0.1:8443",
        "https://admin.test",
    )
    assert exchange.ca_bundle is not None and exchange.ca_bundle.name == "ca.pem"


def test_urls_refused_with_a_named_cloud(problems: Callable[..., list[str]]) -> None:
    found = problems('[exchange]\nlogin_url = "https://login.test"' + EXCHANGE[11:] + TENANT)
    assert found == [
        "exchange.login_url: only allowed with cloud = \"custom\"; cloud = 'global' uses its "
        "built-in endpoints"
    ]


# --- DNS -----------------------------------------------------------------------------------


def test_resolver_forms(load: Load) -> None:
    text = (
        '[dns]\nresolvers = ["system", "192.0.2.1", "127.0.0.1:5353", "[::1]:5300", "2001:db8::1"]'
        "\nauthoritative = false\n" + EXCHANGE + TENANT
    )
    assert load(text).dns.resolvers == (
        ResolverSpec("system", None, 53),
        ResolverSpec("192.0.2.1", "192.0.2.1", 53),
        ResolverSpec("127.0.0.1:5353", "127.0.0.1", 5353),
        ResolverSpec("[::1]:5300", "::1", 5300),
        ResolverSpec("2001:db8::1", "2001:db8::1", 53),
    )


@pytest.mark.parametrize(
    "resolver", ["dns.google", "1.2.3.4:0", "1.2.3.4:65536", "1.2.3.4:x", "[::1", "[::1]x", 53]
)
def test_bad_resolvers(problems: Callable[..., list[str]], resolver: object) -> None:
    value = f'"{resolver}"' if isinstance(resolver, str) else str(resolver)
    found = problems(f"[dns]\nresolvers = [{value}]\n" + EXCHANGE + TENANT)
    assert paths(found) == {"dns.resolvers[0]"}


def test_no_resolvers(problems: Callable[..., list[str]]) -> None:
    assert problems("[dns]\nresolvers = []\n" + EXCHANGE + TENANT) == [
        "dns.resolvers: must not be empty"
    ]


# --- providers -----------------------------------------------------------------------------


def test_mailprotector_override_keeps_unset_keys(load: Load) -> None:
    config = load(
        "[providers.mailprotector]\nsender_ips = ['192.0.2.0/24', '198.51.100.7']\n"
        + EXCHANGE
        + TENANT
    )
    provider = config.providers["mailprotector"]
    assert provider.mx == MAILPROTECTOR.mx
    assert provider.sender_ips == (
        ipaddress.IPv4Network("192.0.2.0/24"),
        ipaddress.IPv4Network("198.51.100.7/32"),
    )
    assert "overridden" in provider.source
    assert config.tenants[0].provider is provider

    config = load("[providers.mailprotector]\nmx = ['MX1.Filter.Example.']\n" + EXCHANGE + TENANT)
    assert config.providers["mailprotector"].mx == ("mx1.filter.example",)
    assert config.providers["mailprotector"].sender_ips == ()


def test_added_provider(load: Load) -> None:
    config = load(
        "[providers.proofpoint]\nmx = ['*.PPE-Hosted.com', '*.ppe-hosted.com.']\n"
        + EXCHANGE
        + TENANT
        + "provider = 'proofpoint'\n"
    )
    assert set(config.providers) == {*BUILTIN_PROVIDERS, "proofpoint"}
    provider = config.tenants[0].provider
    assert provider.name == "proofpoint"
    assert provider.mx == ("*.ppe-hosted.com",)  # normalised and de-duplicated
    assert provider.matches("mx1-us1.ppe-hosted.com.")


def test_pattern_normalisation_with_idn(load: Load) -> None:
    config = load(
        "[providers.x]\nmx = ['*.Bücher.Example', 'mx.bücher.example.']\n" + EXCHANGE + TENANT
    )
    assert config.providers["x"].mx == ("*.xn--bcher-kva.example", "mx.xn--bcher-kva.example")


@pytest.mark.parametrize("pattern", ["*", "*.com", "mx*.example.com", "a.*.example", "a..b", ""])
def test_bad_patterns(problems: Callable[..., list[str]], pattern: str) -> None:
    found = problems(f"[providers.x]\nmx = ['{pattern}']\n" + EXCHANGE + TENANT)
    assert paths(found) == {"providers.x.mx[0]"}


def test_bad_provider_tables(problems: Callable[..., list[str]]) -> None:
    found = problems(
        '[providers."Bad Name"]\nmx = ["mx.example.com"]\n[providers.empty]\nmx = []\n'
        "[providers.nomx]\nsender_ips = []\n" + EXCHANGE + TENANT
    )
    assert set(found) == {
        'providers."Bad Name": a provider name must be lower-case letters, digits, - or _',
        "providers.empty.mx: must not be empty",
        "providers.nomx.mx: required for a provider that is not built in",
    }


def test_unknown_provider(problems: Callable[..., list[str]]) -> None:
    assert problems(EXCHANGE + TENANT + "provider = 'acme'\n") == [
        "tenant[0].provider: no provider named 'acme' (known: barracuda, hornetsecurity, "
        "mailprotector, mimecast, proofpoint-essentials, sophos, spamtitan, trendmicro)"
    ]


# --- tenants and domains -------------------------------------------------------------------


def test_domain_normalisation_idn(load: Load) -> None:
    text = EXCHANGE + TENANT.replace(
        '["contoso.com"]', '["Contoso.COM.", "Bücher.Example", "xn--caf-dma.example"]'
    )
    assert load(text).tenants[0].domains == (
        "contoso.com",
        "xn--bcher-kva.example",
        "xn--caf-dma.example",
    )


def test_idn_utf8_and_punycode_are_duplicates(problems: Callable[..., list[str]]) -> None:
    found = problems(
        EXCHANGE + TENANT.replace('["contoso.com"]', '["bücher.example", "XN--BCHER-KVA.example."]')
    )
    assert found == [
        "tenant[0].domains[1]: 'XN--BCHER-KVA.example.' is the same domain as "
        "tenant[0].domains[0] ('bücher.example'), both xn--bcher-kva.example"
    ]


def test_domain_in_two_tenants(problems: Callable[..., list[str]]) -> None:
    second = f'[[tenant]]\nname = "b"\ntenant_id = "{GUID_B}"\nconnector = "c"\n'
    found = problems(EXCHANGE + TENANT + second + 'domains = ["x.example", "CONTOSO.com"]\n')
    (problem,) = found
    assert problem.startswith(
        "tenant[1].domains[1]: 'CONTOSO.com' is the same domain as tenant[0].domains[0]"
    )
    assert "one tenant" in problem


@pytest.mark.parametrize("domain", ["localhost", "a b.example", "-x.example", "x..example", "."])
def test_bad_domains(problems: Callable[..., list[str]], domain: str) -> None:
    found = problems(EXCHANGE + TENANT.replace('["contoso.com"]', f'["{domain}"]'))
    assert paths(found) == {"tenant[0].domains[0]"}


def test_duplicate_names_and_tenant_ids(problems: Callable[..., list[str]]) -> None:
    twin = TENANT.replace('["contoso.com"]', '["other.example"]').replace("contoso", "Contoso")
    found = problems(EXCHANGE + TENANT + twin)
    assert paths(found) == {"tenant[1].name", "tenant[1].tenant_id"}


def test_guid_and_name_values(load: Load, problems: Callable[..., list[str]]) -> None:
    config = load(
        EXCHANGE + TENANT.replace(GUID_A, GUID_A.upper()).replace('"contoso"', '"c.o@x-1"')
    )
    assert config.tenants[0].tenant_id == GUID_A
    assert config.tenants[0].name == "c.o@x-1"
    for bad_guid in ("{" + GUID_A + "}", GUID_A.replace("-", ""), GUID_A + "0"):
        assert paths(problems(EXCHANGE + TENANT.replace(GUID_A, bad_guid))) == {
            "tenant[0].tenant_id"
        }
    for bad_name in ("", "-x", "x" * 65, "new\\nline"):
        assert paths(problems(EXCHANGE + TENANT.replace('"contoso"', f'"{bad_name}"'))) == {
            "tenant[0].name"
        }


def test_policy_values(load: Load) -> None:
    policy = load(
        '[policy]\nconfirmations = 1\non_regression = "disable"\n' + EXCHANGE + TENANT
    ).policy
    assert (policy.confirmations, policy.on_regression) == (1, "disable")


# --- [metrics] and [notify] ----------------------------------------------------------------


def test_metrics_and_notify_defaults_and_values(load: Load) -> None:
    config = load(EXCHANGE + TENANT)
    assert config.metrics.listen is None
    assert (config.notify.webhook, config.notify.format) == (None, "json")
    assert (config.notify.timeout, config.notify.retries) == (timedelta(seconds=5), 2)
    config = load(
        EXCHANGE
        + TENANT
        + '[metrics]\nlisten = "[::1]:9464"\n'
        + '[notify]\nwebhook = "https://hooks.example/x/y"\nformat = "teams"\n'
        + 'timeout = "2s"\nretries = 0\n'
    )
    assert config.metrics.listen == ("::1", 9464)
    assert config.notify.webhook == "https://hooks.example/x/y"
    assert (config.notify.format, config.notify.timeout, config.notify.retries) == (
        "teams",
        timedelta(seconds=2),
        0,
    )
    local = load(EXCHANGE + TENANT + '[notify]\nwebhook = "http://127.0.0.1:8080/hook"\n')
    assert local.notify.webhook == "http://127.0.0.1:8080/hook"


def test_metrics_and_notify_errors_name_their_keys_without_the_url(
    problems: Callable[..., list[str]],
) -> None:
    found = problems(
        EXCHANGE
        + TENANT
        + '[metrics]\nlisten = "localhost:99999"\nport = 1\n'
        + '[notify]\nwebhook = "http://hooks.example/SECRETPATH"\nformat = "xml"\n'
        + 'timeout = "0s"\nretries = 11\n'
    )
    assert paths(found) == {
        "metrics.listen",
        "metrics.port",
        "notify.webhook",
        "notify.format",
        "notify.timeout",
        "notify.retries",
    }
    assert not any("SECRETPATH" in problem for problem in found)


def test_a_postgres_state_expands_variables_and_refuses_a_password(
    load: Load, problems: Callable[..., list[str]]
) -> None:
    uri = "postgresql://mxwatch@db.example/mxwatch?passfile=$CREDENTIALS_DIRECTORY/pgpass"
    daemon = f'[daemon]\nstate = "{uri}"\n'
    loaded = load(daemon + EXCHANGE + TENANT, {**ENV, "CREDENTIALS_DIRECTORY": "/run/c"})
    assert loaded.daemon.state == PostgresUri(
        "postgresql://mxwatch@db.example/mxwatch?passfile=/run/c/pgpass"
    )
    with_password = '[daemon]\nstate = "postgresql://mxwatch:s3cr3t-pw@db/mxwatch"\n'
    (problem,) = problems(with_password + EXCHANGE + TENANT)
    assert problem.startswith("daemon.state: a PostgreSQL URI must not hold a password")
    assert "s3cr3t" not in problem
    no_database = '[daemon]\nstate = "postgresql://mxwatch@db"\n'
    (problem,) = problems(no_database + EXCHANGE + TENANT)
    assert problem.startswith("daemon.state: a PostgreSQL URI must name its database")
