"""The status page as HTML: what it shows, what it escapes, and what it never loads.

The page is parsed with the standard library's HTML parser, so a test sees the elements a
browser would build, not strings; tests/integration/test_status_page.py loads it in Chromium.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

import pytest

from mxwatch import web
from mxwatch.model import DomainRecord, MxRecord, TenantRecord, TenantState, Transition, Verdict
from mxwatch.store import CycleRun, StoredTenant
from tests.fixtures.htmltree import Element, parse

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
LAST = CycleRun(NOW - timedelta(seconds=50), True, NOW - timedelta(seconds=50))
FILTER = (MxRecord(10, "mx1.inbound.emailservice.io"), MxRecord(20, "mx2.inbound.emailservice.cc"))
DIRECT = (MxRecord(0, "contoso-com.mail.protection.outlook.com"),)
# Each would build an element, or an attribute, if it reached the page unescaped.
HOSTILE_REASON = "connector missing: '<script>alert(1)</script>' & <b>bold</b>"
HOSTILE_MX = '"><img src=https://evil.example/x onerror=alert(2)>'
HOSTILE_GUID = '" onmouseover="alert(3)'


def domain(name: str, verdict: Verdict | None, mx: tuple[MxRecord, ...] = FILTER) -> DomainRecord:
    return DomainRecord(name, verdict, mx, 300, NOW - timedelta(seconds=40))


def tenant(name: str, state: TenantState, *domains: DomainRecord, **record: object) -> StoredTenant:
    since = NOW - timedelta(hours=2)
    return StoredTenant(
        "11111111-1111-1111-1111-111111111111",
        "Inbound from Mailprotector Only",
        TenantRecord(name, state, since, **record),  # type: ignore[arg-type]
        domains,
    )


def fleet() -> list[StoredTenant]:
    return [
        tenant(
            "contoso",
            TenantState.SETTLING,
            domain("contoso.com", Verdict.FILTERED),
            reason="every covered domain filtered",
            eligible_at=NOW + timedelta(minutes=14, seconds=5),
            eligible_reason="settle 1h",
            connector_enabled=False,
        ),
        tenant(
            "fabrikam",
            TenantState.WAITING,
            domain("fabrikam.com", Verdict.DIRECT, (MxRecord(0, HOSTILE_MX),)),
            domain("fabrikam.net", None, ()),
            reason="fabrikam.com is direct",
            waiting_for="fabrikam.com",
            connector_enabled=False,
        ),
        tenant(
            "tailspin",
            TenantState.BLOCKED,
            domain("tailspin.com", Verdict.FILTERED),
            reason=HOSTILE_REASON,
            connector_guid=HOSTILE_GUID,
            connector_enabled=True,
        ),
        tenant("woodgrove", TenantState.ENABLED, domain("woodgrove.com", Verdict.FILTERED)),
    ]


@dataclass
class FakeStore:
    """The StoreReader the pages are given; the real Store is used in the integration test."""

    tenants: list[StoredTenant]
    journal: list[Transition] = field(default_factory=list)
    last: CycleRun | None = LAST

    def load_all(self) -> list[StoredTenant]:
        return self.tenants

    def load(self, name: str) -> StoredTenant | None:
        return next((t for t in self.tenants if t.record.name == name), None)

    def history(self, tenant: str | None = None, limit: int | None = None) -> list[Transition]:
        entries = [e for e in self.journal if tenant is None or e.tenant == tenant]
        return entries[-limit:] if limit else entries

    def last_cycle(self) -> CycleRun | None:
        return self.last


def rows(page: Element) -> dict[str, Element]:
    return {row.attrs["id"] or "": row for row in page.find_all("tr", class_="tenant")}


def test_every_tenant_with_state_reason_countdown_connector_and_domains() -> None:
    page = parse(web.respond("/", "", FakeStore(fleet()), NOW).body)
    found = rows(page)
    # The troubled first, then by name.
    assert list(found) == [
        "tenant-tailspin",
        "tenant-contoso",
        "tenant-fabrikam",
        "tenant-woodgrove",
    ]
    contoso = found["tenant-contoso"]
    assert contoso.attrs["data-state"] == "settling"
    (countdown,) = contoso.find_all("time")
    assert countdown.text == "in 14m 05s"
    assert countdown.attrs["datetime"] == "2026-05-01T12:14:05Z"
    assert "settle 1h" in contoso.text and "disabled" in contoso.text
    fabrikam = found["tenant-fabrikam"]
    assert "waiting for: fabrikam.com" in fabrikam.text
    (details,) = fabrikam.find_all("details")
    assert "open" in details.attrs, "a tenant with a domain not filtered shows its domains"
    assert "2 domains · 1 direct · 1 not observed" in details.text
    assert "0 " + HOSTILE_MX in details.text and "not observed" in details.text
    (closed,) = found["tenant-woodgrove"].find_all("details")
    assert "open" not in closed.attrs
    assert "without errors" in page.find_all("header")[0].text


def test_data_is_escaped_in_text_and_attributes() -> None:
    text = web.respond("/", "", FakeStore(fleet()), NOW).body
    page = parse(text)
    assert page.tags().isdisjoint({"script", "img", "b"}), "data built no element"
    tailspin = rows(page)["tenant-tailspin"]
    assert HOSTILE_REASON in tailspin.text
    (badge,) = tailspin.find_all("span", class_="badge c-enabled")
    assert badge.attrs["title"] == HOSTILE_GUID and "onmouseover" not in badge.attrs
    assert "<script>" not in text and "&lt;script&gt;" in text


def test_the_page_loads_nothing_and_its_policy_allows_only_its_own_style() -> None:
    text = web.respond("/", "", FakeStore(fleet()), NOW).body
    page = parse(text)
    assert not page.find_all("script") and not page.find_all("link")
    assert not [e for e in page.all() if "src" in e.attrs]
    hrefs = [a.attrs["href"] or "" for a in page.find_all("a")]
    assert hrefs and not [h for h in hrefs if re.match(r"[a-z]+:|//", h)], hrefs
    (style,) = page.find_all("style")
    digest = base64.b64encode(hashlib.sha256(style.text.encode()).digest()).decode()
    assert f"style-src 'sha256-{digest}'" in web.CONTENT_SECURITY_POLICY
    assert "default-src 'none'" in web.CONTENT_SECURITY_POLICY
    (refresh,) = page.find_all("meta", http_equiv="refresh")
    assert refresh.attrs["content"] == str(web.REFRESH_SECONDS)


def test_filter_by_state() -> None:
    store = FakeStore(fleet())
    page = parse(web.respond("/", "state=blocked", store, NOW).body)
    assert list(rows(page)) == ["tenant-tailspin"]
    nav = {a.text: a.attrs for a in page.find_all("nav")[0].find_all("a")}
    assert nav["blocked 1"]["class"] == "current" and nav["blocked 1"]["href"] == "?state=blocked"
    assert nav["all 4"] == {"href": "."}
    assert nav["regressed 0"] == {"href": "?state=regressed"}
    empty = parse(web.respond("/", "state=regressed", store, NOW).body)
    assert not rows(empty) and "No tenant in this state." in empty.text
    assert web.respond("/", "state=%3Cb%3E", store, NOW).status == 404


def test_a_tenants_page_has_its_domains_and_its_journal_newest_first() -> None:
    journal = [
        Transition(NOW - timedelta(hours=2), "contoso", "contoso.com", None, "direct", "first"),
        Transition(NOW - timedelta(hours=1), "contoso", None, "waiting", "settling", "all <ok>"),
        Transition(NOW, "fabrikam", None, "waiting", "blocked", "not contoso's"),
    ]
    store = FakeStore(fleet(), journal)
    answer = web.respond("/tenant/contoso", "", store, NOW)
    page = parse(answer.body)
    assert answer.status == 200
    (table,) = page.find_all("table", class_="journal")
    entries = [row.text for row in table.find_all("tr")[1:]]
    assert entries == [
        "2026-05-01 11:00:00 UTC—waiting → settlingall <ok>",
        "2026-05-01 10:00:00 UTCcontoso.com— → directfirst",
    ]
    assert "mx1.inbound.emailservice.io" in page.text and "in 14m 05s" in page.text
    assert page.find_all("a")[0].attrs["href"] == "../"


def test_unknown_tenants_and_paths_are_404_and_names_are_quoted_in_links() -> None:
    odd = replace(fleet()[0], record=replace(fleet()[0].record, name="a b/c@d"))
    store = FakeStore([odd])
    links = [a.attrs["href"] for a in parse(web.respond("/", "", store, NOW).body).find_all("a")]
    assert "tenant/a%20b%2Fc%40d" in links
    assert web.respond("/tenant/a b/c@d", "", store, NOW).status == 200  # as WSGI decodes it
    missing = web.respond("/tenant/<b>nobody", "", store, NOW)
    assert missing.status == 404 and "<b>" not in missing.body
    assert web.respond("/elsewhere", "", store, NOW).status == 404


def test_the_file_page_has_no_links_to_follow() -> None:
    page = parse(web.index_page(fleet(), None, NOW, live=False))
    assert not page.find_all("a")
    assert len(rows(page)) == 4 and "No cycle has finished yet." in page.text


@pytest.mark.parametrize(
    ("eligible", "shown"),
    [
        (timedelta(seconds=45), "in 45s"),
        (timedelta(hours=3, minutes=12, seconds=9), "in 3h 12m"),
        (timedelta(days=2, hours=4), "in 2d 4h"),
        (timedelta(seconds=-30), "now (at the next cycle)"),
    ],
)
def test_the_countdown(eligible: timedelta, shown: str) -> None:
    settling = fleet()[0]
    record = replace(settling.record, eligible_at=NOW + eligible)
    page = parse(web.index_page([replace(settling, record=record)], None, NOW))
    (countdown,) = page.find_all("time")
    assert countdown.text == shown
