"""mxwatch.check, pure parts: what is wrong with a domain, and the settle wait from now."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from mxwatch.check import judge, what_is_wrong
from mxwatch.model import DomainObservation, Observation, Verdict
from mxwatch.settings import PolicyConfig
from mxwatch.verdicts import classify, combine_observations, unknown
from tests.unit.policy_builders import PROVIDER, T0

FILTER = (10, "mx1.inbound.filter.example")
MICROSOFT = (20, "contoso-com.mail.protection.outlook.com")


def answer(
    source: str, *records: tuple[int, str], ttl: int = 300, authoritative: bool = False
) -> Observation:
    seen = classify("contoso.com", source, records, PROVIDER, T0, ttl=ttl)
    return replace(seen, authoritative=authoritative)


def domain(*sources: Observation) -> DomainObservation:
    return combine_observations("contoso.com", sources, T0)


def test_a_filtered_domain_has_nothing_wrong() -> None:
    assert what_is_wrong(domain(answer("r", FILTER)), PROVIDER) == ()


def test_a_backup_mx_of_microsoft_is_named_as_the_backup() -> None:
    wrong = what_is_wrong(domain(answer("r", FILTER, MICROSOFT)), PROVIDER)
    assert wrong == (
        "backup MX contoso-com.mail.protection.outlook.com does not belong to testfilter",
    )


def test_what_one_source_sees_names_that_source() -> None:
    lagging = answer("auth:ns2", (0, MICROSOFT[1]), authoritative=True)
    wrong = what_is_wrong(domain(answer("r", FILTER), lagging), PROVIDER)
    assert wrong == (
        "MX contoso-com.mail.protection.outlook.com does not belong to testfilter (from auth:ns2)",
    )


def test_an_ip_literal_exchange_says_so() -> None:
    (line,) = what_is_wrong(domain(answer("r", (10, "192.0.2.25"))), PROVIDER)
    assert line == "MX 192.0.2.25 does not belong to testfilter (an IP address, not a host name)"


def test_no_mx_and_unknown_sources_say_why() -> None:
    silent = unknown("contoso.com", "auth:ns4", "timeout after 1s", T0)
    assert what_is_wrong(domain(answer("r", FILTER), silent), PROVIDER) == (
        "no usable answer: timeout after 1s (from auth:ns4)",
    )
    assert what_is_wrong(domain(answer("r")), PROVIDER) == ("no MX: NODATA (no MX records)",)


@pytest.mark.parametrize(
    ("sources", "policy", "settle"),
    [
        # every answer filtered: no old MX seen, default_old_ttl
        ([answer("r", FILTER)], PolicyConfig(), timedelta(hours=1)),
        # a first-hand old TTL longer than default_old_ttl decides
        (
            [answer("a", MICROSOFT, ttl=7200, authoritative=True)],
            PolicyConfig(),
            timedelta(hours=2),
        ),
        # a resolver's TTL is what it had left: at least default_old_ttl
        ([answer("r", MICROSOFT, ttl=60)], PolicyConfig(), timedelta(hours=1)),
        # a short first-hand TTL: min_settle
        (
            [answer("a", MICROSOFT, ttl=60, authoritative=True)],
            PolicyConfig(default_old_ttl=timedelta(0)),
            timedelta(minutes=10),
        ),
        # a fixed settle is the settle
        ([answer("r", MICROSOFT, ttl=60)], PolicyConfig(settle=timedelta(0)), timedelta(0)),
    ],
)
def test_the_settle_from_now_is_the_cycles_own(
    sources: list[Observation], policy: PolicyConfig, settle: timedelta
) -> None:
    result = judge(domain(*sources), PROVIDER, policy, T0)
    assert result.settle == settle
    assert result.filtered is (sources[0].verdict is Verdict.FILTERED)
