"""Bad and odd MX data from a real Knot DNS (issue 3, item 6).

Each case runs in resolver mode (the lab's resolver only) and, where the servers' answers
differ from a resolver's, in authoritative mode too (resolver plus both name servers).
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from mxwatch.dns import DnsObserver
from mxwatch.model import DomainObservation, MxRecord, Observation, Verdict
from mxwatch.names import normalise_name
from mxwatch.providers import MAILPROTECTOR
from mxwatch.verdicts import combine_observations
from tests.fixtures.bad_dns import BadDns
from tests.fixtures.knot import AuthLab

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
FILTER = "mx1.inbound.emailservice.io."
FILTER_2 = "mx2.inbound.emailservice.cc."
MICROSOFT = "contoso-com.mail.protection.outlook.com."
FORGER = "127.0.0.6"  # a misbehaving server of its own, at the lab's port


@pytest.fixture(params=["resolver", "authoritative"])
def mode(request: pytest.FixtureRequest) -> str:
    value: str = request.param
    return value


def auth_sources(result: DomainObservation) -> list[Observation]:
    return [o for o in result.sources if o.source.startswith("auth:")]


async def observe(lab: AuthLab, mode: str, domain: str) -> tuple[DomainObservation, DnsObserver]:
    observer = DnsObserver(lab.dns_config(authoritative=mode == "authoritative"))
    result = await observer.observe(domain, MAILPROTECTOR, NOW)
    expected_sources = 3 if mode == "authoritative" else 1
    assert len(result.sources) == expected_sources, result.sources
    return result, observer


async def test_cname_at_the_domain_is_followed_in_zone(auth_lab: AuthLab, mode: str) -> None:
    auth_lab.add_zone("cname.test", records=["mail CNAME target", f"target MX 10 {FILTER}"])

    result, _ = await observe(auth_lab, mode, "mail.cname.test")

    assert result.verdict is Verdict.FILTERED
    assert result.mx == (MxRecord(10, "mx1.inbound.emailservice.io"),)
    assert {o.reason for o in result.sources} == {
        "all 1 MX match mailprotector (via CNAME to target.cname.test)"
    }


async def test_cname_to_another_zone_asks_the_target_zones_servers(auth_lab: AuthLab) -> None:
    # The servers of alias.test answer with the CNAME alone; the target's servers are asked.
    auth_lab.add_zone("alias.test", records=["mail CNAME mail.target.test."])
    auth_lab.add_zone("target.test", records=[f"mail MX 10 {FILTER}"])
    auth_lab.set_mx("mail.target.test", [(10, FILTER), (20, FILTER_2)])  # secondary lags

    result, _ = await observe(auth_lab, "authoritative", "mail.alias.test")

    # Knot, standing in for the resolver, does not chase a CNAME out of its zone as a real
    # recursive resolver would, so only the authoritative sources are judged here.
    by_source = {o.source: o for o in auth_sources(result)}
    assert set(by_source) == {
        "auth:ns1.target.test@127.0.0.2",
        "auth:ns2.target.test@127.0.0.3",
    }
    assert all(
        o.reason.endswith("(via CNAME mail.alias.test to mail.target.test)")
        for o in by_source.values()
    )
    assert by_source["auth:ns1.target.test@127.0.0.2"].mx == (
        MxRecord(10, "mx1.inbound.emailservice.io"),
        MxRecord(20, "mx2.inbound.emailservice.cc"),
    )
    combined = combine_observations("mail.alias.test", list(by_source.values()), NOW)
    assert combined.verdict is Verdict.FILTERED


async def test_records_of_another_zone_are_taken_only_from_its_own_servers(
    auth_lab: AuthLab,
) -> None:
    # forger.test's server answers for mail.realtarget.test too: with the AA flag, a forged
    # filter MX after the CNAME. Only realtarget.test's own servers may say what its MX is.
    auth_lab.add_zone("realtarget.test", records=[f"mail MX 0 {MICROSOFT}"])
    alias = ["mail CNAME mail.realtarget.test."]
    auth_lab.add_delegated_zone("forger.test", [("ns1", FORGER)], records=alias)

    with BadDns(mode="forge", address=FORGER, port=auth_lab.port) as forger:
        forger.forged = (
            "mail.forger.test. 300 CNAME mail.realtarget.test.",
            f"mail.realtarget.test. 300 MX 10 {FILTER}",
        )
        result, _ = await observe(auth_lab, "authoritative", "mail.forger.test")
        asked = forger.count("forge")

    assert asked >= 1
    by_source = {o.source: o for o in auth_sources(result)}
    assert set(by_source) == {
        "auth:ns1.realtarget.test@127.0.0.2",
        "auth:ns2.realtarget.test@127.0.0.3",
    }
    assert {o.mx for o in by_source.values()} == {
        (MxRecord(0, "contoso-com.mail.protection.outlook.com"),)
    }
    assert all(o.authoritative for o in by_source.values())
    assert result.verdict is Verdict.DIRECT
    assert all(MxRecord(10, FILTER.rstrip(".")) not in o.mx for o in result.sources)


async def test_exchange_that_is_a_cname_is_classified_as_written(
    auth_lab: AuthLab, mode: str
) -> None:
    auth_lab.add_zone("mxalias.test", mx=[(10, "mail")], records=[f"mail CNAME {FILTER}"])

    result, observer = await observe(auth_lab, mode, "mxalias.test")

    assert result.verdict is Verdict.DIRECT
    assert result.mx == (MxRecord(10, "mail.mxalias.test"),)
    assert (
        "mail.mxalias.test is a CNAME to mx1.inbound.emailservice.io, which RFC 2181 §10.3 "
        "forbids for an MX exchange; classified by the name as written"
    ) in result.reason
    assert observer.query_counts["cname"] == 1  # once per exchange, not per source


async def test_duplicate_records_and_preference_zero(auth_lab: AuthLab, mode: str) -> None:
    auth_lab.add_zone(
        "dup.test",
        mx=[(0, FILTER), (0, FILTER), (0, FILTER.upper()), (10, FILTER), (0, FILTER_2)],
    )

    result, _ = await observe(auth_lab, mode, "dup.test")

    assert result.verdict is Verdict.FILTERED
    assert result.mx == (
        MxRecord(0, "mx1.inbound.emailservice.io"),
        MxRecord(0, "mx2.inbound.emailservice.cc"),
        MxRecord(10, "mx1.inbound.emailservice.io"),
    )


async def test_preference_zero_microsoft_next_to_the_filter_is_mixed(
    auth_lab: AuthLab, mode: str
) -> None:
    auth_lab.add_zone("pref0.test", mx=[(0, MICROSOFT), (0, FILTER)])

    result, _ = await observe(auth_lab, mode, "pref0.test")

    assert result.verdict is Verdict.MIXED


async def test_null_mx_is_no_mx(auth_lab: AuthLab, mode: str) -> None:
    auth_lab.add_zone("nullmx.test", mx=[(0, ".")])

    result, _ = await observe(auth_lab, mode, "nullmx.test")

    assert result.verdict is Verdict.NO_MX
    assert result.mx == (MxRecord(0, "."),)
    assert {o.reason for o in result.sources} == {"null MX (RFC 7505)"}


async def test_uppercase_and_trailing_dots_are_normalised(auth_lab: AuthLab, mode: str) -> None:
    auth_lab.add_zone("upper.test", mx=[(10, "MX1.Inbound.EmailService.IO."), (20, "MX2")])

    result, _ = await observe(auth_lab, mode, "UPPER.Test.")

    assert result.verdict is Verdict.MIXED
    assert result.mx == (
        MxRecord(10, "mx1.inbound.emailservice.io"),
        MxRecord(20, "mx2.upper.test"),
    )
    assert result.domain == "UPPER.Test."  # results stay keyed by the name the caller gave


async def test_idn_in_utf8_and_punycode_give_the_same_result(auth_lab: AuthLab, mode: str) -> None:
    auth_lab.add_zone("xn--bcher-kva.test", mx=[(10, FILTER)])
    # The config normalises both spellings to one; the observer accepts either as well.
    assert normalise_name("Bücher.test") == normalise_name("xn--bcher-kva.test.")

    utf8, _ = await observe(auth_lab, mode, "bücher.test")
    puny, _ = await observe(auth_lab, mode, "xn--bcher-kva.test")

    assert utf8.verdict is puny.verdict is Verdict.FILTERED
    assert (utf8.mx, utf8.ttl, utf8.reason) == (puny.mx, puny.ttl, puny.reason)
    assert [o.source for o in utf8.sources] == [o.source for o in puny.sources]


async def test_truncated_udp_answer_is_asked_again_over_tcp(auth_lab: AuthLab, mode: str) -> None:
    # 60 long exchanges: about 4 kB, far over 512 bytes (resolver, no EDNS) and 1232 (EDNS).
    hosts = [f"mx{i:02d}-{'x' * 40}.inbound.emailservice.io." for i in range(60)]
    auth_lab.add_zone("big.test", mx=[(i, host) for i, host in enumerate(hosts)])

    result, observer = await observe(auth_lab, mode, "big.test")

    assert result.verdict is Verdict.FILTERED
    assert all(len(o.mx) == 60 for o in result.sources)
    if mode == "authoritative":
        assert observer.query_counts["auth_tcp"] == 2  # both servers, after a TC answer


async def test_ip_literal_exchange_is_direct(auth_lab: AuthLab, mode: str) -> None:
    auth_lab.add_zone("literal.test", mx=[(10, "192.0.2.25.")])

    result, _ = await observe(auth_lab, mode, "literal.test")

    assert result.verdict is Verdict.DIRECT
    assert result.mx == (MxRecord(10, "192.0.2.25"),)
    assert "192.0.2.25 is an IP address, not a host name" in result.reason
