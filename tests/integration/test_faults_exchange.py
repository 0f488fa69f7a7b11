"""Fault matrix, Exchange Online: the real CLI against the sandbox misbehaving.

The client-level classification is in test_exchange.py; these tests check what the product does
with it: the tenant's state and journal, the exit code, the log event naming the fault, that no
connector is enabled early, and that the next cycle recovers.
"""

from __future__ import annotations

import signal
import time

import pytest

from mxwatch.sandbox.exchange_api import Fault
from tests.fixtures.faults import (  # noqa: F401 - frig_fixture registers the fixture
    Event,
    FaultRig,
    check_journal,
    eventually,
    frig_fixture,
    tenant_moves,
)
from tests.fixtures.knot import free_port
from tests.fixtures.rig import M365_MX, Run, contoso, enabled
from tests.fixtures.sandbox import TENANT_ID
from tests.fixtures.service import Service

GET = "Get-InboundConnector"
SET = "Set-InboundConnector"
DOMAINS = "Get-AcceptedDomain"


def errors(run: Run) -> list[tuple[str, str, int | None]]:
    return [(e["cmdlet"], e["kind"], e["status"]) for e in run.named("exchange_error")]


def recover(frig: FaultRig, guid: str, events: list[Event]) -> list[Event]:
    """Clear the faults; the next cycle enables, with exactly one transition into enabled."""
    frig.sandbox.clear_faults()
    run = frig.once()
    events += run.events
    assert run.code == 0, run.stdout
    assert enabled(frig, guid)
    journal = check_journal(frig, events)
    assert [to for _, to in tenant_moves(journal)].count("enabled") == 1
    return journal


# --- answers that need a person: blocked ----------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "error", "reason"),
    [
        (Fault(status=401, times=None), (GET, "credentials", 401), "401"),
        (Fault(status=403, cmdlet=GET, times=None), (GET, "blocked", 403), "permission denied"),
        (Fault.forbidden_nul(cmdlet=SET, times=None), (SET, "blocked", 403), "permission denied"),
        (Fault(status=404, cmdlet=GET, times=None), None, "connector missing"),
        (Fault(status=404, cmdlet=SET, times=None), (SET, "blocked", 404), "not found (404)"),
    ],
    ids=["401", "403-get", "403-nul-body-set", "404-get", "404-set"],
)
def test_refusals_block_the_tenant_until_fixed(
    frig: FaultRig, fault: Fault, error: tuple[str, str, int] | None, reason: str
) -> None:
    frig.policy["confirmations"] = 1
    guid = contoso(frig)
    frig.sandbox.inject(fault)
    run = frig.once()
    events = list(run.events)
    assert run.code == 1, run.stdout
    assert not enabled(frig, guid)
    if error is not None:
        assert error in errors(run)
    status = frig.status()["contoso"]
    assert status["state"] == "blocked"
    assert reason in status["reason"], status["reason"]
    blocked = [e for e in run.named("tenant_transition") if e["to"] == "blocked"]
    assert blocked and blocked[0]["level"] == "error"
    if fault.status == 401:
        # One fresh token after the first 401, then blocked for credentials: not retried on.
        assert len(frig.sandbox.requests_to("token")) == 2
        assert [r.status for r in frig.sandbox.requests_to("api")] == [401, 401]
    if fault.cmdlet != SET:
        assert frig.set_calls() == []
    # blocked is retried every cycle: once the cause is gone, the tenant proceeds.
    recover(frig, guid, events)


# --- answers that a retry may fix: transient ------------------------------------------------


def test_429_without_retry_after_backs_off_and_enables(frig: FaultRig) -> None:
    frig.policy["confirmations"] = 1
    guid = contoso(frig)
    frig.sandbox.inject(Fault(status=429, cmdlet=SET, times=2))
    run = frig.once()
    assert run.code == 0, run.stdout
    assert enabled(frig, guid)
    retries = run.named("exchange_retry")
    assert [(r["cmdlet"], r["status"]) for r in retries] == [(SET, 429), (SET, 429)]
    assert all(0 < r["wait"] <= 1.0 for r in retries)  # backoff without a server hint
    assert [r.status for r in frig.set_calls()] == [429, 429, 200]
    journal = check_journal(frig, run.events)
    assert tenant_moves(journal) == [("waiting", "settling"), ("settling", "enabled")]


