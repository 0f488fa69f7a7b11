"""`mxwatch --once` end to end: the real CLI in a subprocess, Knot DNS, the sandbox over HTTPS."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from mxwatch.sandbox.exchange_api import ExchangeSandbox, Fault
from tests.fixtures.knot import REFUSED_DOMAIN, unreachable_resolver
from tests.fixtures.rig import (
    FILTER_MX,
    M365_MX,
    TENANT_B,
    Rig,
    Tenant,
    contoso,
    enabled,
)
from tests.fixtures.sandbox import (
    CLIENT_ID,
    CONNECTOR,
    SECRET,
    TENANT_ID,
    make_app_certificate,
)


def test_cut_over_tenant_is_enabled_after_confirmations_across_runs(rig: Rig) -> None:
    guid = contoso(rig, mx=M365_MX)

    first = rig.once()
    assert first.code == 0, first.stderr
    assert rig.status()["contoso"]["state"] == "waiting"

    rig.knot.set_mx("contoso.com", FILTER_MX)
    second = rig.once()
    assert second.code == 0
    assert rig.status()["contoso"]["state"] == "settling"
    assert not enabled(rig, guid)
    assert rig.set_calls() == []

    third = rig.once()
    assert third.code == 0, third.stderr
    assert enabled(rig, guid)
    assert [e["guid"] for e in third.named("connector_enabled")] == [guid]
    status = rig.status()["contoso"]
    assert status["state"] == "enabled"
    assert status["connector"] == {
        "identity": CONNECTOR,
        "guid": guid,
        "enabled": True,
        "checked_at": status["connector"]["checked_at"],
    }
    history = rig.mxwatch("history", "contoso", "--json")
    moves = [json.loads(line) for line in history.stdout.splitlines()]
    tenant_moves = [(m["from"], m["to"]) for m in moves if m["domain"] is None]
    assert tenant_moves == [("waiting", "settling"), ("settling", "enabled")]
    domain_moves = [(m["from"], m["to"]) for m in moves if m["domain"] == "contoso.com"]
    assert domain_moves == [(None, "direct"), ("direct", "filtered")]

    fourth = rig.once()
    assert fourth.code == 0
    assert len(rig.set_calls()) == 1, "a steady enabled tenant makes no further write"


def test_steady_cycle_makes_no_exchange_call(rig: Rig) -> None:
    contoso(rig, mx=M365_MX)
    rig.once()
    before = len(rig.sandbox.requests)
    for _ in range(2):
        assert rig.once().code == 0
    assert len(rig.sandbox.requests) == before


@pytest.mark.parametrize(
    ("label", "mx"),
    [
        ("mixed: filter plus Microsoft 365 backup", [*FILTER_MX, (30, M365_MX[0][1])]),
        ("direct: Microsoft 365", M365_MX),
    ],
)
def test_not_cut_over_is_never_enabled(rig: Rig, label: str, mx: list[tuple[int, str]]) -> None:
    guid = contoso(rig, mx=mx)
    for _ in range(3):
        assert rig.once().code == 0
    assert not enabled(rig, guid), label
    assert rig.set_calls() == []
    status = rig.status()["contoso"]
    assert status["state"] == "waiting"
    assert status["domains"][0]["verdict"] == label.split(":")[0]


def test_two_domain_tenant_with_one_domain_not_cut_over_is_not_enabled(rig: Rig) -> None:
    rig.knot.add_zone("contoso.com", mx=FILTER_MX)
    rig.knot.add_zone("contoso.net", mx=M365_MX)
    rig.tenants.append(Tenant("contoso", TENANT_ID, ["contoso.com", "contoso.net"]))
    guid = rig.sandbox.add_connector(TENANT_ID, CONNECTOR)
    for _ in range(3):
        rig.once()
    assert not enabled(rig, guid)
    verdicts = {d["domain"]: d["verdict"] for d in rig.status()["contoso"]["domains"]}
    assert verdicts == {"contoso.com": "filtered", "contoso.net": "direct"}


@pytest.mark.parametrize("fault", ["servfail", "refused", "unreachable"])
def test_unknown_dns_never_enables_and_other_tenants_proceed(rig: Rig, fault: str) -> None:
    rig.policy["confirmations"] = 1
    good = contoso(rig)
    rig.sandbox.add_tenant(TENANT_B)
    rig.sandbox.register_app(TENANT_B, CLIENT_ID, secret=SECRET)
    bad_guid = rig.sandbox.add_connector(TENANT_B, CONNECTOR)
    if fault == "servfail":
        rig.knot.add_broken_zone("fabrikam.com")
        bad_domain = "fabrikam.com"
    elif fault == "refused":
        bad_domain = REFUSED_DOMAIN
    else:
        bad_domain = "fabrikam.com"
        # Both resolvers are sources: a dead one makes every domain unknown, so the
        # healthy tenant is checked in the servfail/refused cases only.
        rig.resolvers = [f"127.0.0.1:{unreachable_resolver().port}"]
    rig.tenants.append(Tenant("fabrikam", TENANT_B, [bad_domain]))

    run = rig.once()
    assert not enabled(rig, bad_guid, TENANT_B)
    inconclusive = {e["domain"] for e in run.named("dns_inconclusive")}
    assert bad_domain in inconclusive
    status = rig.status()
    assert status["fabrikam"]["domains"][0]["verdict"] == "unknown"
    assert status["fabrikam"]["state"] == "waiting"
    if fault != "unreachable":
        assert enabled(rig, good)
        assert status["contoso"]["state"] == "enabled"
    else:
        assert not enabled(rig, good)


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        (lambda s: None, "connector missing: no inbound connector is named"),
        (lambda s: s.add_connector(TENANT_ID, "Some Other Connector"), "returned 1 other"),
        (
            lambda s: s.add_connector(TENANT_ID, CONNECTOR, RestrictDomainsToIPAddresses=False),
            "RestrictDomainsToIPAddresses",
        ),
        (
            lambda s: s.add_connector(TENANT_ID, CONNECTOR, SenderIPAddresses=[]),
            "SenderIPAddresses is empty",
        ),
    ],
    ids=["missing", "only-by-all-connectors", "not-restricted", "no-ips"],
)
def test_bad_or_missing_connector_blocks_with_reason(
    rig: Rig, setup: Callable[[ExchangeSandbox], object], expected: str
) -> None:
    rig.knot.add_zone("contoso.com", mx=FILTER_MX)
    rig.tenants.append(Tenant("contoso", TENANT_ID, ["contoso.com"]))
    setup(rig.sandbox)
    run = rig.once()
    assert run.code == 1
    status = rig.status()["contoso"]
    assert status["state"] == "blocked"
    assert expected in status["reason"]
    blocked = [e for e in run.named("tenant_transition") if e["to"] == "blocked"]
    assert blocked and expected in blocked[0]["reason"]
    assert rig.set_calls() == []


def test_already_enabled_connector_is_adopted_without_a_write(rig: Rig) -> None:
    contoso(rig, Enabled=True)
    run = rig.once()
    assert run.code == 0
    status = rig.status()["contoso"]
    assert status["state"] == "enabled"
    assert status["reason"].startswith("adopted")
    assert rig.set_calls() == []


def test_throttled_enable_is_retried_after_retry_after_and_ends_enabled(rig: Rig) -> None:
    rig.policy["confirmations"] = 1
    guid = contoso(rig)
    rig.sandbox.inject(Fault(status=429, retry_after="1", cmdlet="Set-InboundConnector"))
    run = rig.once()
    assert run.code == 0, run.stdout
    assert enabled(rig, guid)
    statuses = [r.status for r in rig.set_calls()]
    assert statuses == [429, 200]
    calls = rig.set_calls()
    assert calls[1].at - calls[0].at >= 1.0
    assert run.named("exchange_retry")


def test_forbidden_ends_blocked(rig: Rig) -> None:
    rig.policy["confirmations"] = 1
    guid = contoso(rig)
    rig.sandbox.inject(Fault.forbidden_nul(cmdlet="Set-InboundConnector"))
    run = rig.once()
    assert run.code == 1
    assert not enabled(rig, guid)
    status = rig.status()["contoso"]
    assert status["state"] == "blocked"
    assert "blocked" in status["reason"]
    errors = run.named("exchange_error")
    assert errors and errors[0]["kind"] == "blocked" and errors[0]["status"] == 403


def test_dry_run_makes_no_set_call(rig: Rig) -> None:
    rig.policy["confirmations"] = 1
    guid = contoso(rig)
    run = rig.once("--dry-run")
    assert run.code == 0
    assert [e["guid"] for e in run.named("would_enable")] == [guid]
    assert rig.set_calls() == []
    assert not enabled(rig, guid)
    assert rig.status()["contoso"]["state"] == "settling"


def test_bad_config_exits_2_and_lists_every_error(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(
        '[dns]\ntimeout = "soon"\nresolvers = ["999.1.1.1"]\n'
        "[policy]\nconfirmations = 0\nsurprise = 1\n"
        '[[tenant]]\nname = "x"\ntenant_id = "nope"\nconnector = "c"\ndomains = []\n'
    )
    done = subprocess.run(
        [sys.executable, "-m", "mxwatch", "-c", str(config), "--once"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2
    for path in (
        "dns.timeout",
        "dns.resolvers[0]",
        "policy.confirmations",
        "policy.surprise",
        "tenant[0].tenant_id",
        "tenant[0].domains",
    ):
        assert path in done.stderr, path


def test_logs_never_contain_the_secret_or_the_private_key(rig: Rig) -> None:
    """One run authenticates a tenant with a secret and another with a certificate."""
    rig.policy["confirmations"] = 1
    guid = contoso(rig)
    cert = make_app_certificate(rig.tmp)
    rig.sandbox.add_tenant(TENANT_B)
    rig.sandbox.register_app(TENANT_B, CLIENT_ID, certificate_pem=cert.certificate_pem)
    guid_b = rig.sandbox.add_connector(TENANT_B, CONNECTOR)
    rig.knot.add_zone("fabrikam.com", mx=FILTER_MX)
    rig.tenants.append(Tenant("fabrikam", TENANT_B, ["fabrikam.com"], certificate=cert.path))
    # A throttled call puts an error path into the output too.
    rig.sandbox.inject(Fault(status=429, retry_after="1", cmdlet="Set-InboundConnector"))

    run = rig.once("--log-level", "debug")

    assert enabled(rig, guid) and enabled(rig, guid_b, TENANT_B)
    assert {r.client_id for r in rig.sandbox.requests_to("token")} == {CLIENT_ID}
    output = run.stdout + run.stderr
    assert SECRET not in output
    for line in cert.private_key_pem.decode().splitlines()[1:-1]:
        assert line not in output
    assert "PRIVATE KEY" not in output
    assert "Bearer" not in output
