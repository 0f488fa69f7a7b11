"""Lookups kept in the store between runs (issue 11, item 3), against real Knot DNS and a real
SQLite store: a steady run asks each source one MX query per domain and nothing else.

Each "run" is a new DnsObserver, as each `mxwatch --once` is a new process: it starts from
what the store kept (`recall`) and leaves what it learned (`learned`) for the next one.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

from mxwatch.dns import ALIAS_RECHECK_SECONDS, MAX_CACHE_SECONDS, DnsObserver
from mxwatch.model import DomainObservation, LookupKind, RememberedLookup, Verdict
from mxwatch.providers import MAILPROTECTOR
from mxwatch.store import Store
from tests.fixtures.knot import AuthLab

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
TTL = 3600  # of every record of the lab's zones: SOA, NS, A and MX
DOMAINS = 4


def serve_zones(lab: AuthLab, prefix: str) -> list[str]:
    """Each domain its own zone with its own two MX hosts, one of them an alias (a CNAME);
    each test its own zones, as the lab lives as long as the module."""
    zones = [f"{prefix}{i}.test" for i in range(DOMAINS)]
    for zone in zones:
        records = ["mxa A 192.0.2.25", "mxb CNAME mx1.inbound.emailservice.io."]
        lab.add_zone(zone, mx=[(10, "mxa"), (20, "mxb")], records=records, ttl=TTL)
    return zones


async def run(
    lab: AuthLab, state: Path, zones: list[str], now: datetime
) -> tuple[DnsObserver, list[DomainObservation]]:
    """One run: recall, observe every domain, remember."""
    observer = DnsObserver(lab.dns_config())
    with Store.open(state) as store:
        observer.recall(store.recall_lookups(now), now)
        results = await observer.observe_many([(z, MAILPROTECTOR) for z in zones], now)
        store.remember_lookups(observer.learned(), now)
    return observer, [results[zone] for zone in zones]


async def test_a_steady_run_asks_one_mx_query_per_domain_and_source(
    auth_lab: AuthLab, tmp_path: Path
) -> None:
    zones = serve_zones(auth_lab, "steady")
    state = tmp_path / "state.db"

    first, first_results = await run(auth_lab, state, zones, NOW)
    steady, steady_results = await run(auth_lab, state, zones, NOW + timedelta(minutes=10))

    # The first run found every zone's servers and asked whether each MX host is an alias.
    assert first.query_counts["ns"] == DOMAINS
    assert first.query_counts["cname"] == 2 * DOMAINS
    # The next run: one resolver source and two authoritative servers, one MX query each.
    assert steady.query_counts == {"mx": DOMAINS, "auth_mx": 2 * DOMAINS}
    # ... and it says what the first run said, the alias note included.
    assert [r.reason for r in steady_results] == [r.reason for r in first_results]
    assert {len(r.sources) for r in steady_results} == {3}
    assert all("is a CNAME to mx1.inbound.emailservice.io" in r.reason for r in steady_results)


async def test_expired_lookups_are_made_again_and_replaced(
    auth_lab: AuthLab, tmp_path: Path
) -> None:
    zones = serve_zones(auth_lab, "expiry")
    state = tmp_path / "state.db"
    await run(auth_lab, state, zones, NOW)

    later = NOW + timedelta(seconds=TTL + 1)  # the delegations expired, the alias checks not
    again, _ = await run(auth_lab, state, zones, later)

    assert Counter({k: again.query_counts[k] for k in ("ns", "a")}) == Counter(
        ns=DOMAINS, a=2 * DOMAINS
    )
    assert "cname" not in again.query_counts
    with Store.open_readonly(state) as store:
        kept = store.recall_lookups(later)
    # Expired rows were replaced, not added to: one row per zone and kind, two per server.
    kinds = Counter(lookup.kind for lookup in kept)
    assert kinds[LookupKind.NAMESERVERS] == DOMAINS
    assert kinds[LookupKind.ADDRESSES] == 2 * DOMAINS
    assert min(lookup.expires_at for lookup in kept if lookup.kind != LookupKind.ALIAS) > later


async def test_a_host_is_checked_for_an_alias_on_first_sight_and_after_a_day(
    auth_lab: AuthLab, tmp_path: Path
) -> None:
    zones = serve_zones(auth_lab, "alias")
    state = tmp_path / "state.db"
    await run(auth_lab, state, zones, NOW)
    auth_lab.set_mx(zones[0], [(10, "mxa"), (30, "mxc")], ttl=TTL)  # a new host appears

    changed, results = await run(auth_lab, state, zones, NOW + timedelta(minutes=10))
    a_day_on, _ = await run(
        auth_lab, state, zones, NOW + timedelta(seconds=ALIAS_RECHECK_SECONDS + 1)
    )

    assert changed.query_counts["cname"] == 1  # mxc, and only mxc
    assert results[0].verdict is not Verdict.UNKNOWN
    # After a day (the delegations too have expired by then) every host is checked again.
    assert a_day_on.query_counts["cname"] == 2 * DOMAINS


async def test_a_lookup_kept_too_long_or_malformed_is_ignored(
    auth_lab: AuthLab,
) -> None:
    """A clock set back, or a store edited by hand, cannot pin a delegation for longer than a
    day (a zone moved to new servers must be noticed), nor hand the observer a bad value."""
    zone = serve_zones(auth_lab, "clock")[0]
    far = NOW + timedelta(seconds=MAX_CACHE_SECONDS + 60)
    near = NOW + timedelta(seconds=60)
    observer = DnsObserver(auth_lab.dns_config())
    observer.recall(
        [
            RememberedLookup(LookupKind.ZONE, f"{zone}.", (f"{zone}.",), near),
            RememberedLookup(LookupKind.NAMESERVERS, f"{zone}.", ("ns9.elsewhere.test",), far),
            RememberedLookup(LookupKind.ADDRESSES, "gone.test", ("192.0.2.1",), NOW),
            RememberedLookup(LookupKind.ADDRESSES, f"ns1.{zone}", ("not-an-address",), near),
            RememberedLookup(LookupKind.ZONE, "odd.test.", (), near),
        ],
        NOW,
    )

    result = await observer.observe(zone, MAILPROTECTOR, NOW)

    assert "soa" not in observer.query_counts  # the zone cut was taken up
    assert observer.query_counts["ns"] == 1  # the far-off NS set was not
    assert observer.query_counts["a"] == 2  # nor a malformed address
    assert f"auth:ns1.{zone}@127.0.0.2" in {o.source for o in result.sources}
    assert not any("ns9.elsewhere.test" in o.source for o in result.sources)
    learned = {(lookup.kind, lookup.name) for lookup in observer.learned()}
    assert learned == {
        (LookupKind.NAMESERVERS, f"{zone}."),
        (LookupKind.ADDRESSES, f"ns1.{zone}"),
        (LookupKind.ADDRESSES, f"ns2.{zone}"),
        (LookupKind.ALIAS, f"mxa.{zone}"),
        (LookupKind.ALIAS, f"mxb.{zone}"),
    }
