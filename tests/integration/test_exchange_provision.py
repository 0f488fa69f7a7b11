"""The provisioning writes of exchange.py against the emulator (real MSAL, httpx, HTTPS), and
the emulator's New-InboundConnector behaving as Exchange's does (issue 10, item 4)."""

from __future__ import annotations

import json

import pytest

from mxwatch.exchange import error_text
from mxwatch.model import ErrorKind, NewConnector
from mxwatch.sandbox.exchange_api import ExchangeSandbox, Fault
from mxwatch.settings import SecretEnvRef
from tests.fixtures.sandbox import (
    CONNECTOR,
    TENANT_ID,
    api_calls,
    exchange_client,
    failure_of,
    tenant_config,
)

RANGES = ("209.222.80.0/24", "209.222.81.0/24", "198.51.100.7/32")
NEW = NewConnector(CONNECTOR, RANGES, "Created disabled by mxwatch (test)")


# --- the emulator ------------------------------------------------------------------------------


def new_inbound_connector(sandbox: ExchangeSandbox, **parameters: object) -> tuple[int, bytes]:
    cmdlet = {"CmdletName": "New-InboundConnector", "Parameters": parameters}
    answer = sandbox.invoke(TENANT_ID, cmdlet)
    return answer.status, answer.body


def test_a_new_connector_is_enabled_unless_told_otherwise(sandbox: ExchangeSandbox) -> None:
    status, body = new_inbound_connector(sandbox, Name="Plain", SenderDomains=["*"])
    assert status == 200
    (created,) = json.loads(body)["value"]
    assert created["Enabled"] is True
    assert created["SenderIPAddresses"] == []
    assert created["RestrictDomainsToIPAddresses"] is False


@pytest.mark.parametrize("entry", ["10.1.0.0/16", "209.222.80.0/21", "2001:db8::/48", "bogus"])
def test_sender_ranges_exchange_rejects_are_refused_with_the_api_error_shape(
    sandbox: ExchangeSandbox, entry: str
) -> None:
    status, body = new_inbound_connector(
        sandbox, Name="Wide", SenderDomains=["*"], SenderIPAddresses=["192.0.2.0/24", entry]
    )
    assert status == 400
    assert json.loads(body)["error"]["code"] == "BadRequest"
    assert error_text(body).startswith(f"The value '{entry}' of SenderIPAddresses isn't valid")
    # Nothing was created: the name is still free.
    assert new_inbound_connector(sandbox, Name="Wide", SenderDomains=["*"])[0] == 200


@pytest.mark.parametrize(
    "entry", ["192.0.2.0/24", "192.0.2.128/25", "192.0.2.7", "192.0.2.1-192.0.2.9"]
)
def test_sender_ranges_exchange_accepts_are_taken(sandbox: ExchangeSandbox, entry: str) -> None:
    status, _ = new_inbound_connector(
        sandbox, Name="Narrow", SenderDomains=["*"], SenderIPAddresses=[entry]
    )
    assert status == 200


def test_a_taken_name_fails_whatever_its_case(sandbox: ExchangeSandbox) -> None:
    sandbox.add_connector(TENANT_ID, CONNECTOR)
    status, body = new_inbound_connector(sandbox, Name=CONNECTOR.upper(), SenderDomains=["*"])
    assert status == 400
    assert "already exists" in error_text(body)


# --- create_connector ---------------------------------------------------------------------------


async def test_create_sends_enabled_false_and_returns_the_new_connector(
    sandbox: ExchangeSandbox, secret_env: SecretEnvRef
) -> None:
    async with exchange_client(sandbox) as exchange:
        created = await exchange.create_connector(tenant_config(secret_env), NEW)
    (call,) = api_calls(sandbox, "New-InboundConnector")
    assert call.parameters["Enabled"] is False  # said explicitly: Exchange's default is true
    stored = sandbox.connector(TENANT_ID, created.guid)
    assert stored["Enabled"] is False
    assert stored["SenderIPAddresses"] == list(RANGES)
    assert (created.name, created.enabled, created.connector_type) == (CONNECTOR, False, "Partner")
    assert created.sender_ip_addresses == RANGES


