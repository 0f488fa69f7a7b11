"""Accepted domains in the policy: which domains count, and outside domains that would bounce."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mxwatch.model import TenantState, Verdict
from mxwatch.policy import Decision, DomainSets, Enable, decide, domain_sets
from mxwatch.providers import MAILPROTECTOR
from mxwatch.settings import SecretEnvRef, TenantConfig
from tests.unit.policy_builders import (
    PROVIDER,
    T0,
    TENANT,
    D,
    F,
    M,
    N,
    U,
    cfg,
    domains,
    drec,
    found,
    tenant,
)


def tenant_config(domains: tuple[str, ...] = (), ignore: tuple[str, ...] = ()) -> TenantConfig:
    return TenantConfig(
        name=TENANT,
        tenant_id="t",
        connector="c",
        provider=MAILPROTECTOR,
        domains=domains,
        client_id="c",
        credential=SecretEnvRef("UNUSED"),
        ignore_domains=ignore,
    )


ACCEPTED = ("contoso.com", "contoso.net", "contoso.onmicrosoft.com", "legacy.example")


@pytest.mark.parametrize(
    ("configured", "ignore", "expected"),
    [
        ((), (), DomainSets(("contoso.com", "contoso.net", "legacy.example"), ())),
        ((), ("legacy.example",), DomainSets(("contoso.com", "contoso.net"), ())),
        (("contoso.com",), (), DomainSets(("contoso.com",), ("contoso.net", "legacy.example"))),
        (("contoso.com",), ("legacy.example",), DomainSets(("contoso.com",), ("contoso.net",))),
        (("other.example",), (), DomainSets(("other.example",), ACCEPTED[:2] + ACCEPTED[3:])),
    ],
    ids=["omitted", "omitted-ignore", "given", "given-ignore", "given-not-accepted"],
)
def test_domain_sets(
    configured: tuple[str, ...], ignore: tuple[str, ...], expected: DomainSets
) -> None:
    assert domain_sets(tenant_config(configured, ignore), ACCEPTED) == expected


def test_onmicrosoft_domains_are_never_managed() -> None:
    sets = domain_sets(tenant_config(), ("contoso.onmicrosoft.com",))
    assert sets.observed == ()


def settling_decision(outside: Verdict | None) -> Decision:
    """A settling tenant whose enable is due, with one accepted domain outside its list."""
    return decide(
        TENANT,
        tenant(state=TenantState.SETTLING, confirmations=5),
        domains(F),
        found(),
        PROVIDER,
        cfg(confirmations=1, settle=timedelta(0)),
        T0,
        unmanaged=(drec("legacy.example", outside),),
    )


@pytest.mark.parametrize("outside", [D, M])
def test_outside_domain_receiving_direct_mail_blocks_and_is_named(outside: Verdict) -> None:
    decision = settling_decision(outside)
    assert decision.actions == ()
    assert decision.record.state is TenantState.BLOCKED
    assert "legacy.example" in decision.record.reason
    assert decision.audit is not None
    assert any("legacy.example" in f for f in decision.audit.failures)


@pytest.mark.parametrize("outside", [U, None])
def test_outside_domain_with_unknown_mx_holds_the_enable(outside: Verdict | None) -> None:
    decision = settling_decision(outside)
    assert decision.actions == ()
    assert decision.record.state is TenantState.SETTLING
    assert "legacy.example" in decision.waiting_for


@pytest.mark.parametrize("outside", [F, N])
def test_outside_domain_filtered_or_without_mx_allows_the_enable(outside: Verdict) -> None:
    assert settling_decision(outside).actions != ()


verdicts = st.sampled_from([F, D, M, N, U, None])


@settings(max_examples=300, deadline=None)
@given(
    managed=st.lists(st.sampled_from([F, U]), min_size=1, max_size=3),
    outside=st.lists(verdicts, min_size=1, max_size=3),
    on_m365=st.integers(min_value=0, max_value=2),
)
def test_an_accepted_domain_still_on_microsoft_365_never_allows_an_enable(
    managed: list[Verdict], outside: list[Verdict | None], on_m365: int
) -> None:
    outside[on_m365 % len(outside)] = D
    unmanaged = tuple(drec(f"outside{i}.example", v) for i, v in enumerate(outside))
    for state in (TenantState.WAITING, TenantState.SETTLING, TenantState.BLOCKED):
        decision = decide(
            TENANT,
            tenant(state=state, confirmations=9),
            domains(*managed),
            found(),
            PROVIDER,
            cfg(confirmations=1, settle=timedelta(0)),
            T0,
            unmanaged=unmanaged,
        )
        assert not any(isinstance(a, Enable) for a in decision.actions)