@pytest.mark.parametrize(
    "faults",
    [
        [Fault(status=429, retry_after="0", cmdlet=GET, times=None)],
        [Fault(status=s, retry_after="0", cmdlet=SET) for s in (500, 502, 503, 504)],
        [Fault.malformed_json(cmdlet=GET)],
        [Fault(target="token", status=503, times=None)],
    ],
    ids=["429-retry-after-get", "5xx-burst-set", "malformed-json-get", "token-503"],
)
def test_transient_failures_keep_the_tenant_and_the_next_cycle_enables(
    frig: FaultRig, faults: list[Fault]
) -> None:
    frig.policy["confirmations"] = 1
    guid = contoso(frig)
    for fault in faults:
        frig.sandbox.inject(fault)
    run = frig.once()
    events = list(run.events)
    assert run.code == 1, run.stdout
    assert not enabled(frig, guid)
    (error,) = run.named("exchange_error")
    assert error["kind"] == "transient", error
    status = frig.status()["contoso"]
    assert status["state"] in ("waiting", "settling"), status  # never blocked
    if faults[0].cmdlet == SET:
        assert status["state"] == "settling"
        statuses = [r["status"] for r in run.named("exchange_retry")]
        assert statuses == [500, 502, 503]  # the 4th answer (504) is the last attempt's
        assert error["status"] == 504
    else:
        assert frig.set_calls() == []
    if faults[0].target == "token":
        assert frig.sandbox.requests_to("api") == []
        assert "identity platform" in error["error"]
    recover(frig, guid, events)


def test_plain_text_concurrency_throttle_is_retried_and_enables(frig: FaultRig) -> None:
    frig.policy["confirmations"] = 1
    guid = contoso(frig)
    frig.sandbox.inject(Fault.concurrent_requests(cmdlet=SET, times=2))
    run = frig.once()
    assert run.code == 0, run.stdout
    assert enabled(frig, guid)
    retries = run.named("exchange_retry")
    assert len(retries) == 2 and "concurrent requests" in retries[0]["reason"]
    check_journal(frig, run.events)


def test_a_set_slower_than_the_deadline_is_transient_and_the_next_cycle_heals(
    frig: FaultRig,
) -> None:
    """The Set passes the deadline on our side but completes on the server: the next cycle
    sees it enabled, with exactly one transition into enabled and one Set that succeeded."""
    frig.policy["confirmations"] = 1
    frig.overrides[("exchange", "timeout")] = "1s"
    guid = contoso(frig)
    frig.sandbox.inject(Fault(delay=2.0, cmdlet=SET))
    run = frig.once()
    events = list(run.events)
    assert run.code == 1, run.stdout
    (error,) = run.named("exchange_error")
    assert (error["cmdlet"], error["kind"]) == (SET, "transient")
    assert "set_connector_enabled did not finish within its 1s deadline" in error["error"]
    assert frig.status()["contoso"]["state"] == "settling"
    eventually(lambda: enabled(frig, guid), what="the server to apply the Set")
    recover(frig, guid, events)
    assert [r.status for r in frig.set_calls()].count(200) == 1


def test_a_trickled_answer_ends_the_run_at_the_deadline(frig: FaultRig) -> None:
    frig.policy["confirmations"] = 1
    frig.overrides[("exchange", "timeout")] = "2s"
    guid = contoso(frig)
    frig.sandbox.inject(Fault(trickle=15.0, cmdlet=GET))
    started = time.monotonic()
    run = frig.once()
    elapsed = time.monotonic() - started
    events = list(run.events)
    assert elapsed < 10  # the trickle would hold the read for 15 s
    assert run.code == 1, run.stdout
    (error,) = run.named("exchange_error")
    assert error["kind"] == "transient" and "within its 2s deadline" in error["error"], error
    assert frig.set_calls() == [] and frig.status()["contoso"]["state"] != "blocked"
    recover(frig, guid, events)


