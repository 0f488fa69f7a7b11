"""Resolver and authoritative sources combined, and what a lagging server means for a tenant.

Issue 3 property: "a lagging authoritative server never allows an enable". A secondary that
still serves the old MX sends some senders straight to Microsoft 365; enabling the connector
then would bounce their mail with 550 5.7.51.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mxwatch.model import (
    DomainObservation,
    DomainRecord,
    MxRecord,
    Observation,
    TenantRecord,
    TenantState,
    Verdict,
)
from mxwatch.policy import Enable, Rules, decide, update_domains
from mxwatch.verdicts import combine_observations
from tests.unit.policy_builders import (
    NOT_CUT_OVER,
    PROVIDER,
    T0,
    TENANT,
    accepted,
    cfg,
    obs,
    reads,
)

F, D, M, N, U = (Verdict.FILTERED, Verdict.DIRECT, Verdict.MIXED, Verdict.NO_MX, Verdict.UNKNOWN)
RESOLVER = "192.0.2.53"
PRIMARY = "auth:ns1.contoso.com@198.51.100.1"
SECONDARY = "auth:ns2.contoso.com@198.51.100.2"
DOMAINS = ("contoso.com", "contoso.net", "contoso.org")


def combine(*observations: Observation) -> DomainObservation:
    return combine_observations("contoso.com", observations, T0)


# --- combining resolver and authoritative sources ------------------------------------------


def test_all_sources_filtered_is_filtered_with_the_longest_ttl() -> None:
    result = combine(obs(F, source=RESOLVER, ttl=95), obs(F, source=PRIMARY, ttl=3600))

    assert result.verdict is F
    assert result.ttl == 3600  # the original TTL, not the resolver's counted-down one
    assert [o.source for o in result.sources] == [RESOLVER, PRIMARY]


@pytest.mark.parametrize("lag", NOT_CUT_OVER)
def test_a_lagging_secondary_outvotes_filtered_resolver_and_primary(lag: Verdict) -> None:
    result = combine(
        obs(F, source=RESOLVER), obs(F, source=PRIMARY), obs(lag, source=SECONDARY, ttl=7200)
    )

    assert result.verdict is lag
    assert result.reason.startswith(f"{SECONDARY}: ")
    assert result.ttl == 7200


def test_an_unanswered_authoritative_server_makes_filtered_unknown() -> None:
    result = combine(obs(F, source=RESOLVER), obs(F, source=PRIMARY), obs(U, source=SECONDARY))

    assert result.verdict is U
    assert result.reason == f"{SECONDARY}: unknown answer"
    assert result.mx == ()


def test_a_contradiction_wins_over_an_unanswered_server() -> None:
    result = combine(obs(U, source=RESOLVER), obs(M, source=PRIMARY), obs(U, source=SECONDARY))

    assert result.verdict is M


def test_the_worst_contradiction_is_reported() -> None:
    result = combine(obs(N, source=RESOLVER), obs(D, source=SECONDARY), obs(M, source=PRIMARY))

    assert result.verdict is D
    assert result.mx == (MxRecord(0, "contoso-com.mail.protection.outlook.com"),)


# --- the property --------------------------------------------------------------------------

PROPERTY_SETTINGS = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
any_verdict = st.sampled_from([F, F, F, D, M, N, U])


@dataclass(frozen=True)
class Cycle:
    """One cycle: per domain, the verdicts of its sources, and the time since the last cycle."""

    sources: tuple[tuple[Verdict, ...], ...]
    elapsed: timedelta


@st.composite
def cycles(draw: st.DrawFn, domains: int, lagging: bool) -> Cycle:
    sources = []
    for index in range(domains):
        resolvers = draw(st.lists(any_verdict, min_size=1, max_size=2))
        servers = draw(st.lists(any_verdict, min_size=0, max_size=3))
        if lagging and index == 0:
            # The lagging server still serves a not-cut-over MX, in every cycle.
            servers.insert(draw(st.integers(0, len(servers))), draw(st.sampled_from(NOT_CUT_OVER)))
        sources.append((*resolvers, *servers))
    minutes = draw(st.sampled_from([5, 30, 24 * 60]))
    return Cycle(tuple(sources), timedelta(minutes=minutes))


def observations(cycle: Cycle, now: datetime) -> dict[str, DomainObservation]:
    result = {}
    for name, verdicts in zip(DOMAINS, cycle.sources, strict=False):
        labels = [RESOLVER, "192.0.2.54"] + [f"auth:ns{i}.{name}@198.51.100.{i}" for i in range(9)]
        per_source = [
            replace(
                obs(v, source=label, domain=name, ttl=3600, authoritative="auth:" in label),
                checked_at=now,
            )
            for v, label in zip(verdicts, labels, strict=False)
        ]
        result[name] = combine_observations(name, per_source, now)
    return result


def starting_tenant(settled: bool) -> tuple[TenantRecord, dict[str, DomainRecord]]:
    """A fresh tenant, or one whose every domain was filtered for days and is about to enable."""
    if not settled:
        return TenantRecord(TENANT, connector_guid=None), {}
    record = TenantRecord(TENANT, state=TenantState.SETTLING, since=T0 - timedelta(days=3))
    old = T0 - timedelta(days=3)
    domains = {
        name: DomainRecord(
            name, F, (), 300, T0, old, filtered_count=10, filtered_at=T0, old_ttl=300
        )
        for name in DOMAINS
    }
    return record, domains


def run(cycle_list: Sequence[Cycle], settled: bool) -> list[Enable]:
    """Feed the cycles through update_domains and decide, reading the connector whenever the
    policy asks; return every Enable asked for."""
    record, stored = starting_tenant(settled)
    # A day of allowed gap: this property is about sources, not about gaps in observation.
    policy = Rules(cfg(confirmations=2, settle=timedelta(minutes=10)), timedelta(days=1))
    now, enables = T0, []
    for cycle in cycle_list:
        now += cycle.elapsed
        update = update_domains(TENANT, stored, observations(cycle, now), policy, now)
        stored = {d.domain: d for d in update.records}
        covered = [stored[name] for name in DOMAINS[: len(cycle.sources)]]
        decision = decide(TENANT, record, covered, provider=PROVIDER, rules=policy, now=now)
        if decision.needs_connector:
            read = reads(accepted_domains=accepted(*(d.domain for d in covered)))
            decision = decide(
                TENANT, record, covered, provider=PROVIDER, rules=policy, now=now, reads=read
            )
        enables += [a for a in decision.actions if isinstance(a, Enable)]
        record = decision.record
    return enables


@PROPERTY_SETTINGS
@given(
    st.integers(1, 3).flatmap(lambda n: st.lists(cycles(n, lagging=True), min_size=1, max_size=8)),
    st.booleans(),
)
def test_a_lagging_authoritative_server_never_allows_an_enable(
    cycle_list: list[Cycle], settled: bool
) -> None:
    assert run(cycle_list, settled) == []


def test_the_harness_enables_once_every_source_agrees() -> None:
    # Without this, the property above could hold only because the harness never enables.
    agreeing = Cycle(((F, F, F), (F, F)), timedelta(hours=1))

    assert run([agreeing] * 3, settled=False) != []
    assert run([agreeing], settled=True) != []
