"""dns.py asking authoritative servers directly, against real Knot DNS (issue 3, item 1).

The lab (tests/fixtures/knot.py `AuthLab`): a Knot standing in for the recursive resolver on
127.0.0.1, a primary on 127.0.0.2 and its real (XFR) secondary on 127.0.0.3, which lags because
it is never notified. Each test uses its own zones; each observer has its own caches.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from mxwatch.dns import DnsObserver
from mxwatch.model import DomainObservation, MxRecord, Verdict
from mxwatch.providers import MAILPROTECTOR
from tests.fixtures.knot import LAB_DOWN, LAB_PARENT, LAB_PRIMARY, LAB_SECONDARY, AuthLab

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
FILTER = "mx1.inbound.emailservice.io."
FILTER_2 = "mx2.inbound.emailservice.cc."
MICROSOFT = "contoso-com.mail.protection.outlook.com."


def by_source(result: DomainObservation) -> dict[str, Verdict]:
    return {o.source: o.verdict for o in result.sources}


async def observe(lab: AuthLab, domain: str, *, timeout: float = 1.0) -> DomainObservation:
    observer = DnsObserver(lab.dns_config(timeout=timeout))
    return await observer.observe(domain, MAILPROTECTOR, NOW)


async def test_every_server_filtered_is_filtered(auth_lab: AuthLab) -> None:
    auth_lab.add_zone("both.test", mx=[(10, FILTER), (20, FILTER_2)])

    result = await observe(auth_lab, "both.test")

    assert result.verdict is Verdict.FILTERED
    assert by_source(result) == {
        "resolver": Verdict.FILTERED,
        f"auth:ns1.both.test@{LAB_PRIMARY}": Verdict.FILTERED,
        f"auth:ns2.both.test@{LAB_SECONDARY}": Verdict.FILTERED,
    }


async def test_lagging_secondary_with_the_old_mx_is_direct(auth_lab: AuthLab) -> None:
    auth_lab.add_zone("lag.test", mx=[(0, MICROSOFT)], ttl=3600)
    auth_lab.set_mx("lag.test", [(10, FILTER)])  # the secondary is never told

    result = await observe(auth_lab, "lag.test")

    assert result.verdict is Verdict.DIRECT
    assert result.mx == (MxRecord(0, "contoso-com.mail.protection.outlook.com"),)
    assert result.reason.startswith(f"auth:ns2.lag.test@{LAB_SECONDARY}: no MX matches")
    assert result.ttl == 3600  # the old RRset's original TTL feeds settle = "auto"
    assert by_source(result)["resolver"] is Verdict.FILTERED
    assert by_source(result)[f"auth:ns1.lag.test@{LAB_PRIMARY}"] is Verdict.FILTERED


async def test_lagging_secondary_with_a_backup_mx_left_is_mixed(auth_lab: AuthLab) -> None:
    auth_lab.add_zone("lagmix.test", mx=[(10, FILTER), (20, MICROSOFT)])
    auth_lab.set_mx("lagmix.test", [(10, FILTER)])

    result = await observe(auth_lab, "lagmix.test")

    assert result.verdict is Verdict.MIXED
    assert by_source(result)[f"auth:ns2.lagmix.test@{LAB_SECONDARY}"] is Verdict.MIXED


async def test_one_server_down_is_unknown(auth_lab: AuthLab) -> None:
    auth_lab.add_zone("down.test", mx=[(10, FILTER)], down=True)

    result = await observe(auth_lab, "down.test", timeout=0.4)

    assert result.verdict is Verdict.UNKNOWN
    down = f"auth:ns4.down.test@{LAB_DOWN}"
    assert by_source(result)[down] is Verdict.UNKNOWN
    assert down in result.reason
    others = {source: v for source, v in by_source(result).items() if source != down}
    assert set(others.values()) == {Verdict.FILTERED}


async def test_a_server_down_does_not_hide_a_lagging_one(auth_lab: AuthLab) -> None:
    auth_lab.add_zone("downlag.test", mx=[(0, MICROSOFT)], down=True)
    auth_lab.set_mx("downlag.test", [(10, FILTER)])

    result = await observe(auth_lab, "downlag.test", timeout=0.4)

    assert result.verdict is Verdict.DIRECT


async def test_answer_without_aa_is_unknown(auth_lab: AuthLab) -> None:
    # ns3 serves only the parent zone: it answers with a referral, NOERROR but not AA.
    auth_lab.add_zone("lame.test", mx=[(10, FILTER)], lame=True)

    result = await observe(auth_lab, "lame.test")

    lame = f"auth:ns3.lame.test@{LAB_PARENT}"
    assert result.verdict is Verdict.UNKNOWN
    assert by_source(result)[lame] is Verdict.UNKNOWN
    reason = next(o.reason for o in result.sources if o.source == lame)
    assert reason == (
        "answer without the AA flag: ns3.lame.test is not authoritative for lame.test "
        "(lame delegation)"
    )


async def test_refused_by_a_listed_server_is_unknown(auth_lab: AuthLab) -> None:
    # Outside "test", the parent-zone server has no data at all and refuses.
    auth_lab.add_zone("refused.example", mx=[(10, FILTER)], lame=True)

    result = await observe(auth_lab, "refused.example")

    assert result.verdict is Verdict.UNKNOWN
    assert f"auth:ns3.refused.example@{LAB_PARENT}: REFUSED from ns3.refused.example" in (
        result.reason
    )


async def test_name_server_without_address_is_unknown(auth_lab: AuthLab) -> None:
    auth_lab.add_zone("noaddr.test", mx=[(10, FILTER)], records=["@ NS ns9.noaddr.test."])

    result = await observe(auth_lab, "noaddr.test")

    assert result.verdict is Verdict.UNKNOWN
    assert "auth:ns9.noaddr.test: cannot ask ns9.noaddr.test: name server" in result.reason
    assert "does not exist (NXDOMAIN)" in result.reason


async def test_zone_not_found_is_unknown_with_the_reason(auth_lab: AuthLab) -> None:
    result = await observe(auth_lab, "nowhere.invalid")

    assert result.verdict is Verdict.UNKNOWN
    (auth,) = [o for o in result.sources if o.source == "auth"]
    assert auth.reason.startswith("authoritative servers of nowhere.invalid not found: SOA")
    assert "REFUSED" in auth.reason


async def test_ttl_is_the_authoritative_original(auth_lab: AuthLab) -> None:
    # The resolver shows a TTL counted down in its cache; the servers show the original.
    auth_lab.add_zone("ttl.test", mx=[(0, MICROSOFT)], ttl=7200, resolver_ttl=95)

    result = await observe(auth_lab, "ttl.test")

    assert result.verdict is Verdict.DIRECT
    assert result.ttl == 7200
    ttls = {o.source: o.ttl for o in result.sources}
    assert ttls.pop("resolver") == 95
    assert set(ttls.values()) == {7200}


async def test_delegation_is_cached_for_its_ttl(auth_lab: AuthLab) -> None:
    records = [f"d{i} MX 10 {FILTER}" for i in range(3)]
    auth_lab.add_zone("cache.test", records=records, ttl=600)
    observer = DnsObserver(auth_lab.dns_config())

    first = await observer.observe("d0.cache.test", MAILPROTECTOR, NOW)
    after_first = dict(observer.query_counts)
    await observer.observe("d1.cache.test", MAILPROTECTOR, NOW)
    after_second = dict(observer.query_counts)
    await observer.observe("d1.cache.test", MAILPROTECTOR, NOW + timedelta(seconds=59))
    after_repeat = dict(observer.query_counts)
    await observer.observe("d1.cache.test", MAILPROTECTOR, NOW + timedelta(seconds=601))
    after_expiry = dict(observer.query_counts)

    assert first.verdict is Verdict.FILTERED
    assert (after_first["ns"], after_first["a"]) == (1, 2)
    # Another domain of the zone: only its own zone cut (one SOA lookup) is new.
    assert (after_second["ns"], after_second["a"]) == (1, 2)
    assert after_second["soa"] == after_first["soa"] + 1
    # The same domain within the TTLs (its zone cut came from a NODATA SOA answer, so the
    # SOA MINIMUM of 60 s is the shortest): nothing but the MX queries.
    assert {k: after_repeat[k] for k in ("soa", "ns", "a")} == {
        k: after_second[k] for k in ("soa", "ns", "a")
    }
    assert after_repeat["auth_mx"] == after_second["auth_mx"] + 2
    # Past the TTLs everything is looked up again.
    assert (after_expiry["ns"], after_expiry["a"]) == (2, 4)


async def test_concurrent_domains_of_one_zone_share_one_delegation_lookup(
    auth_lab: AuthLab,
) -> None:
    count = 20
    auth_lab.add_zone("many.test", records=[f"d{i} MX 10 {FILTER}" for i in range(count)])
    observer = DnsObserver(auth_lab.dns_config())

    results = await observer.observe_many(
        [(f"d{i}.many.test", MAILPROTECTOR) for i in range(count)], NOW
    )

    assert {r.verdict for r in results.values()} == {Verdict.FILTERED}
    assert observer.query_counts["ns"] == 1
    assert observer.query_counts["a"] == 2
    assert observer.query_counts["auth_mx"] == 2 * count


async def test_authoritative_off_asks_only_the_resolvers(auth_lab: AuthLab) -> None:
    auth_lab.add_zone("off.test", mx=[(0, MICROSOFT)])
    auth_lab.set_mx("off.test", [(10, FILTER)])
    observer = DnsObserver(auth_lab.dns_config(authoritative=False))

    result = await observer.observe("off.test", MAILPROTECTOR, NOW)

    assert result.verdict is Verdict.FILTERED  # the lagging secondary is not asked
    assert list(by_source(result)) == ["resolver"]
    assert "auth_mx" not in observer.query_counts


async def test_only_the_servers_asked_directly_are_authoritative(auth_lab: AuthLab) -> None:
    # The resolver's TTL is what is left in its cache; the servers' is the record's own.
    auth_lab.add_zone("flag.test", mx=[(0, MICROSOFT)], ttl=7200, resolver_ttl=95, down=True)

    result = await observe(auth_lab, "flag.test", timeout=0.4)

    assert {o.source: (o.authoritative, o.ttl) for o in result.sources} == {
        "resolver": (False, 95),
        f"auth:ns1.flag.test@{LAB_PRIMARY}": (True, 7200),
        f"auth:ns2.flag.test@{LAB_SECONDARY}": (True, 7200),
        f"auth:ns4.flag.test@{LAB_DOWN}": (True, None),  # asked, never answered
    }