# --- listings: every page, or nothing --------------------------------------------------------


def test_a_direct_accepted_domain_on_a_later_page_keeps_the_connector_disabled(
    frig: FaultRig,
) -> None:
    frig.policy["confirmations"] = 1
    frig.sandbox.page_size = 1
    guid = contoso(frig)
    frig.knot.add_zone("legacy-contoso.com", mx=M365_MX)
    frig.sandbox.set_accepted_domains(TENANT_ID, ["contoso.com", "legacy-contoso.com"])
    run = frig.once()
    assert not enabled(frig, guid) and frig.set_calls() == []
    status = frig.status()["contoso"]
    assert status["state"] == "waiting" and "legacy-contoso.com is direct" in status["waiting_for"]
    pages = [r.path for r in frig.sandbox.requests_to("api") if r.cmdlet == DOMAINS]
    assert len(pages) == 2 and "$skiptoken=" in pages[1], pages
    assert run.named("accepted_domains_added")


def test_a_failing_later_page_keeps_the_tenant_from_enabling(frig: FaultRig) -> None:
    frig.policy["confirmations"] = 1
    frig.sandbox.page_size = 1
    guid = contoso(frig)
    frig.sandbox.inject(
        Fault(status=503, retry_after="0", cmdlet=DOMAINS, later_pages_only=True, times=None)
    )
    run = frig.once()
    events = list(run.events)
    assert run.code == 1, run.stdout
    (error,) = run.named("exchange_error")
    assert error["kind"] == "transient", error
    assert "the listing is incomplete, page 2 was not read" in error["error"]
    assert frig.set_calls() == [] and not enabled(frig, guid)
    assert frig.status()["contoso"]["state"] in ("waiting", "settling")
    recover(frig, guid, events)


def test_token_endpoint_refusing_connections_is_transient(frig: FaultRig) -> None:
    frig.policy["confirmations"] = 1
    guid = contoso(frig)
    frig.overrides[("exchange", "login_url")] = f"https://127.0.0.1:{free_port()}"
    run = frig.once()
    events = list(run.events)
    assert run.code == 1, run.stdout
    (error,) = run.named("exchange_error")
    assert error["kind"] == "transient" and "unreachable" in error["error"], error
    assert frig.status()["contoso"]["state"] != "blocked"
    assert frig.sandbox.requests_to("api") == [] and not enabled(frig, guid)
    del frig.overrides[("exchange", "login_url")]
    recover(frig, guid, events)


# --- the daemon through all of it -----------------------------------------------------------


def test_daemon_keeps_running_through_exchange_outages(frig: FaultRig) -> None:
    frig.policy["confirmations"] = 1
    guid = contoso(frig)
    sandbox = frig.sandbox
    sandbox.inject(Fault(target="token", status=503, times=None))
    svc = Service(frig, daemon={"interval": "1s", "jitter": "0s"})
    with svc.start() as daemon:
        # The token endpoint is down: every cycle fails to read, transiently.
        daemon.wait_for("cycle_finished", count=2)
        assert all(e["kind"] == "transient" for e in daemon.named("exchange_error"))
        assert sandbox.requests_to("api") == []
        # Tokens work again, but every Set answers 503: the tenant stays settling.
        sandbox.clear_faults()
        sandbox.inject(Fault(status=503, retry_after="0", cmdlet=SET, times=None))
        daemon.wait_for("exchange_error", lambda e: e["cmdlet"] == SET, count=2)
        assert daemon.process.poll() is None, daemon.stderr
        assert not enabled(frig, guid)
        assert frig.status()["contoso"]["state"] == "settling"
        sandbox.clear_faults()
        daemon.wait_for("connector_enabled")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0, daemon.stderr
        events = list(daemon.events)
    assert enabled(frig, guid)
    assert [r.status for r in frig.set_calls()].count(200) == 1
    journal = check_journal(frig, events)
    assert tenant_moves(journal) == [("waiting", "settling"), ("settling", "enabled")]
