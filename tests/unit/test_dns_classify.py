"""The pure MX classification of one source's answer (DESIGN.md §3)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rrset
import pytest
from dns.message import Message
from dns.resolver import ErrorTuple

from mxwatch.dns import (
    MAX_NS_HOSTS,
    MAX_SERVER_ADDRESSES,
    AuthServer,
    DelegationError,
    _Alias,
    _authoritative_answer,
    _failure_reason,
    _TtlCache,
    zone_servers,
)
from mxwatch.model import MxRecord, Observation, Verdict
from mxwatch.providers import MAILPROTECTOR
from mxwatch.settings import Provider
from mxwatch.verdicts import classify, is_ip_literal, normalise_exchange

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
FILTER_1 = "mx1.inbound.emailservice.io."
FILTER_2 = "mx2.inbound.emailservice.cc."
MICROSOFT = "contoso-com.mail.protection.outlook.com."


def verdict_of(records: list[tuple[int, str]], provider: Provider = MAILPROTECTOR) -> Verdict:
    return classify("contoso.com", "test", records, provider, NOW).verdict


@pytest.mark.parametrize(
    ("records", "expected"),
    [
        ([(10, FILTER_1)], Verdict.FILTERED),
        ([(10, FILTER_1), (20, FILTER_2), (30, "mx3.inbound.emailservice.co.")], Verdict.FILTERED),
        # Preference does not matter: a backup MX elsewhere is still a way around the filter.
        ([(10, FILTER_1), (99, MICROSOFT)], Verdict.MIXED),
        ([(99, FILTER_1), (0, MICROSOFT)], Verdict.MIXED),
        ([(0, MICROSOFT)], Verdict.DIRECT),
        ([(10, "mx.example.net."), (20, MICROSOFT)], Verdict.DIRECT),
        ([], Verdict.NO_MX),
        ([(0, ".")], Verdict.NO_MX),
        ([(10, ".")], Verdict.NO_MX),
        ([(0, "."), (10, FILTER_1)], Verdict.MIXED),
        ([(10, "192.0.2.1")], Verdict.DIRECT),
        ([(10, FILTER_1), (20, "192.0.2.1.")], Verdict.MIXED),
        # The suffix must match at a label boundary. The bare apex is matched because
        # Mailprotector's profile names it exactly (a wildcard alone would not).
        ([(10, "evilinbound.emailservice.io.")], Verdict.DIRECT),
        ([(10, "inbound.emailservice.io.")], Verdict.FILTERED),
        ([(10, "mx1.inbound.emailservice.io.evil.example.")], Verdict.DIRECT),
    ],
)
def test_verdicts(records: list[tuple[int, str]], expected: Verdict) -> None:
    assert verdict_of(records) is expected


def test_exchanges_are_normalised_and_sorted() -> None:
    observation = classify(
        "contoso.com",
        "127.0.0.1:53",
        [(20, "MX2.Inbound.EmailService.CC."), (10, "mx1.INBOUND.emailservice.io")],
        MAILPROTECTOR,
        NOW,
        ttl=3600,
    )
    assert observation.verdict is Verdict.FILTERED
    assert observation.mx == (
        MxRecord(10, "mx1.inbound.emailservice.io"),
        MxRecord(20, "mx2.inbound.emailservice.cc"),
    )
    assert observation.ttl == 3600
    assert observation.domain == "contoso.com"
    assert observation.source == "127.0.0.1:53"
    assert observation.checked_at == NOW


def test_reasons_say_what_was_seen() -> None:
    def reason(records: list[tuple[int, str]]) -> str:
        return classify("contoso.com", "s", records, MAILPROTECTOR, NOW).reason

    assert reason([(10, FILTER_1), (20, FILTER_2)]) == "all 2 MX match mailprotector"
    assert reason([(0, MICROSOFT)]) == (
        "no MX matches mailprotector: contoso-com.mail.protection.outlook.com"
    )
    assert reason([(10, FILTER_1), (20, MICROSOFT)]) == (
        "1 of 2 MX match mailprotector; not matching: contoso-com.mail.protection.outlook.com"
    )
    assert reason([]) == "NODATA (no MX records)"
    assert reason([(0, ".")]) == "null MX (RFC 7505)"
    assert "192.0.2.1 is an IP address, not a host name" in reason([(10, "192.0.2.1")])
    assert "RFC 7505" in reason([(0, "."), (10, FILTER_1)])


def test_null_mx_keeps_its_record() -> None:
    observation = classify("contoso.com", "s", [(0, ".")], MAILPROTECTOR, NOW, ttl=60)
    assert observation.mx == (MxRecord(0, "."),)
    assert observation.ttl == 60


def test_exact_pattern_provider() -> None:
    spamtitan = Provider("spamtitan", ("cloud1.spamtitan.com", "cloud2.spamtitan.com"))
    assert verdict_of([(10, "Cloud1.SpamTitan.com."), (20, "cloud2.spamtitan.com")], spamtitan) is (
        Verdict.FILTERED
    )
    assert verdict_of([(10, "cloud7.spamtitan.com.")], spamtitan) is Verdict.DIRECT


def test_ip_literal_never_matches_even_an_exact_pattern() -> None:
    odd = Provider("odd", ("192.0.2.1",))
    assert verdict_of([(10, "192.0.2.1")], odd) is Verdict.DIRECT


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("MX1.Example.COM.", "mx1.example.com"),
        ("mx1.example.com", "mx1.example.com"),
        (".", "."),
        ("", "."),
    ],
)
def test_normalise_exchange(raw: str, normal: str) -> None:
    assert normalise_exchange(raw) == normal


@pytest.mark.parametrize(
    ("host", "literal"),
    [("192.0.2.1", True), ("2001:db8::1", True), ("mx1.example.com", False), ("1.2.3", False)],
)
def test_is_ip_literal(host: str, literal: bool) -> None:
    assert is_ip_literal(host) is literal


def test_failure_reasons_name_the_server_and_the_fault() -> None:
    errors: list[ErrorTuple] = [
        ("Do53:127.0.0.1@5353", False, 5353, "SERVFAIL", None),
        ("Do53:2001:db8::53@53", False, 53, "REFUSED", None),
        ("Do53:192.0.2.53@53", False, 53, ConnectionRefusedError("refused"), None),
        ("Do53:192.0.2.54@53", True, 53, dns.exception.FormError("bad label"), None),  # type: ignore[no-untyped-call]
    ]

    assert _failure_reason(errors) == (
        "SERVFAIL from 127.0.0.1:5353; REFUSED from [2001:db8::53]:53; "
        "network error with 192.0.2.53:53: refused; "
        "malformed answer from 192.0.2.54:53: FormError: bad label"
    )
    assert _failure_reason([]) == "no nameservers to ask"


# --- authoritative answers and the delegation cache -----------------------------------------

ZONE = dns.name.from_text("contoso.com")
SERVER = AuthServer(ZONE, ("ns1.contoso.com",), "192.0.2.53")


def auth_response(
    *answer: str, rcode: dns.rcode.Rcode = dns.rcode.NOERROR, aa: bool = True
) -> Message:
    query = dns.message.make_query("contoso.com", "MX")
    response = dns.message.make_response(query)
    response.set_rcode(rcode)
    if aa:
        response.flags |= dns.flags.AA
    for line in answer:  # "owner ttl TYPE rdata"
        owner, ttl, rdtype, rdata = line.split(maxsplit=3)
        response.answer.append(dns.rrset.from_text(owner, int(ttl), "IN", rdtype, rdata))
    return response


def judge(response: Message) -> Observation | object:
    name = dns.name.from_text("contoso.com")
    return _authoritative_answer("contoso.com", SERVER, name, response, MAILPROTECTOR, NOW)


def test_authoritative_mx_answer_is_classified_with_its_ttl() -> None:
    result = judge(auth_response(f"contoso.com. 7200 MX 10 {FILTER_1}"))
    assert isinstance(result, Observation)
    assert (result.source, result.verdict, result.ttl) == (
        "auth:ns1.contoso.com@192.0.2.53",
        Verdict.FILTERED,
        7200,
    )


def test_authoritative_answer_needs_aa_and_noerror() -> None:
    lame = judge(auth_response(f"contoso.com. 300 MX 10 {FILTER_1}", aa=False))
    refused = judge(auth_response(rcode=dns.rcode.REFUSED, aa=False))
    assert isinstance(lame, Observation) and isinstance(refused, Observation)
    assert lame.verdict is refused.verdict is Verdict.UNKNOWN
    assert "without the AA flag" in lame.reason
    assert refused.reason == "REFUSED from ns1.contoso.com"


def test_cname_out_of_the_zone_is_followed_elsewhere() -> None:
    result = judge(auth_response("contoso.com. 300 CNAME mail.example.net."))
    assert result == _Alias(dns.name.from_text("mail.example.net"))


@pytest.mark.parametrize(
    ("answer", "rcode"),
    [
        # A forged MX for the target, or the target declared nonexistent, by a server that
        # is not the target zone's: neither is taken, the target's own servers are asked.
        (
            ("contoso.com. 300 CNAME mail.example.net.", f"mail.example.net. 300 MX 10 {FILTER_1}"),
            dns.rcode.NOERROR,
        ),
        (("contoso.com. 300 CNAME mail.example.net.",), dns.rcode.NXDOMAIN),
        # In the zone first, then out: the exit is the first name outside the zone.
        (
            (
                "contoso.com. 300 CNAME mail.contoso.com.",
                "mail.contoso.com. 300 CNAME mail.example.net.",
                "mail.example.net. 300 CNAME other.example.net.",
                f"other.example.net. 300 MX 10 {FILTER_1}",
            ),
            dns.rcode.NOERROR,
        ),
    ],
)
def test_a_cname_chain_leaving_the_zone_ends_the_servers_say(
    answer: tuple[str, ...], rcode: dns.rcode.Rcode
) -> None:
    assert judge(auth_response(*answer, rcode=rcode)) == _Alias(
        dns.name.from_text("mail.example.net")
    )


def test_a_cname_chain_within_the_zone_is_the_servers_to_give() -> None:
    result = judge(
        auth_response(
            "contoso.com. 300 CNAME mail.contoso.com.",
            f"mail.contoso.com. 600 MX 10 {FILTER_1}",
        )
    )
    assert isinstance(result, Observation)
    assert (result.verdict, result.ttl) == (Verdict.FILTERED, 600)
    assert result.reason.endswith("(via CNAME to mail.contoso.com)")


def test_nxdomain_is_no_mx() -> None:
    result = judge(auth_response(rcode=dns.rcode.NXDOMAIN))
    assert isinstance(result, Observation)
    assert (result.verdict, result.reason) == (Verdict.NO_MX, "NXDOMAIN")


async def test_cache_shares_one_load_and_honours_the_ttl() -> None:
    cache: _TtlCache[str, int] = _TtlCache()
    loads = 0

    async def load() -> tuple[int, int]:
        nonlocal loads
        loads += 1
        await asyncio.sleep(0)
        return loads, 60

    together = await asyncio.gather(*(cache.get("k", NOW, load) for _ in range(5)))
    within = await cache.get("k", NOW + timedelta(seconds=59), load)
    after = await cache.get("k", NOW + timedelta(seconds=60), load)

    assert together == [1] * 5
    assert (within, after, loads) == (1, 2, 2)


async def test_cache_does_not_keep_failures() -> None:
    cache: _TtlCache[str, int] = _TtlCache()

    async def fail() -> tuple[int, int]:
        raise DelegationError("SOA lookup failed")

    async def succeed() -> tuple[int, int]:
        return 7, 60

    with pytest.raises(DelegationError):
        await cache.get("k", NOW, fail)
    assert await cache.get("k", NOW, succeed) == 7


async def test_cache_cancels_a_load_once_every_caller_gave_up() -> None:
    cache: _TtlCache[str, int] = _TtlCache()
    started = asyncio.Event()
    load_cancelled = asyncio.Event()

    async def never() -> tuple[int, int]:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            load_cancelled.set()
            raise
        raise AssertionError("unreachable")

    async def quick() -> tuple[int, int]:
        return 7, 60

    first = asyncio.ensure_future(cache.get("k", NOW, never))
    second = asyncio.ensure_future(cache.get("k", NOW, never))
    await started.wait()
    first.cancel()
    await asyncio.sleep(0)
    assert not load_cancelled.is_set()  # the second caller still waits for it
    second.cancel()
    await asyncio.wait_for(load_cancelled.wait(), timeout=5)
    assert await cache.get("k", NOW, quick) == 7  # a fresh load, not the cancelled one


# --- the servers asked for one zone ---------------------------------------------------------


def test_name_servers_sharing_an_address_are_one_source() -> None:
    found = {
        "ns1.contoso.com": ("192.0.2.1",),
        "ns2.contoso.com": ("192.0.2.1", "192.0.2.10"),
        "ns3.contoso.com": ("192.0.2.1",),
        "ns4.contoso.com": "name server ns4.contoso.com does not exist (NXDOMAIN)",
    }

    servers = zone_servers(ZONE, sorted(found), found)

    assert servers.left_out == ()
    assert [s.label for s in servers.servers] == [
        "auth:ns1.contoso.com+2@192.0.2.1",
        "auth:ns2.contoso.com@192.0.2.10",
        "auth:ns4.contoso.com",
    ]
    shared = servers.servers[0]
    assert shared.hosts == ("ns1.contoso.com", "ns2.contoso.com", "ns3.contoso.com")
    assert shared.host == "ns1.contoso.com (and 2 other NS names at 192.0.2.1)"
    assert servers.servers[2].problem.endswith("(NXDOMAIN)")


def test_name_servers_beyond_the_bounds_are_named() -> None:
    hosts = [f"ns{i:02d}.contoso.com" for i in range(40)]
    # The hosts looked up (the first 16) have 3 addresses each, 48 in all.
    found: dict[str, tuple[str, ...] | str] = {
        host: tuple(f"198.51.100.{3 * i + k}" for k in range(3))
        for i, host in enumerate(hosts[:MAX_NS_HOSTS])
    }

    servers = zone_servers(ZONE, hosts, found)

    assert servers.left_out == (
        f"contoso.com has 40 name servers; mxwatch asks at most {MAX_NS_HOSTS} per zone, "
        f"so {40 - MAX_NS_HOSTS} were not asked",
        f"the name servers of contoso.com have 48 addresses; mxwatch asks at most "
        f"{MAX_SERVER_ADDRESSES} per zone, so {48 - MAX_SERVER_ADDRESSES} were not asked",
    )
    assert len(servers.servers) == MAX_SERVER_ADDRESSES
    # Numeric order, so the choice is stable: 198.51.100.0 to .15, not .0, .1, .10, .11 ...
    assert servers.servers[-1].address == "198.51.100.15"
