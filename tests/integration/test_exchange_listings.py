"""Whole listings through the real client: every page read, or a failure; never a part.

Also what a listing holds: accepted domains with MatchSubDomains and unreadable names,
connectors of other types, a connector without a Guid. The sandbox pages as the admin API
does (tests/fixtures/sandbox.py has the helpers).
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from mxwatch.exchange import MAX_PAGES, ExchangeClient, error_text
from mxwatch.model import AcceptedDomain, ErrorKind, LookupStatus
from mxwatch.sandbox.exchange_api import ExchangeSandbox, Fault
from mxwatch.settings import SecretEnvRef
from tests.fixtures.sandbox import (
    CLIENT_ID,
    CONNECTOR,
    SECRET,
    TENANT_ID,
    api_calls,
    exchange_client,
    exchange_config,
    failure_of,
    tenant_config,
)

GET_DOMAINS = "Get-AcceptedDomain"
GET_CONNECTOR = "Get-InboundConnector"


def invoke_url(sandbox: ExchangeSandbox) -> str:
    return f"{sandbox.url}/adminapi/beta/{TENANT_ID}/InvokeCommand"


def domain_names(count: int) -> list[str]:
    return [f"d{index:04}.contoso.com" for index in range(count)]


# ------------------------------------------------------------------ every page is read


async def test_an_accepted_domain_on_a_later_page_is_returned(
    sandbox: ExchangeSandbox, secret_env: SecretEnvRef
) -> None:
    sandbox.page_size = 2
    names = ["contoso.com", "contoso.net", "contoso.onmicrosoft.com", "legacy-contoso.com"]
    sandbox.set_accepted_domains(TENANT_ID, names)
    async with exchange_client(sandbox) as exchange:
        accepted = await exchange.accepted_domains(tenant_config(secret_env))

    assert accepted.names == tuple(sorted(names))
    first, second = api_calls(sandbox, GET_DOMAINS)
    assert (first.method, second.method) == ("POST", "POST")
    assert "?" not in first.path and "$skiptoken=" in second.path
    assert first.body == second.body  # the same body, POSTed to the link
    assert [first.status, second.status] == [200, 200]


async def test_prefer_maxpagesize_is_sent_and_honoured(
    sandbox: ExchangeSandbox, secret_env: SecretEnvRef
) -> None:
    sandbox.page_size = 5000  # the server would send everything at once without the Prefer
    sandbox.set_accepted_domains(TENANT_ID, domain_names(1001))
    sandbox.add_connector(TENANT_ID, CONNECTOR)
    tenant = tenant_config(secret_env)
    async with exchange_client(sandbox) as exchange:
        accepted = await exchange.accepted_domains(tenant)
        lookup = await exchange.find_connector(tenant, CONNECTOR)
        assert lookup.connector is not None
        await exchange.set_connector_enabled(tenant, lookup.connector.guid, True)

    assert len(accepted.domains) == 1001
    assert len(api_calls(sandbox, GET_DOMAINS)) == 2  # 1000, then 1
    assert {r.prefer for r in api_calls(sandbox)} == {"odata.maxpagesize=1000"}


async def test_a_failing_later_page_fails_the_whole_listing(
    sandbox: ExchangeSandbox, secret_env: SecretEnvRef
) -> None:
    sandbox.page_size = 1
    sandbox.set_accepted_domains(TENANT_ID, ["contoso.com", "legacy-contoso.com"])
    sandbox.inject(Fault(status=503, later_pages_only=True, times=None))
    async with exchange_client(sandbox, max_attempts=3) as exchange:
        error = await failure_of(exchange.accepted_domains(tenant_config(secret_env)))

    assert error.failure.kind is ErrorKind.TRANSIENT
    assert error.failure.message.startswith(
        "Get-AcceptedDomain: the listing is incomplete, page 2 was not read: "
    )
    assert "HTTP 503" in error.failure.message
    assert [r.status for r in api_calls(sandbox)] == [200, 503, 503, 503]


async def test_a_404_on_a_later_page_is_not_a_missing_connector(
    sandbox: ExchangeSandbox, secret_env: SecretEnvRef
) -> None:
    sandbox.page_size = 1
    sandbox.add_connector(TENANT_ID, "Inbound from Partner A")
    sandbox.add_connector(TENANT_ID, CONNECTOR)
    sandbox.inject(Fault(status=404, later_pages_only=True))
    async with exchange_client(sandbox) as exchange:
        # An unknown identity lists every connector: the one asked for is on page 2.
        error = await failure_of(exchange.find_connector(tenant_config(secret_env), "Nope"))
    assert error.failure.kind is ErrorKind.TRANSIENT
    assert "incomplete, page 2" in error.failure.message and "404" in error.failure.message


# ------------------------------------------------------------------ links that are refused


@pytest.fixture
def elsewhere(tmp_path: Path, sandbox: ExchangeSandbox) -> Iterator[ExchangeSandbox]:
    """A second admin API the client trusts (its CA is in the bundle), on another port."""
    with ExchangeSandbox() as other:
        other.add_tenant(TENANT_ID, accepted_domains=["stolen.example"])
        other.register_app(TENANT_ID, CLIENT_ID, secret=SECRET)
        yield other


@pytest.mark.parametrize("where", ["other port", "other host name", "http", "user info"])
async def test_a_next_link_off_the_admin_url_is_refused_and_never_requested(
    sandbox: ExchangeSandbox,
    elsewhere: ExchangeSandbox,
    secret_env: SecretEnvRef,
    tmp_path: Path,
    where: str,
) -> None:
    port = sandbox.url.rsplit(":", 1)[1]
    path = f"/adminapi/beta/{TENANT_ID}/InvokeCommand?$skiptoken=x"
    link = {
        "other port": f"{elsewhere.url}{path}",
        "other host name": f"https://localhost:{port}{path}",  # the same server, by name
        "http": f"http://127.0.0.1:{port}{path}",
        "user info": f"https://user@127.0.0.1:{port}{path}",
    }[where]
    both = tmp_path / "both-cas.pem"
    both.write_bytes(sandbox.ca_pem_path.read_bytes() + elsewhere.ca_pem_path.read_bytes())
    sandbox.inject(Fault(next_link=link, cmdlet=GET_DOMAINS))
    async with ExchangeClient(exchange_config(sandbox, ca_bundle=both)) as exchange:
        error = await failure_of(exchange.accepted_domains(tenant_config(secret_env)))

    assert error.failure.kind is ErrorKind.TRANSIENT
    assert "incomplete, page 2 was not read: refused its @odata.nextLink" in error.failure.message
    assert len(api_calls(sandbox)) == 1
    assert elsewhere.requests == []


async def test_a_next_link_to_a_page_already_read_is_refused(
    sandbox: ExchangeSandbox, secret_env: SecretEnvRef
) -> None:
    sandbox.inject(Fault(next_link=invoke_url(sandbox), cmdlet=GET_DOMAINS, times=None))
    async with exchange_client(sandbox) as exchange:
        error = await failure_of(exchange.accepted_domains(tenant_config(secret_env)))
    assert error.failure.kind is ErrorKind.TRANSIENT
    assert "points at a page already read" in error.failure.message
    assert len(api_calls(sandbox)) == 1


async def test_a_listing_longer_than_the_page_bound_is_refused(
    sandbox: ExchangeSandbox, secret_env: SecretEnvRef
) -> None:
    sandbox.page_size = 1
    sandbox.set_accepted_domains(TENANT_ID, domain_names(MAX_PAGES + 1))
    async with exchange_client(sandbox, timeout=30.0) as exchange:
        error = await failure_of(exchange.accepted_domains(tenant_config(secret_env)))
    assert error.failure.kind is ErrorKind.TRANSIENT
    assert f"runs past {MAX_PAGES} pages" in error.failure.message
    assert len(api_calls(sandbox)) == MAX_PAGES


# ------------------------------------------------------------------ what a listing holds


async def test_match_subdomains_and_unreadable_names_come_through(
    sandbox: ExchangeSandbox, secret_env: SecretEnvRef
) -> None:
    sandbox.page_size = 2
    sandbox.set_accepted_domains(TENANT_ID, [])
    for name, subdomains in [
        ("Contoso.COM", False),
        ("contoso.com.", True),  # the same domain spelt otherwise: covers subdomains
        ("Bücher.example", True),
        ("fabrikam.example", False),
        ("bad..name", False),
        ("evil\n.example", False),
    ]:
        sandbox.add_accepted_domain(TENANT_ID, name, match_subdomains=subdomains)
    async with exchange_client(sandbox) as exchange:
        accepted = await exchange.accepted_domains(tenant_config(secret_env))

    assert accepted.domains == (
        AcceptedDomain("contoso.com", match_subdomains=True),
        AcceptedDomain("fabrikam.example", match_subdomains=False),
        AcceptedDomain("xn--bcher-kva.example", match_subdomains=True),
    )
    assert accepted.unreadable == ("bad..name", "evil\\n.example")
    assert len(api_calls(sandbox)) == 3


async def test_enabled_connectors_of_other_types_come_through(
    sandbox: ExchangeSandbox, secret_env: SecretEnvRef
) -> None:
    sandbox.add_connector(TENANT_ID, CONNECTOR)
    guid = sandbox.add_on_premises_connector(TENANT_ID, "From the old on-premises server")
    async with exchange_client(sandbox) as exchange:
        lookup = await exchange.find_connector(tenant_config(secret_env), guid)
    other = lookup.connector
    assert other is not None and other.guid == guid
    assert (other.connector_type, other.enabled) == ("OnPremises", True)
    assert other.restrict_domains_to_ip_addresses is False
    assert other.sender_ip_addresses == ()


@pytest.mark.parametrize("guid", [None, "", "not-a-guid", 42])
async def test_a_connector_without_a_valid_guid_fails_clearly(
    sandbox: ExchangeSandbox, secret_env: SecretEnvRef, guid: object
) -> None:
    broken: dict[str, object] = {"Name": CONNECTOR, "Enabled": False}
    if guid is not None:
        broken["Guid"] = guid
    sandbox.inject(Fault(value=[broken], cmdlet=GET_CONNECTOR))
    async with exchange_client(sandbox) as exchange:
        error = await failure_of(exchange.find_connector(tenant_config(secret_env), CONNECTOR))
    assert error.failure.kind is ErrorKind.TRANSIENT
    assert f"connector {CONNECTOR!r} came back without a valid Guid" in error.failure.message


async def test_a_write_goes_only_to_a_guid(
    sandbox: ExchangeSandbox, secret_env: SecretEnvRef
) -> None:
    sandbox.add_connector(TENANT_ID, CONNECTOR)
    async with exchange_client(sandbox) as exchange:
        error = await failure_of(
            exchange.set_connector_enabled(tenant_config(secret_env), CONNECTOR, True)
        )
    assert error.failure.kind is ErrorKind.BLOCKED
    assert "not a GUID read from the API" in error.failure.message
    assert api_calls(sandbox) == []


async def test_an_unknown_identity_on_several_pages_is_missing_with_every_connector(
    sandbox: ExchangeSandbox, secret_env: SecretEnvRef
) -> None:
    sandbox.page_size = 1
    for name in ("Inbound from Partner A", "Inbound from Partner B", "Inbound from Partner C"):
        sandbox.add_connector(TENANT_ID, name)
    async with exchange_client(sandbox) as exchange:
        lookup = await exchange.find_connector(tenant_config(secret_env), CONNECTOR)
    assert lookup.status is LookupStatus.MISSING and lookup.returned == 3
    assert json.loads(api_calls(sandbox)[-1].body)["CmdletInput"]["Parameters"] == {
        "Identity": CONNECTOR
    }


# ------------------------------------------------------------------ the emulator's own paging


async def test_the_sandbox_serves_a_page_only_to_the_same_body_and_a_known_token(
    sandbox: ExchangeSandbox,
) -> None:
    """What the client can never send: another body, or a made-up $skiptoken."""
    sandbox.page_size = 1
    headers = {"Authorization": f"Bearer {sandbox.mint_token(TENANT_ID, CLIENT_ID)}"}
    listing = {"CmdletInput": {"CmdletName": GET_DOMAINS, "Parameters": {}}}
    other = {"CmdletInput": {"CmdletName": GET_DOMAINS, "Parameters": {"Identity": "x"}}}
    trust = ssl.create_default_context(cafile=str(sandbox.ca_pem_path))
    async with httpx.AsyncClient(verify=trust, headers=headers) as http:
        first = (await http.post(invoke_url(sandbox), json=listing)).json()
        link = first["@odata.nextLink"]
        second = await http.post(link, json=listing)
        wrong_body = await http.post(link, json=other)
        made_up = await http.post(f"{invoke_url(sandbox)}?$skiptoken=made-up", json=listing)

    assert [d["DomainName"] for d in first["value"]] == ["contoso.com"]
    assert [d["DomainName"] for d in second.json()["value"]] == ["contoso.net"]
    assert "@odata.nextLink" not in second.json()
    for refused in (wrong_body, made_up):
        assert refused.status_code == 400
        assert error_text(refused.content).startswith("The ")  # the admin API's error shape
