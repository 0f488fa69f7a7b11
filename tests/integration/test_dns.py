"""dns.py against a real Knot DNS server (DESIGN.md §3, §8)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from mxwatch.dns import DnsObserver
from mxwatch.model import DomainObservation, MxRecord, Verdict
from mxwatch.providers import MAILPROTECTOR
from mxwatch.settings import DnsConfig, ResolverSpec
from tests.fixtures.bad_dns import BadDns
from tests.fixtures.knot import (  # noqa: F401 (fixtures)
    REFUSED_DOMAIN,
    KnotServer,
    knot_factory_fixture,
    knot_fixture,
    unreachable_resolver,
)

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
FILTER_IO = "mx1.inbound.emailservice.io."
FILTER_CC = "mx2.inbound.emailservice.cc."
FILTER_CO = "mx3.inbound.emailservice.co."
MICROSOFT = "contoso-com.mail.protection.outlook.com."


async def observe(knot: KnotServer, domain: str, *, timeout: float = 1.0) -> DomainObservation:
    return await DnsObserver(knot.dns_config(timeout=timeout)).observe(domain, MAILPROTECTOR, NOW)


async def test_single_filter_mx_is_filtered(knot: KnotServer) -> None:
    knot.add_zone("contoso.com", mx=[(10, FILTER_IO)], ttl=3600)

    result = await observe(knot, "contoso.com")

    assert result.verdict is Verdict.FILTERED
    assert result.mx == (MxRecord(10, "mx1.inbound.emailservice.io"),)
    assert result.ttl == 3600
    assert result.checked_at == NOW
    (source,) = result.sources
    assert source.source == f"127.0.0.1:{knot.port}"
    assert source.verdict is Verdict.FILTERED
    assert source.checked_at == NOW


async def test_several_filter_mx_any_preference_is_filtered(knot: KnotServer) -> None:
    knot.add_zone("contoso.com", mx=[(0, FILTER_CO), (10, FILTER_IO), (50, FILTER_CC)])

    result = await observe(knot, "contoso.com")

    assert result.verdict is Verdict.FILTERED
    assert [record.preference for record in result.mx] == [0, 10, 50]


async def test_microsoft_backup_mx_is_mixed(knot: KnotServer) -> None:
    knot.add_zone("contoso.com", mx=[(10, FILTER_IO), (20, MICROSOFT)])

    result = await observe(knot, "contoso.com")

    assert result.verdict is Verdict.MIXED
    assert "contoso-com.mail.protection.outlook.com" in result.reason


async def test_microsoft_only_is_direct(knot: KnotServer) -> None:
    knot.add_zone("contoso.com", mx=[(0, MICROSOFT)], ttl=3600)

    result = await observe(knot, "contoso.com")

    assert result.verdict is Verdict.DIRECT
    assert result.mx == (MxRecord(0, "contoso-com.mail.protection.outlook.com"),)
    assert result.ttl == 3600


async def test_ip_literal_exchange_does_not_match(knot: KnotServer) -> None:
    knot.add_zone("contoso.com", mx=[(10, FILTER_IO), (20, "192.0.2.25.")])

    result = await observe(knot, "contoso.com")

    assert result.verdict is Verdict.MIXED
    assert "192.0.2.25 is an IP address" in result.reason


async def test_nxdomain_is_no_mx_with_negative_ttl(knot: KnotServer) -> None:
    knot.add_zone("contoso.com", mx=[(10, FILTER_IO)], negative_ttl=120)

    result = await observe(knot, "missing.contoso.com")

    assert result.verdict is Verdict.NO_MX
    assert "NXDOMAIN" in result.reason
    assert result.mx == ()
    assert result.ttl == 120


async def test_nodata_is_no_mx(knot: KnotServer) -> None:
    knot.add_zone("contoso.com", records=["www A 192.0.2.80"], negative_ttl=90)

    result = await observe(knot, "www.contoso.com")

    assert result.verdict is Verdict.NO_MX
    assert "NODATA" in result.reason
    assert result.ttl == 90


async def test_null_mx_is_no_mx(knot: KnotServer) -> None:
    knot.add_zone("contoso.com", mx=[(0, ".")])

    result = await observe(knot, "contoso.com")

    assert result.verdict is Verdict.NO_MX
    assert "null MX (RFC 7505)" in result.reason
    assert result.mx == (MxRecord(0, "."),)


async def test_cname_to_filtered_mx_is_followed(knot: KnotServer) -> None:
    knot.add_zone("contoso.com", records=["mail CNAME target", f"target MX 10 {FILTER_IO}"])

    result = await observe(knot, "mail.contoso.com")

    assert result.verdict is Verdict.FILTERED


async def test_servfail_is_unknown_at_once(knot: KnotServer) -> None:
    knot.add_broken_zone("broken.test")

    # A long lifetime: SERVFAIL must not be retried until it runs out.
    result = await asyncio.wait_for(observe(knot, "broken.test", timeout=30.0), timeout=10.0)

    assert result.verdict is Verdict.UNKNOWN
    assert f"SERVFAIL from 127.0.0.1:{knot.port}" in result.reason
    assert result.mx == ()
    assert result.ttl is None


async def test_refused_is_unknown(knot: KnotServer) -> None:
    result = await asyncio.wait_for(observe(knot, REFUSED_DOMAIN, timeout=30.0), timeout=10.0)

    assert result.verdict is Verdict.UNKNOWN
    assert f"REFUSED from 127.0.0.1:{knot.port}" in result.reason


async def test_unreachable_server_is_unknown_after_the_timeout() -> None:
    config = DnsConfig(
        resolvers=(unreachable_resolver("dead"),),
        authoritative=False,
        timeout=timedelta(seconds=0.5),
    )

    result = await DnsObserver(config).observe("contoso.com", MAILPROTECTOR, NOW)

    assert result.verdict is Verdict.UNKNOWN
    assert result.sources[0].reason == "timeout after 0.5s"
    assert "dead: timeout after 0.5s" in result.reason


async def test_filtered_and_unknown_sources_combine_to_unknown(knot: KnotServer) -> None:
    knot.add_zone("contoso.com", mx=[(10, FILTER_IO)])
    config = DnsConfig(
        resolvers=(knot.resolver_spec("knot"), unreachable_resolver("dead")),
        authoritative=False,
        timeout=timedelta(seconds=0.5),
    )

    result = await DnsObserver(config).observe("contoso.com", MAILPROTECTOR, NOW)

    assert result.verdict is Verdict.UNKNOWN
    by_source = {o.source: o.verdict for o in result.sources}
    assert by_source == {"knot": Verdict.FILTERED, "dead": Verdict.UNKNOWN}


async def test_filtered_and_direct_sources_combine_to_direct(
    knot_factory: Callable[[], KnotServer],
) -> None:
    # Two servers that disagree, as two resolvers do while an old MX is still cached.
    new, old = knot_factory(), knot_factory()
    new.add_zone("contoso.com", mx=[(10, FILTER_IO)])
    old.add_zone("contoso.com", mx=[(0, MICROSOFT)], ttl=3600)
    config = DnsConfig(
        resolvers=(new.resolver_spec("new"), old.resolver_spec("old")),
        authoritative=False,
        timeout=timedelta(seconds=1),
    )

    result = await DnsObserver(config).observe("contoso.com", MAILPROTECTOR, NOW)

    assert result.verdict is Verdict.DIRECT
    assert result.mx == (MxRecord(0, "contoso-com.mail.protection.outlook.com"),)
    assert result.ttl == 3600
    assert {o.source: o.verdict for o in result.sources} == {
        "new": Verdict.FILTERED,
        "old": Verdict.DIRECT,
    }


async def test_mx_change_is_seen_on_the_next_observe(knot: KnotServer) -> None:
    knot.add_zone("contoso.com", mx=[(0, MICROSOFT)], ttl=3600)
    observer = DnsObserver(knot.dns_config())

    before = await observer.observe("contoso.com", MAILPROTECTOR, NOW)
    knot.set_mx("contoso.com", [(10, FILTER_IO), (20, FILTER_CC)], ttl=300)
    after = await observer.observe("contoso.com", MAILPROTECTOR, NOW)
    knot.set_mx("contoso.com", [])
    gone = await observer.observe("contoso.com", MAILPROTECTOR, NOW)

    assert (before.verdict, before.ttl) == (Verdict.DIRECT, 3600)
    assert (after.verdict, after.ttl) == (Verdict.FILTERED, 300)
    assert gone.verdict is Verdict.NO_MX


async def test_case_and_trailing_dots_are_normalised(knot: KnotServer) -> None:
    knot.add_zone("contoso.com", mx=[(10, "MX1.Inbound.EmailService.IO."), (20, "Backup")])

    result = await observe(knot, "contoso.com")

    assert result.verdict is Verdict.MIXED
    assert result.mx == (
        MxRecord(10, "mx1.inbound.emailservice.io"),
        MxRecord(20, "backup.contoso.com"),
    )


async def test_observe_many_returns_every_domain_within_the_bound(knot: KnotServer) -> None:
    count = 200
    records = []
    for i in range(count):
        exchange = FILTER_IO if i % 2 == 0 else MICROSOFT
        records.append(f"d{i} MX 10 {exchange}")
    knot.add_zone("many.test", records=records)
    config = DnsConfig(
        resolvers=(knot.resolver_spec("a"), knot.resolver_spec("b")),
        authoritative=False,
        timeout=timedelta(seconds=5),
    )
    observer = DnsObserver(config, concurrency=8)
    requests = [(f"d{i}.many.test", MAILPROTECTOR) for i in range(count)]

    results = await observer.observe_many(requests, NOW)

    assert set(results) == {domain for domain, _ in requests}
    for i in range(count):
        expected = Verdict.FILTERED if i % 2 == 0 else Verdict.DIRECT
        assert results[f"d{i}.many.test"].verdict is expected
        assert len(results[f"d{i}.many.test"].sources) == 2
    assert 1 < observer.peak_in_flight <= 8
    assert observer.in_flight == 0


async def test_observe_many_with_nothing_to_do(knot: KnotServer) -> None:
    assert await DnsObserver(knot.dns_config()).observe_many([], NOW) == {}


def test_one_observer_serves_several_event_loops(knot: KnotServer) -> None:
    # `--once` runs one loop; tests and a restarted scheduler may run more with one observer.
    knot.add_zone("contoso.com", mx=[(10, FILTER_IO)])
    observer = DnsObserver(knot.dns_config(), concurrency=1)
    requests = [("contoso.com", MAILPROTECTOR), ("missing.contoso.com", MAILPROTECTOR)]

    first = asyncio.run(observer.observe_many(requests, NOW))
    second = asyncio.run(observer.observe_many(requests, NOW))

    assert first == second
    assert first["contoso.com"].verdict is Verdict.FILTERED


async def test_concurrent_calls_share_the_slots_and_each_domain_its_budget(
    knot: KnotServer,
) -> None:
    # The cycle calls observe_many once per tenant, all at once, on one observer. Here 100
    # one-domain tenants queue behind one query slot and a resolver taking 40 ms an answer:
    # 4 s in all, past one domain's 3 s budget. Each domain's budget must start at its turn,
    # not when its tenant's call began.
    count = 100
    knot.add_zone("tenants.test", records=[f"d{i} MX 10 {FILTER_IO}" for i in range(count)])
    # Whether the exchange is an alias is then asked once and cached (NODATA), not per domain.
    knot.add_zone("inbound.emailservice.io", records=["mx1 A 192.0.2.25"])
    with BadDns(upstream=(knot.address, knot.port)) as slow:
        slow.delay = 0.04
        config = DnsConfig(
            resolvers=(ResolverSpec("slow", slow.address, slow.port),),
            authoritative=False,
            timeout=timedelta(seconds=1),
        )
        observer = DnsObserver(config, concurrency=1)
        calls = [
            observer.observe_many([(f"d{i}.tenants.test", MAILPROTECTOR)], NOW)
            for i in range(count)
        ]

        results = await asyncio.gather(*calls)

    verdicts = [result[f"d{i}.tenants.test"].verdict for i, result in enumerate(results)]
    assert verdicts == [Verdict.FILTERED] * count
    assert observer.peak_in_flight == 1
    assert observer.in_flight == 0
