"""`mxwatch provision [TENANT...] [--apply]` end to end: the real CLI in a subprocess, the
sandbox over HTTPS, Knot DNS for the cycles around it (issue 10, item 4)."""

from __future__ import annotations

import json
from typing import Any

from mxwatch.store import Store
from tests.fixtures.rig import FILTER_MX, TENANT_B, Rig, Run, Tenant, enabled
from tests.fixtures.sandbox import CLIENT_ID, CONNECTOR, SECRET, TENANT_ID

# A published /23 and one address: Exchange takes the /23 only as two /24s.
SENDER_IPS = '[providers.mailprotector]\nsender_ips = ["209.222.80.0/23", "198.51.100.7/32"]'
SENT = ["209.222.80.0/24", "209.222.81.0/24", "198.51.100.7/32"]


def events(run: Run, name: str) -> list[dict[str, Any]]:
    """Log lines go to stderr (stdout carries the plan), one JSON object each."""
    lines = [json.loads(line) for line in run.stderr.splitlines() if line.startswith("{")]
    return [line for line in lines if line["event"] == name]


def history(rig: Rig, tenant: str) -> list[tuple[str, str, str]]:
    run = rig.mxwatch("history", tenant, "--json")
    assert run.code == 0, run.stderr
    entries = [json.loads(line) for line in run.stdout.splitlines()]
    return [(e["from"], e["to"], e["reason"]) for e in entries if e["domain"] is None]


def new_calls(rig: Rig) -> list[Any]:
    return [r for r in rig.sandbox.requests_to("api") if r.cmdlet == "New-InboundConnector"]


def tenant_without_connector(rig: Rig) -> None:
    rig.knot.add_zone("contoso.com", mx=FILTER_MX, ttl=60)
    rig.tenants.append(Tenant("contoso", TENANT_ID, ["contoso.com"]))
    rig.sandbox.set_accepted_domains(TENANT_ID, ["contoso.com", "contoso.onmicrosoft.com"])


def second_tenant(rig: Rig, **connector: Any) -> str:
    rig.sandbox.add_tenant(TENANT_B)
    rig.sandbox.register_app(TENANT_B, CLIENT_ID, secret=SECRET)
    rig.tenants.append(Tenant("fabrikam", TENANT_B, ["fabrikam.com"]))
    return rig.sandbox.add_connector(TENANT_B, CONNECTOR, **connector)


def test_from_zero_to_a_cutover(rig: Rig) -> None:
    """Plan, apply before any cycle, then the cycle enables the connector provision made."""
    tenant_without_connector(rig)
    rig.extra.append(SENDER_IPS)

    plan = rig.mxwatch("provision")
    assert plan.code == 0, plan.stderr
    found, create = plan.stdout.splitlines()[:2]
    assert found == f"contoso: connector {CONNECTOR!r} does not exist"
    assert create.startswith(
        f"  + create it: New-InboundConnector -Name {CONNECTOR!r} -ConnectorType 'Partner' "
        "-SenderDomains '*' -RequireTls $true -RestrictDomainsToIPAddresses $true "
        "-SenderIPAddresses '209.222.80.0/24','209.222.81.0/24','198.51.100.7/32' "
        "-Comment 'Created disabled by mxwatch "
    )
    assert create.endswith("' -Enabled $false")
    assert "nothing written; --apply makes them" in plan.stdout
    assert new_calls(rig) == []
    assert not (rig.tmp / "state.db").exists()  # a plan writes nothing, not even the state

    applied = rig.mxwatch("provision", "--apply")
    assert applied.code == 0, applied.stdout + applied.stderr
    assert "contoso: read back, passes the audit" in applied.stdout
    (call,) = new_calls(rig)
    assert call.parameters["Enabled"] is False
    (created,) = events(applied, "connector_created")
    guid = created["guid"]
    connector = rig.sandbox.connector(TENANT_ID, guid)
    assert connector["Enabled"] is False
    assert connector["SenderIPAddresses"] == SENT
    assert "mxwatch" in connector["Comment"]
    reason = f"connector {CONNECTOR!r} ({guid}) created by mxwatch provision (disabled)"
    assert history(rig, "contoso") == [("waiting", "waiting", reason)]

    again = rig.mxwatch("provision", "--apply")
    assert again.code == 0
    assert "passes the audit\n  nothing to do" in again.stdout
    assert len(new_calls(rig)) == 1  # audited, never duplicated

    assert rig.once().code == 0
    assert rig.once().code == 0
    assert enabled(rig, guid)
    assert [move[:2] for move in history(rig, "contoso")] == [
        ("waiting", "waiting"),
        ("waiting", "settling"),
        ("settling", "enabled"),
    ]


