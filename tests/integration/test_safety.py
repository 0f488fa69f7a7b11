"""Safety in depth through the real CLI: accepted domains, TTL-aware settling, regressions."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime

from mxwatch.exchange import ExchangeClient
from mxwatch.settings import SecretEnvRef
from tests.fixtures.rig import FILTER_MX, M365_MX, Rig, Tenant, contoso, enabled
from tests.fixtures.sandbox import CONNECTOR, TENANT_ID, exchange_config, tenant_config


def history(rig: Rig) -> list[tuple[str | None, str]]:
    run = rig.mxwatch("history", "contoso", "--json")
    entries = [json.loads(line) for line in run.stdout.splitlines()]
    return [(e["from"], e["to"]) for e in entries if e["domain"] is None]


# --- accepted domains -----------------------------------------------------------------------


def test_omitted_domains_means_every_accepted_domain_must_be_filtered(rig: Rig) -> None:
    rig.policy["confirmations"] = 1
    rig.knot.add_zone("contoso.com", mx=FILTER_MX)
    rig.knot.add_zone("contoso.net", mx=M365_MX)
    rig.sandbox.set_accepted_domains(
        TENANT_ID, ["contoso.com", "contoso.net", "contoso.onmicrosoft.com"]
    )
    guid = rig.sandbox.add_connector(TENANT_ID, CONNECTOR)
    rig.tenants.append(Tenant("contoso", TENANT_ID, []))

    run = rig.once()
    assert not enabled(rig, guid)
    assert run.named("accepted_domains_added")
    domains = {d["domain"]: d["verdict"] for d in rig.status()["contoso"]["domains"]}
    assert domains == {"contoso.com": "filtered", "contoso.net": "direct"}

    rig.knot.set_mx("contoso.net", FILTER_MX)
    rig.once()
    assert enabled(rig, guid)


def test_accepted_domain_outside_config_is_covered_and_holds_the_enable(rig: Rig) -> None:
    rig.policy["confirmations"] = 1
    guid = contoso(rig)
    rig.knot.add_zone("legacy-contoso.com", mx=M365_MX)
    rig.sandbox.set_accepted_domains(TENANT_ID, ["contoso.com", "legacy-contoso.com"])

    run = rig.once()
    assert run.code == 0
    assert not enabled(rig, guid)
    status = rig.status()["contoso"]
    assert status["state"] == "waiting"
    assert status["waiting_for"] == "legacy-contoso.com is direct"
    verdicts = {d["domain"]: d["verdict"] for d in status["domains"]}
    assert verdicts == {"contoso.com": "filtered", "legacy-contoso.com": "direct"}

    rig.tenants[0].ignore_domains = ["legacy-contoso.com"]
    run = rig.once()
    assert run.code == 0, run.stdout
    assert enabled(rig, guid)


# --- TTL-aware settling ---------------------------------------------------------------------


def test_auto_settle_waits_out_the_old_mx_ttl(rig: Rig) -> None:
    old_ttl = 5
    # The rig's only source is a resolver, whose TTL is a lower bound: counted as at least
    # default_old_ttl, set low here so that the 5 s decide.
    rig.policy = {
        "confirmations": 1,
        "settle": "auto",
        "min_settle": "0s",
        "default_old_ttl": "0s",
    }
    rig.knot.add_zone("contoso.com")
    rig.knot.set_mx("contoso.com", M365_MX, ttl=old_ttl)
    rig.tenants.append(Tenant("contoso", TENANT_ID, ["contoso.com"]))
    rig.sandbox.set_accepted_domains(TENANT_ID, ["contoso.com"])
    guid = rig.sandbox.add_connector(TENANT_ID, CONNECTOR)
    rig.once()

    rig.knot.set_mx("contoso.com", FILTER_MX, ttl=3600)
    rig.once()
    status = rig.status()["contoso"]
    assert status["state"] == "settling"
    eligible = datetime.fromisoformat(status["eligible_at"])
    since = datetime.fromisoformat(status["domains"][0]["checked_at"])
    assert (eligible - since).total_seconds() == old_ttl
    assert f"old MX TTL {old_ttl}s" in status["eligible_reason"]

    early = rig.once()
    started = datetime.fromisoformat(early.named("cycle_started")[0]["timestamp"])
    if started < eligible:  # the usual case: a run takes well under the 5 s
        assert not enabled(rig, guid)
        assert rig.status()["contoso"]["state"] == "settling"

    time.sleep(max(0.0, (eligible - datetime.now(UTC)).total_seconds()) + 0.1)
    rig.once()
    assert enabled(rig, guid)
    assert history(rig) == [("waiting", "settling"), ("settling", "enabled")]


# --- regressions ----------------------------------------------------------------------------


def enabled_contoso(rig: Rig, **policy: object) -> str:
    rig.policy = {"confirmations": 2, "settle": "0s", "min_settle": "0s", **policy}
    guid = contoso(rig, Enabled=True)
    assert rig.once().code == 0
    assert rig.status()["contoso"]["state"] == "enabled"
    return guid


def test_regression_is_confirmed_then_alerts_and_recovers(rig: Rig) -> None:
    guid = enabled_contoso(rig)
    rig.knot.set_mx("contoso.com", M365_MX)
    assert rig.once().code == 0, "one not-filtered cycle is not yet a regression"
    run = rig.once()
    assert run.code == 1
    (moved,) = [e for e in run.named("tenant_transition") if e["to"] == "regressed"]
    assert moved["level"] == "error"
    assert moved["evidence"]["mx"]["contoso.com"] == [f"0 {M365_MX[0][1].rstrip('.')}"]
    assert enabled(rig, guid), "alert leaves the connector alone"
    assert rig.set_calls() == []

    rig.knot.set_mx("contoso.com", FILTER_MX)
    assert rig.once().code == 0
    assert rig.status()["contoso"]["state"] == "enabled"
    assert history(rig) == [
        ("waiting", "enabled"),
        ("enabled", "regressed"),
        ("regressed", "enabled"),
    ]


def test_regression_with_disable_turns_the_connector_off(rig: Rig) -> None:
    guid = enabled_contoso(rig, on_regression="disable")
    rig.knot.set_mx("contoso.com", M365_MX)
    rig.once()
    run = rig.once()
    assert not enabled(rig, guid)
    assert [e["guid"] for e in run.named("connector_disabled")] == [guid]
    assert rig.status()["contoso"]["state"] == "waiting"
    assert history(rig)[-2:] == [("enabled", "regressed"), ("regressed", "waiting")]


def test_connector_turned_off_by_someone_is_not_re_enabled_in_the_same_cycle(
    rig: Rig, secret_env: SecretEnvRef
) -> None:
    guid = enabled_contoso(rig, recheck="1s", confirmations=1)

    async def turn_off() -> None:  # as an admin would, through the same admin API
        async with ExchangeClient(exchange_config(rig.sandbox)) as client:
            await client.set_connector_enabled(tenant_config(secret_env), guid, False)

    asyncio.run(turn_off())
    writes_before = len(rig.set_calls())
    time.sleep(1.1)  # past policy.recheck, so the connector is read again

    run = rig.once()
    assert not enabled(rig, guid)
    assert len(rig.set_calls()) == writes_before
    moved = [e for e in run.named("tenant_transition") if e["to"] == "waiting"]
    assert moved and "turned off outside mxwatch" in moved[0]["reason"]
    assert rig.status()["contoso"]["state"] == "waiting"


# --- the strict audit -----------------------------------------------------------------------

SENDER_IPS = '[providers.mailprotector]\nsender_ips = ["192.0.2.0/24", "198.51.96.0/21"]'
EIGHT_24S = [f"198.51.{n}.0/24" for n in range(96, 104)]


def test_connector_covering_the_published_ranges_with_24s_is_enabled(rig: Rig) -> None:
    rig.policy["confirmations"] = 1
    rig.extra.append(SENDER_IPS)
    guid = contoso(rig, SenderIPAddresses=["192.0.2.0/24", *EIGHT_24S], RequireTls=False)
    run = rig.once()
    assert enabled(rig, guid)
    assert [e["warning"] for e in run.named("audit_warning")] == ["RequireTls is false"]
    (info,) = run.named("audit_info")
    assert "EFSkipLastIP" in info["info"][0]


def test_connector_missing_one_24_of_a_published_21_is_blocked(rig: Rig) -> None:
    rig.policy["confirmations"] = 1
    rig.extra.append(SENDER_IPS)
    guid = contoso(rig, SenderIPAddresses=["192.0.2.0/24", *EIGHT_24S[:-1]])
    run = rig.once()
    assert not enabled(rig, guid)
    status = rig.status()["contoso"]
    assert status["state"] == "blocked"
    assert "198.51.96.0/21" in status["reason"]
    assert run.named("audit_failed")
