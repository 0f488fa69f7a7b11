"""One deadline per Exchange operation, and bounded answers, through the real client.

`exchange.timeout` bounds a whole operation: its token, pages, retries and waits. httpx and
requests time out per socket operation only, so a server trickling its answer is what these
tests use. Durations are asserted loosely: only that a call ends well before the slow server
would have let it.
"""

from __future__ import annotations

import time

from mxwatch.exchange import MAX_BODY_BYTES
from mxwatch.model import ErrorKind, LookupStatus
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

GET = "Get-InboundConnector"
SET = "Set-InboundConnector"


async def test_a_trickled_answer_ends_at_the_deadline_and_the_client_recovers(
    sandbox: ExchangeSandbox, secret_env: SecretEnvRef
) -> None:
    sandbox.add_connector(TENANT_ID, CONNECTOR)
    sandbox.inject(Fault(trickle=15.0, cmdlet=GET))
    tenant = tenant_config(secret_env)
    async with exchange_client(sandbox, timeout=2.0) as exchange:
        started = time.monotonic()
        error = await failure_of(exchange.find_connector(tenant, CONNECTOR))
        elapsed = time.monotonic() - started
        lookup = await exchange.find_connector(tenant, CONNECTOR)

    assert elapsed < 10
    assert error.failure.kind is ErrorKind.TRANSIENT
    assert error.failure.message == (
        "find_connector did not finish within its 2s deadline (exchange.timeout)"
    )
    assert exchange.stats.api_calls[(GET, "timeout")] == 1
    assert lookup.status is LookupStatus.FOUND  # the cut connection left the pool usable


async def test_a_retry_wait_past_the_deadline_gives_up_at_once(
    sandbox: ExchangeSandbox, secret_env: SecretEnvRef
) -> None:
    sandbox.inject(Fault(status=503, retry_after="30", times=None))
    async with exchange_client(sandbox, timeout=20.0, max_retry_wait=60.0) as exchange:
        started = time.monotonic()
        error = await failure_of(exchange.find_connector(tenant_config(secret_env), CONNECTOR))
        elapsed = time.monotonic() - started

    assert elapsed < 10
    assert error.failure.kind is ErrorKind.TRANSIENT and error.failure.status == 503
    assert "gave up: the next attempt, in 30.0s, would start after the 20s deadline" in (
        error.failure.message
    )
    assert len(api_calls(sandbox)) == 1


async def test_retries_stop_at_the_deadline(
    sandbox: ExchangeSandbox, secret_env: SecretEnvRef
) -> None:
    sandbox.inject(Fault(status=503, retry_after="0.4", times=None))
    async with exchange_client(
        sandbox, timeout=2.0, max_attempts=100, max_retry_wait=1.0
    ) as exchange:
        started = time.monotonic()
        error = await failure_of(exchange.find_connector(tenant_config(secret_env), CONNECTOR))
        elapsed = time.monotonic() - started

    assert elapsed < 10
    assert error.failure.kind is ErrorKind.TRANSIENT and error.failure.status == 503
    assert "deadline of find_connector" in error.failure.message
    assert 2 <= len(api_calls(sandbox)) <= 5  # 0.4 s apart within 2 s, not 100 attempts


async def test_a_trickled_token_answer_ends_at_the_deadline(
    sandbox: ExchangeSandbox, secret_env: SecretEnvRef
) -> None:
    # requests reads the token in a thread that cannot be cancelled: the wait for it is cut.
    sandbox.inject(Fault(target="token", trickle=4.0))
    async with exchange_client(sandbox, timeout=1.0) as exchange:
        started = time.monotonic()
        error = await failure_of(exchange.find_connector(tenant_config(secret_env), CONNECTOR))
        elapsed = time.monotonic() - started

    assert elapsed < 3
    assert error.failure.kind is ErrorKind.TRANSIENT
    assert "find_connector did not finish within its 1s deadline" in error.failure.message
    assert api_calls(sandbox) == []


async def test_the_set_and_its_read_back_share_one_deadline(
    sandbox: ExchangeSandbox, secret_env: SecretEnvRef
) -> None:
    guid = sandbox.add_connector(TENANT_ID, CONNECTOR)
    sandbox.inject(Fault(delay=1.8, cmdlet=SET))
    sandbox.inject(Fault(delay=1.8, cmdlet=GET))  # each alone fits in 3 s, both do not
    async with exchange_client(sandbox, timeout=3.0) as exchange:
        error = await failure_of(
            exchange.set_connector_enabled(tenant_config(secret_env), guid, True)
        )
    assert error.failure.kind is ErrorKind.TRANSIENT
    assert error.failure.cmdlet == GET
    assert "set_connector_enabled did not finish within its 3s deadline" in error.failure.message
    assert sandbox.connector(TENANT_ID, guid)["Enabled"] is True  # the Set itself went through


async def test_a_huge_answer_fails_clearly_and_is_not_retried(
    sandbox: ExchangeSandbox, secret_env: SecretEnvRef
) -> None:
    sandbox.inject(Fault.huge(MAX_BODY_BYTES + 2**20, cmdlet="Get-AcceptedDomain", times=None))
    async with exchange_client(sandbox) as exchange:
        error = await failure_of(exchange.accepted_domains(tenant_config(secret_env)))
    assert error.failure.kind is ErrorKind.TRANSIENT
    assert error.failure.message == (
        "Get-AcceptedDomain: the answer (HTTP 200) is larger than 16 MiB; refused"
    )
    assert exchange.stats.api_calls[("Get-AcceptedDomain", "200")] == 1