def test_a_blocked_tenant_keeps_its_chain_and_the_next_cycle_takes_the_connector(rig: Rig) -> None:
    tenant_without_connector(rig)
    rig.extra.append(SENDER_IPS)
    assert rig.once().code == 1  # no connector yet: blocked

    assert rig.mxwatch("provision", "--apply").code == 0
    assert rig.once().code == 0

    moves = [move[:2] for move in history(rig, "contoso")]
    # The domain was filtered on both cycles (settle 0s): the second one enables at once.
    assert moves == [
        ("waiting", "blocked"),
        ("blocked", "blocked"),
        ("blocked", "waiting"),
        ("waiting", "settling"),
        ("settling", "enabled"),
    ]


def test_without_sender_ips_nothing_is_created_and_the_key_is_named(rig: Rig) -> None:
    tenant_without_connector(rig)

    run = rig.mxwatch("provision", "--apply")

    assert run.code == 1
    assert "! cannot be provisioned: provider mailprotector has no sender_ips" in run.stdout
    assert "[providers.mailprotector] sender_ips" in run.stdout
    assert "in its console" in run.stdout
    assert new_calls(rig) == []
    assert history(rig, "contoso") == []


def test_ranges_are_added_to_a_disabled_connector_and_an_enabled_one_is_left_alone(
    rig: Rig,
) -> None:
    rig.extra.append(SENDER_IPS)
    rig.tenants.append(Tenant("contoso", TENANT_ID, ["contoso.com"]))
    kept = ["209.222.80.0/24", "203.0.113.9"]
    guid = rig.sandbox.add_connector(TENANT_ID, CONNECTOR, SenderIPAddresses=kept)
    enabled_guid = second_tenant(rig, Enabled=True, SenderIPAddresses=["203.0.113.9"])

    plan = rig.mxwatch("provision")
    assert plan.code == 1  # fabrikam needs a person
    assert "  + add 2 ranges to its SenderIPAddresses (keeping its 2): " in plan.stdout
    assert "never writes to an enabled connector" in plan.stdout

    run = rig.mxwatch("provision", "--apply")

    assert run.code == 1
    assert rig.sandbox.connector(TENANT_ID, guid)["SenderIPAddresses"] == [
        *kept,
        "209.222.81.0/24",
        "198.51.100.7/32",
    ]
    (updated,) = events(run, "connector_updated")
    assert (updated["guid"], updated["added"]) == (guid, ["209.222.81.0/24", "198.51.100.7/32"])
    assert "sender IPs 209.222.81.0/24, 198.51.100.7/32 added" in history(rig, "contoso")[0][2]
    assert rig.sandbox.connector(TENANT_B, enabled_guid)["SenderIPAddresses"] == ["203.0.113.9"]
    sets = [r for r in rig.sandbox.requests_to("api") if r.cmdlet == "Set-InboundConnector"]
    assert [r.tenant for r in sets] == [TENANT_ID]
    assert history(rig, "fabrikam") == []


def test_tenants_are_chosen_by_name_and_an_unknown_name_is_a_usage_error(rig: Rig) -> None:
    rig.extra.append(SENDER_IPS)
    tenant_without_connector(rig)
    second_tenant(rig, SenderIPAddresses=SENT)

    only = rig.mxwatch("provision", "fabrikam")
    assert only.code == 0, only.stdout
    assert only.stdout.startswith("fabrikam: ")
    assert "contoso" not in only.stdout
    assert {r.tenant for r in rig.sandbox.requests_to("api")} == {TENANT_B}

    unknown = rig.mxwatch("provision", "fabrikam", "nobody")
    assert unknown.code == 2
    assert "no tenant named 'nobody'" in unknown.stderr
    assert "(tenants: contoso, fabrikam)" in unknown.stderr


def test_apply_waits_for_the_state_a_cycle_holds(rig: Rig) -> None:
    tenant_without_connector(rig)
    rig.extra.append(SENDER_IPS)
    rig.write()
    with Store.open(rig.tmp / "state.db") as holder:
        holder.acquire(0, "a test cycle")
        run = rig.mxwatch("provision", "--apply", "--lock-wait", "0")
        holder.release()

    assert run.code == 1
    assert "(a test cycle)" in run.stderr
    assert new_calls(rig) == []
