"""exchange.py against the emulator: real MSAL and real httpx over HTTPS, nothing patched.

The fixtures (sandbox, secret_env, app_certificate) come from tests/fixtures/sandbox.py,
registered in tests/conftest.py.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest
import trustme
from structlog.testing import capture_logs

from mxwatch.exchange import ExchangeClient
from mxwatch.model import ErrorKind, LookupStatus
from mxwatch.sandbox.exchange_api import ExchangeSandbox, Fault
from mxwatch.settings import SecretEnvRef, SecretFileRef
from tests.fixtures.sandbox import (
    CLIENT_ID,
    CONNECTOR,
    OTHER_TENANT_ID,
    SECRET,
    TENANT_ID,
    AppCertificate,
    api_calls,
    exchange_client,
    exchange_config,
    failure_of,
    make_app_certificate,
    tenant_config,
)


@pytest.fixture
def logs() -> Iterator[list[MutableMapping[str, Any]]]:
    with capture_logs() as captured:
        yield captured


# ------------------------------------------------------------------ authentication


async def test_secret_auth_reads_connector_by_name_and_guid_with_one_token(
    sandbox: ExchangeSandbox, secret_env: SecretEnvRef
) -> None:
    guid = sandbox.add_connector(TENANT_ID, CONNECTOR)
    sandbox.add_connector(TENANT_ID, "Outbound to somewhere else")
    tenant = tenant_config(secret_env)
    async with exchange_client(sandbox) as exchange:
        by_name = await exchange.find_connector(tenant, CONNECTOR.upper())
        by_guid = await exchange.find_connector(tenant, "{" + guid.upper() + "}")
        for _ in range(3):
            await exchange.find_connector(tenant, guid)
        stats = exchange.stats

    assert by_name.status is LookupStatus.FOUND
    assert by_name.connector is not None and by_name.connector.guid == guid
    assert by_name.connector.enabled is False
    assert by_name.connector.sender_domains == ("smtp:*;1",)
    assert by_guid.status is LookupStatus.FOUND and by_guid.connector == by_name.connector
    assert len(sandbox.requests_to("token")) == 1  # cached for every later call
    assert stats.token_requests == 1
    assert stats.api_calls[("Get-InboundConnector", "200")] == 5
    first = api_calls(sandbox)[0]
    assert first.had_auth and first.parameters == {"Identity": CONNECTOR.upper()}


async def test_certificate_auth_obtains_token(
    sandbox: ExchangeSandbox, app_certificate: AppCertificate
) -> None:
    sandbox.register_app(TENANT_ID, CLIENT_ID, certificate_pem=app_certificate.certificate_pem)
    sandbox.add_connector(TENANT_ID, CONNECTOR)
    async with exchange_client(sandbox) as exchange:
        lookup = await exchange.find_connector(tenant_config(app_certificate.ref), CONNECTOR)
    assert lookup.status is LookupStatus.FOUND
    token_requests = sandbox.requests_to("token")
    assert [r.status for r in token_requests] == [200]
    assert not token_requests[0].had_auth  # a signed assertion, not HTTP Basic with a secret


async def test_unregistered_certificate_is_a_credentials_failure(
    sandbox: ExchangeSandbox, app_certificate: AppCertificate, tmp_path: Path
) -> None:
    other = make_app_certificate(tmp_path, "other.pem")
    sandbox.register_app(TENANT_ID, CLIENT_ID, certificate_pem=other.certificate_pem)
    async with exchange_client(sandbox) as exchange:
        error = await failure_of(exchange.find_connector(tenant_config(app_certificate.ref), "x"))
    assert error.failure.kind is ErrorKind.CREDENTIALS
    assert "invalid_client" in error.failure.message
    assert api_calls(sandbox) == []


async def test_wrong_secret_is_a_credentials_failure(
    sandbox: ExchangeSandbox, tmp_path: Path
) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("not-the-secret\n")
    async with exchange_client(sandbox) as exchange:
        error = await failure_of(
            exchange.find_connector(tenant_config(SecretFileRef(secret_file)), CONNECTOR)
        )
    assert error.failure.kind is ErrorKind.CREDENTIALS
    assert "invalid_client" in error.failure.message and "AADSTS7000215" in error.failure.message
    assert "not-the-secret" not in str(error)


async def test_unknown_tenant_is_a_credentials_failure(
    sandbox: ExchangeSandbox, secret_env: SecretEnvRef
) -> None:
    tenant = tenant_config(secret_env, tenant_id="99999999-9999-9999-9999-999999999999")
    async with exchange_client(sandbox) as exchange:
        error = await failure_of(exchange.find_connector(tenant, CONNECTOR))
    assert error.failure.kind is ErrorKind.CREDENTIALS


async def test_token_for_another_tenant_is_rejected(
    sandbox: ExchangeSandbox, secret_env: SecretEnvRef
) -> None:
    sandbox.add_tenant(OTHER_TENANT_ID)
    foreign = sandbox.mint_token(OTHER_TENANT_ID, CLIENT_ID)
    sandbox.inject(
        Fault(target="token", status=200, body=sandbox.token_response(foreign), times=None)
    )
    sandbox.add_connector(TENANT_ID, CONNECTOR)
    async with exchange_client(sandbox) as exchange:
        error = await failure_of(exchange.find_connector(tenant_config(secret_env), CONNECTOR))
    assert error.failure.kind is ErrorKind.CREDENTIALS
    assert error.failure.status == 401
    assert [r.status for r in api_calls(sandbox)] == [401, 401]


# ------------------------------------------------------------------ lookups and writes


async def test_unknown_identity_is_missing_although_all_connectors_came_back(
    sandbox: ExchangeSandbox, secret_env: SecretEnvRef
) -> None:
    sandbox.add_connector(TENANT_ID, "Inbound from Partner A")
    sandbox.add_connector(TENANT_ID, "Inbound from Partner B")
    async with exchange_client(sandbox) as exchange:
        lookup = await exchange.find_connector(tenant_config(secret_env), CONNECTOR)
    assert lookup.status is LookupStatus.MISSING
    assert lookup.connector is None
    assert lookup.returned == 2
    assert "Inbound from Partner A" in lookup.detail and "unknown identity" in lookup.detail


async def test_duplicate_names_are_ambiguous(
    sandbox: ExchangeSandbox, secret_env: SecretEnvRef
) -> None:
    first = sandbox.add_connector(TENANT_ID, CONNECTOR)
    second = sandbox.add_connector(TENANT_ID, CONNECTOR.lower())
    async with exchange_client(sandbox) as exchange:
        lookup = await exchange.find_connector(tenant_config(secret_env), CONNECTOR)
    assert lookup.status is LookupStatus.AMBIGUOUS
    assert first in lookup.detail and second in lookup.detail


async def test_set_enabled_changes_the_connector_and_reads_it_back(
    sandbox: ExchangeSandbox, secret_env: SecretEnvRef
) -> None:
    guid = sandbox.add_connector(TENANT_ID, CONNECTOR)
    async with exchange_client(sandbox) as exchange:
        connector = await exchange.set_connector_enabled(tenant_config(secret_env), guid, True)
    assert connector.enabled is True and connector.guid == guid
    assert sandbox.connector(TENANT_ID, guid)["Enabled"] is True
    sets = api_calls(sandbox, "Set-InboundConnector")
    assert [dict(r.parameters) for r in sets] == [{"Identity": guid, "Enabled": True}]
    assert api_calls(sandbox)[-1].cmdlet == "Get-InboundConnector"


async def test_no_change_warning_is_logged(
    sandbox: ExchangeSandbox, secret_env: SecretEnvRef, logs: list[MutableMapping[str, Any]]
) -> None:
    guid = sandbox.add_connector(TENANT_ID, CONNECTOR, Enabled=True)
    async with exchange_client(sandbox) as exchange:
        connector = await exchange.set_connector_enabled(tenant_config(secret_env), guid, True)
    assert connector.enabled is True
    warnings = [entry for entry in logs if entry["event"] == "exchange_warning"]
    assert len(warnings) == 1
    assert "no settings of" in warnings[0]["warning"]
    assert warnings[0]["cmdlet"] == "Set-InboundConnector"


async def test_set_on_a_vanished_connector_is_blocked(
    sandbox: ExchangeSandbox, secret_env: SecretEnvRef
) -> None:
    async with exchange_client(sandbox) as exchange:
        error = await failure_of(
            exchange.set_connector_enabled(
                tenant_config(secret_env), "0b7a4c6e-1f7e-4c3f-9a53-1c0c1a0e7d11", True
            )
        )
    assert error.failure.kind is ErrorKind.BLOCKED and error.failure.status == 404
    assert "couldn't be found" in error.failure.message


async def test_404_on_get_is_missing(sandbox: ExchangeSandbox, secret_env: SecretEnvRef) -> None:
    sandbox.add_connector(TENANT_ID, CONNECTOR)
    sandbox.inject(Fault(status=404, cmdlet="Get-InboundConnector"))
    async with exchange_client(sandbox) as exchange:
        lookup = await exchange.find_connector(tenant_config(secret_env), CONNECTOR)
    assert lookup.status is LookupStatus.MISSING


async def test_400_is_blocked_with_the_human_text(
    sandbox: ExchangeSandbox, secret_env: SecretEnvRef
) -> None:
    guid = sandbox.add_connector(TENANT_ID, CONNECTOR)
    sandbox.inject(Fault(status=400, cmdlet="Set-InboundConnector"))
    async with exchange_client(sandbox) as exchange:
        error = await failure_of(
            exchange.set_connector_enabled(tenant_config(secret_env), guid, True)
        )
    assert error.failure.kind is ErrorKind.BLOCKED and error.failure.status == 400
    assert error.failure.message.endswith("Injected fault")  # the |Type| prefix is gone
    assert error.failure.cmdlet == "Set-InboundConnector"


# ------------------------------------------------------------------ failures and retries


async def test_429_waits_for_retry_after_then_succeeds(
    sandbox: ExchangeSandbox, secret_env: SecretEnvRef, logs: list[MutableMapping[str, Any]]
) -> None:
    guid = sandbox.add_connector(TENANT_ID, CONNECTOR)
    sandbox.inject(Fault(status=429, retry_after="1", cmdlet="Set-InboundConnector"))
    async with exchange_client(sandbox, max_retry_wait=5.0) as exchange:
        connector = await exchange.set_connector_enabled(tenant_config(secret_env), guid, True)
    assert connector.enabled is True
    first, second = api_calls(sandbox, "Set-InboundConnector")
    assert (first.status, second.status) == (429, 200)
    assert second.at - first.at >= 0.99  # the server's own clock, not the test's
    retries = [entry for entry in logs if entry["event"] == "exchange_retry"]
    assert retries[0]["status"] == 429 and retries[0]["wait"] == 1.0


async def test_401_gets_one_fresh_token_then_credentials(
    sandbox: ExchangeSandbox, secret_env: SecretEnvRef
) -> None:
    sandbox.inject(Fault(status=401, times=None))
    async with exchange_client(sandbox) as exchange:
        error = await failure_of(exchange.find_connector(tenant_config(secret_env), CONNECTOR))
    assert error.failure.kind is ErrorKind.CREDENTIALS and error.failure.status == 401
    assert len(sandbox.requests_to("token")) == 2
    assert len(api_calls(sandbox)) == 2


async def test_revoked_token_is_replaced(
    sandbox: ExchangeSandbox, secret_env: SecretEnvRef
) -> None:
    sandbox.add_connector(TENANT_ID, CONNECTOR)
    tenant = tenant_config(secret_env)
    async with exchange_client(sandbox) as exchange:
        await exchange.find_connector(tenant, CONNECTOR)
        sandbox.revoke_tokens()
        lookup = await exchange.find_connector(tenant, CONNECTOR)
    assert lookup.status is LookupStatus.FOUND
    assert [r.status for r in api_calls(sandbox)] == [200, 401, 200]
    assert len(sandbox.requests_to("token")) == 2


async def test_403_with_nul_body_is_blocked(
    sandbox: ExchangeSandbox, secret_env: SecretEnvRef
) -> None:
    sandbox.inject(Fault.forbidden_nul())
    async with exchange_client(sandbox) as exchange:
        error = await failure_of(exchange.find_connector(tenant_config(secret_env), CONNECTOR))
    assert error.failure.kind is ErrorKind.BLOCKED and error.failure.status == 403
    assert "permission" in error.failure.message
    assert len(api_calls(sandbox)) == 1  # not retried


async def test_500_burst_beyond_attempts_is_transient(
    sandbox: ExchangeSandbox, secret_env: SecretEnvRef
) -> None:
    sandbox.inject(Fault(status=500, times=None))
    async with exchange_client(sandbox, max_attempts=3) as exchange:
        error = await failure_of(exchange.find_connector(tenant_config(secret_env), CONNECTOR))
    assert error.failure.kind is ErrorKind.TRANSIENT and error.failure.status == 500
    assert [r.status for r in api_calls(sandbox)] == [500, 500, 500]


async def test_answer_slower_than_the_deadline_is_transient_and_not_retried(
    sandbox: ExchangeSandbox, secret_env: SecretEnvRef
) -> None:
    sandbox.inject(Fault(delay=1.0, times=2))
    async with exchange_client(sandbox, timeout=0.3, max_attempts=2) as exchange:
        error = await failure_of(exchange.find_connector(tenant_config(secret_env), CONNECTOR))
    assert error.failure.kind is ErrorKind.TRANSIENT
    assert error.failure.message == (
        "find_connector did not finish within its 0.3s deadline (exchange.timeout)"
    )
    assert error.failure.cmdlet == "Get-InboundConnector"
    assert exchange.stats.api_calls[("Get-InboundConnector", "timeout")] == 1


async def test_malformed_json_is_transient(
    sandbox: ExchangeSandbox, secret_env: SecretEnvRef
) -> None:
    sandbox.inject(Fault.malformed_json())
    async with exchange_client(sandbox) as exchange:
        error = await failure_of(exchange.find_connector(tenant_config(secret_env), CONNECTOR))
    assert error.failure.kind is ErrorKind.TRANSIENT
    assert "not the expected JSON" in error.failure.message


async def test_plain_text_concurrency_throttle_is_retried(
    sandbox: ExchangeSandbox, secret_env: SecretEnvRef
) -> None:
    sandbox.add_connector(TENANT_ID, CONNECTOR)
    sandbox.inject(Fault.concurrent_requests(times=2))
    async with exchange_client(sandbox) as exchange:
        lookup = await exchange.find_connector(tenant_config(secret_env), CONNECTOR)
    assert lookup.status is LookupStatus.FOUND
    assert len(api_calls(sandbox)) == 3


async def test_token_endpoint_5xx_is_transient(
    sandbox: ExchangeSandbox, secret_env: SecretEnvRef
) -> None:
    sandbox.inject(Fault(target="token", status=503))
    async with exchange_client(sandbox) as exchange:
        error = await failure_of(exchange.find_connector(tenant_config(secret_env), CONNECTOR))
    assert error.failure.kind is ErrorKind.TRANSIENT


# ------------------------------------------------------------------ TLS


async def test_untrusted_ca_fails_closed(
    sandbox: ExchangeSandbox, secret_env: SecretEnvRef
) -> None:
    config = exchange_config(sandbox, trust_sandbox_ca=False)
    async with ExchangeClient(config, max_attempts=1) as exchange:
        error = await failure_of(exchange.find_connector(tenant_config(secret_env), CONNECTOR))
    assert error.failure.kind is ErrorKind.TRANSIENT
    assert "TLS verification failed" in error.failure.message
    assert sandbox.requests_to("token") == [] and api_calls(sandbox) == []


async def test_configured_ca_wins_over_requests_ca_bundle(
    sandbox: ExchangeSandbox,
    secret_env: SecretEnvRef,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    unrelated_ca = tmp_path / "unrelated-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(unrelated_ca))
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE"):
        monkeypatch.setenv(name, str(unrelated_ca))
    sandbox.add_connector(TENANT_ID, CONNECTOR)
    async with exchange_client(sandbox) as exchange:
        lookup = await exchange.find_connector(tenant_config(secret_env), CONNECTOR)
    assert lookup.status is LookupStatus.FOUND


# ------------------------------------------------------------------ secrets stay secret


async def test_secret_and_private_key_never_reach_logs_or_errors(
    sandbox: ExchangeSandbox,
    secret_env: SecretEnvRef,
    app_certificate: AppCertificate,
    logs: list[MutableMapping[str, Any]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    guid = sandbox.add_connector(TENANT_ID, CONNECTOR)
    sandbox.register_app(
        TENANT_ID, CLIENT_ID, secret=SECRET, certificate_pem=app_certificate.certificate_pem
    )
    errors: list[str] = []
    async with exchange_client(sandbox) as exchange:
        for credential in (secret_env, app_certificate.ref):
            tenant = tenant_config(credential)
            await exchange.set_connector_enabled(tenant, guid, True)
            sandbox.inject(Fault(status=401, times=2))
            errors.append(str(await failure_of(exchange.find_connector(tenant, CONNECTOR))))
        # Rotated secret: the revoked token's 401 leads to a token request that fails.
        sandbox.register_app(TENANT_ID, CLIENT_ID, secret="rotated")
        sandbox.revoke_tokens()
        errors.append(
            str(await failure_of(exchange.find_connector(tenant_config(secret_env), CONNECTOR)))
        )
    key_body = b"".join(app_certificate.private_key_pem.splitlines()[1:-1]).decode()
    everything = "\n".join([*errors, repr(logs), caplog.text])
    assert SECRET not in everything
    assert key_body[:40] not in everything and "PRIVATE KEY" not in everything
    assert re.search(r"Bearer [A-Za-z0-9._~+/-]{16,}", everything) is None  # no access token
    assert any(entry["event"] == "token_acquired" for entry in logs)
