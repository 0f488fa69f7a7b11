"""The built-in provider profiles (issue 10, item 6): each matches the hosts its sources
document and nothing that merely looks like them.

A pattern that matches too much is the dangerous mistake: a foreign MX would count as
"filtered" and the connector would be enabled while mail still arrives directly.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mxwatch.config import load_config
from mxwatch.providers import BUILTIN_PROVIDERS, origin
from mxwatch.settings import Provider

# For each built-in, host names its sources give as MX examples (or, for per-account hosts,
# names of the documented form). Every one must match.
DOCUMENTED = {
    "mailprotector": [
        "mx1.inbound.emailservice.io",
        "mx2.inbound.emailservice.cc",
        "mx3.inbound.emailservice.co",
        "inbound.emailservice.io",  # the bare apex, in case an MX is the apex itself
        "inbound.emailservice.cc",
        "inbound.emailservice.co",
    ],
    "proofpoint-essentials": ["mx1-us1.ppe-hosted.com", "mx2-eu1.ppe-hosted.com."],
    "mimecast": [
        "us-smtp-inbound-1.mimecast.com",
        "eu-smtp-inbound-2.mimecast.com",
        "de-smtp-inbound-1.mimecast.com",
        "au-smtp-inbound-2.mimecast.com",
        "za-smtp-inbound-1.mimecast.co.za",
        "je-smtp-inbound-1.mimecast-offshore.com",
    ],
    "barracuda": ["d123456a.ess.barracudanetworks.com", "D123456B.ESS.BarracudaNetworks.com."],
    "spamtitan": ["cloud1.spamtitan.com", "cloud6.spamtitan.com"],
    "sophos": [
        "mx-01-eu-central-1.prod.hydra.sophos.com",
        "mx-02-us-west-2.prod.hydra.sophos.com",
    ],
    "trendmicro": [
        "contoso.in.tmes.trendmicro.com",
        "contoso.in.tmes.trendmicro.eu",
        "contoso.in.tmes-anz.trendmicro.com",
        "contoso.in.tmems-jp.trendmicro.com",
        "contoso.in.tmes-sg.trendmicro.com",
        "contoso.in.tmes-in.trendmicro.com",
        "contoso.in.tmes-uae.trendmicro.com",
        "in.tmes.trendmicro.com",
        "in.hes.trendmicro.com",
        "in.hes.trendmicro.eu",
    ],
    "hornetsecurity": ["mx01.hornetsecurity.com", "mx04.hornetsecurity.com"],
}

# Names that look like a provider's but are not its inbound hosts: the apex where no page
# gives it, the provider's corporate and other-product hosts, look-alike registrations and
# the provider's names as a prefix of someone else's domain.
LOOK_ALIKES = {
    "mailprotector": [
        "emailservice.io",
        "evilinbound.emailservice.io",
        "mx1.inbound.emailservice.io.evil.example",
        "inbound.emailservice.com",
        "mx1.mailprotector.com",
    ],
    "proofpoint-essentials": [
        "ppe-hosted.com",
        "evil-ppe-hosted.com",
        "mx1-us1.ppe-hosted.com.evil.example",
        "mx0a-00123456.pphosted.com",  # Proofpoint's enterprise service, another product
        "www.proofpoint.com",
    ],
    "mimecast": [
        "mimecast.com",
        "evil-mimecast.com",
        "mimecast.com.evil.example",
        "us-smtp-inbound-1.mimecast.com.evil.example",
        "evil-us-smtp-inbound-1.mimecast.com",
        "x.us-smtp-inbound-1.mimecast.com",
        "us-smtp-delivery-1.mimecast.com",  # outbound, not an MX
        "login.mimecast.com",
        "us-smtp-inbound-9.mimecast.com",
    ],
    "barracuda": [
        "ess.barracudanetworks.com",
        "barracudanetworks.com",
        "www.barracudanetworks.com",
        "d123456a.evil-ess.barracudanetworks.com",
        "d123456a.ess.barracudanetworks.com.evil.example",
        "mail.barracuda.com",
    ],
    "spamtitan": [
        "spamtitan.com",
        "www.spamtitan.com",
        "cloud7.spamtitan.com",
        "cloud1.spamtitan.com.evil.example",
        "evil-cloud1.spamtitan.com",
    ],
    "sophos": [
        "prod.hydra.sophos.com",
        "sophos.com",
        "www.sophos.com",
        "mx-01.prod.hydra.sophos.com.evil.example",
        "mx-01.evilprod.hydra.sophos.com",
    ],
    "trendmicro": [
        "trendmicro.com",
        "www.trendmicro.com",
        "tmes.trendmicro.com",
        "evil-tmes.trendmicro.com",
        "contoso.in.tmes.trendmicro.com.evil.example",
        "contoso.in.tmes.trendmicro.co",
        "hes.trendmicro.com",
        "x.in.hes.trendmicro.com",  # HES names its hosts exactly
    ],
    "hornetsecurity": [
        "hornetsecurity.com",
        "www.hornetsecurity.com",
        "mx01.hornetsecurity.com.evil.example",
        "evil-mx01.hornetsecurity.com",
        "mx01.hornetsecurity.co",
    ],
}

# Where mail goes before any cutover: no filter may claim it.
MICROSOFT = ["contoso-com.mail.protection.outlook.com", "contoso-com.l-v1.mx.microsoft"]


def test_the_documented_table_covers_every_built_in() -> None:
    assert set(DOCUMENTED) == set(LOOK_ALIKES) == set(BUILTIN_PROVIDERS)
    assert next(iter(BUILTIN_PROVIDERS)) == "mailprotector"  # the default comes first


@pytest.mark.parametrize(
    ("name", "host"), [(name, host) for name, hosts in DOCUMENTED.items() for host in hosts]
)
def test_a_built_in_matches_its_documented_hosts(name: str, host: str) -> None:
    assert BUILTIN_PROVIDERS[name].matches(host)


@pytest.mark.parametrize(
    ("name", "host"), [(name, host) for name, hosts in LOOK_ALIKES.items() for host in hosts]
)
def test_a_built_in_rejects_look_alikes(name: str, host: str) -> None:
    assert not BUILTIN_PROVIDERS[name].matches(host)


@pytest.mark.parametrize("name", BUILTIN_PROVIDERS)
def test_no_built_in_claims_another_providers_hosts_or_microsoft(name: str) -> None:
    others = [host for other, hosts in DOCUMENTED.items() if other != name for host in hosts]
    provider = BUILTIN_PROVIDERS[name]
    assert [host for host in [*others, *MICROSOFT] if provider.matches(host)] == []


def test_a_wildcard_does_not_match_its_own_suffix() -> None:
    # Why Mailprotector lists its apex names exactly: "*.x" needs a label in front.
    wildcard_only = Provider("p", ("*.inbound.emailservice.io",))
    assert wildcard_only.matches("mx1.inbound.emailservice.io")
    assert not wildcard_only.matches("inbound.emailservice.io")


def test_a_config_can_restate_every_built_in_unchanged(tmp_path: Path) -> None:
    """Each built-in pattern is one the config itself accepts, already in its normal form
    (lower case, no trailing dot, not too broad) and without duplicates."""
    tables = "".join(
        f"[providers.{name}]\nmx = {list(provider.mx)!r}\n"
        f"sender_ips = {[str(network) for network in provider.sender_ips]!r}\n"
        for name, provider in BUILTIN_PROVIDERS.items()
    )
    path = tmp_path / "mxwatch.toml"
    path.write_text(tables + TENANT, encoding="utf-8")
    config = load_config(path, environ={})
    for name, provider in BUILTIN_PROVIDERS.items():
        restated = config.providers[name]
        assert (restated.mx, restated.sender_ips) == (provider.mx, provider.sender_ips), name


@pytest.mark.parametrize("name", BUILTIN_PROVIDERS)
def test_every_built_in_says_where_it_comes_from_and_how_sure(name: str) -> None:
    source = BUILTIN_PROVIDERS[name].source
    assert source.startswith("built-in: ")
    assert "confidence" in source


def test_only_ranges_a_provider_publishes_for_everyone_are_built_in() -> None:
    with_ranges = {name for name, p in BUILTIN_PROVIDERS.items() if p.sender_ips}
    assert with_ranges == {"hornetsecurity"}


def test_origin_tells_built_in_configured_and_overridden_apart() -> None:
    mimecast = BUILTIN_PROVIDERS["mimecast"]
    assert origin(mimecast) == "built-in"
    assert origin(Provider("acme", ("mx.filter.example",))) == "configured"
    # An override is a new profile with its own source, even with the same patterns.
    restated = Provider("mimecast", mimecast.mx, source="config")
    assert origin(restated) == "overrides built-in"


TENANT = """
[exchange]
client_id = "22222222-2222-2222-2222-222222222222"
client_secret_env = "MXWATCH_TEST_SECRET"
[[tenant]]
name = "t"
tenant_id = "11111111-1111-1111-1111-111111111111"
connector = "Inbound from Filter Only"
domains = ["contoso.com"]
"""
