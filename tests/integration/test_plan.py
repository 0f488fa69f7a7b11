"""`mxwatch plan`: a live, read-only cycle through the real CLI, against Knot and the sandbox."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from tests.fixtures.rig import M365_MX, Rig, Run, Tenant, contoso, enabled


def plan(rig: Rig, *args: str) -> tuple[Run, dict[str, Any]]:
    run = rig.mxwatch("plan", "--json", *args)
    document = json.loads(run.stdout) if run.stdout.strip() else {}
    return run, {t["name"]: t for t in document.get("tenants", [])}


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_plan_before_the_first_once_reads_and_writes_nothing(rig: Rig) -> None:
    guid = contoso(rig)

    run, tenants = plan(rig)

    assert run.code == 0, run.stderr
    contoso_plan = tenants["contoso"]
    assert (contoso_plan["state"], contoso_plan["next_state"]) == ("waiting", "settling")
    assert "contoso.com filtered on 1 of 2 observations" in contoso_plan["waiting_for"]
    assert contoso_plan["audit"]["passed"] is True
    assert contoso_plan["actions"] == []
    assert not (rig.tmp / "state.db").exists()  # no state created
    cmdlets = {r.cmdlet for r in rig.sandbox.requests_to("api")}
    assert cmdlets == {"Get-InboundConnector", "Get-AcceptedDomain"}
    assert not enabled(rig, guid)


def test_plan_says_what_the_next_cycle_would_do_and_leaves_the_state_alone(rig: Rig) -> None:
    guid = contoso(rig)
    assert rig.once().code == 0  # settling, one observation of two
    state = rig.tmp / "state.db"
    before = digest(state)

    run = rig.mxwatch("plan")

    assert run.code == 0, run.stderr
    assert f"contoso: settling -> settling  would enable connector {guid}" in run.stdout
    assert "audit: passed" in run.stdout
    assert rig.set_calls() == [] and not enabled(rig, guid)
    assert digest(state) == before
    assert rig.once().code == 0 and enabled(rig, guid)  # and the cycle does just that


def test_plan_names_what_holds_each_tenant_and_exits_as_once(rig: Rig) -> None:
    contoso(rig)
    rig.knot.add_zone("fabrikam.com", mx=M365_MX)
    rig.tenants.append(Tenant("fabrikam", "44444444-4444-4444-4444-444444444444", ["fabrikam.com"]))
    rig.sandbox.add_tenant("44444444-4444-4444-4444-444444444444")  # no app: credentials fail

    run, tenants = plan(rig)

    assert run.code == 1, run.stdout
    assert tenants["fabrikam"]["next_state"] == "blocked"
    assert tenants["fabrikam"]["errors"] == 1
    assert tenants["contoso"]["next_state"] == "settling"
    assert '"event": "exchange_error"' in run.stderr  # logs go to stderr, the report to stdout
    only, chosen = plan(rig, "contoso")
    assert only.code == 0 and list(chosen) == ["contoso"]


def test_plan_refuses_an_unknown_tenant(rig: Rig) -> None:
    contoso(rig)
    run = rig.mxwatch("plan", "nobody")
    assert run.code == 2
    assert "no tenant named 'nobody'" in run.stderr and "contoso" in run.stderr
    assert rig.sandbox.requests_to("api") == []