async def test_a_rejected_range_is_blocked_with_exchanges_text(
    sandbox: ExchangeSandbox, secret_env: SecretEnvRef
) -> None:
    wide = NewConnector(CONNECTOR, ("10.0.0.0/16",), "test")
    async with exchange_client(sandbox) as exchange:
        error = await failure_of(exchange.create_connector(tenant_config(secret_env), wide))
    assert error.failure.kind is ErrorKind.BLOCKED
    assert "'10.0.0.0/16' of SenderIPAddresses isn't valid" in error.failure.message


async def test_a_duplicate_name_is_blocked_and_nothing_is_added(
    sandbox: ExchangeSandbox, secret_env: SecretEnvRef
) -> None:
    sandbox.add_connector(TENANT_ID, CONNECTOR)
    async with exchange_client(sandbox) as exchange:
        error = await failure_of(exchange.create_connector(tenant_config(secret_env), NEW))
    assert error.failure.kind is ErrorKind.BLOCKED
    assert "already exists" in error.failure.message
    assert len(api_calls(sandbox, "New-InboundConnector")) == 1


async def test_a_create_is_not_repeated_after_an_answer_that_may_follow_the_write(
    sandbox: ExchangeSandbox, secret_env: SecretEnvRef
) -> None:
    sandbox.inject(Fault(status=503, cmdlet="New-InboundConnector"))
    async with exchange_client(sandbox) as exchange:
        error = await failure_of(exchange.create_connector(tenant_config(secret_env), NEW))
    assert error.failure.kind is ErrorKind.TRANSIENT
    assert "not retried: the write may have been made" in error.failure.message
    assert len(api_calls(sandbox, "New-InboundConnector")) == 1


async def test_a_throttled_create_is_sent_again(
    sandbox: ExchangeSandbox, secret_env: SecretEnvRef
) -> None:
    sandbox.inject(Fault(status=429, retry_after="0", cmdlet="New-InboundConnector"))
    async with exchange_client(sandbox) as exchange:
        created = await exchange.create_connector(tenant_config(secret_env), NEW)
    assert [c.status for c in api_calls(sandbox, "New-InboundConnector")] == [429, 200]
    assert created.enabled is False


# --- add_sender_ips -----------------------------------------------------------------------------


async def test_sender_ips_are_added_to_the_newest_list_and_none_is_removed(
    sandbox: ExchangeSandbox, secret_env: SecretEnvRef
) -> None:
    guid = sandbox.add_connector(TENANT_ID, CONNECTOR, SenderIPAddresses=["203.0.113.9"])
    async with exchange_client(sandbox) as exchange:
        after = await exchange.add_sender_ips(tenant_config(secret_env), guid, RANGES)
    assert after.sender_ip_addresses == ("203.0.113.9", *RANGES)
    assert sandbox.connector(TENANT_ID, guid)["SenderIPAddresses"] == ["203.0.113.9", *RANGES]
    (call,) = api_calls(sandbox, "Set-InboundConnector")
    assert call.parameters["Identity"] == guid
    assert set(call.parameters) == {"Identity", "SenderIPAddresses"}


async def test_an_enabled_connector_gets_no_write(
    sandbox: ExchangeSandbox, secret_env: SecretEnvRef
) -> None:
    guid = sandbox.add_connector(TENANT_ID, CONNECTOR, Enabled=True)
    async with exchange_client(sandbox) as exchange:
        error = await failure_of(exchange.add_sender_ips(tenant_config(secret_env), guid, RANGES))
    assert error.failure.kind is ErrorKind.BLOCKED
    assert "it is enabled" in error.failure.message
    assert api_calls(sandbox, "Set-InboundConnector") == []


async def test_sender_ips_are_written_only_to_a_guid(
    sandbox: ExchangeSandbox, secret_env: SecretEnvRef
) -> None:
    sandbox.add_connector(TENANT_ID, CONNECTOR)
    async with exchange_client(sandbox) as exchange:
        error = await failure_of(
            exchange.add_sender_ips(tenant_config(secret_env), CONNECTOR, RANGES)
        )
    assert "not a GUID read from the API" in error.failure.message
    assert api_calls(sandbox) == []
