"""The status page: every tenant with its state, what it waits for, its connector and domains;
a page per tenant with its journal.

Server-rendered HTML with a little inline CSS: no script, nothing loaded from anywhere else.
It renders what it is given (the store's values, read per request, and the time); the HTTP
server (httpd.py) and `mxwatch status --html` do the rest. Tenant names, reasons, MX hosts
and journal evidence come from the config, DNS and the admin API: they are data, and `el`
escapes every string that is not markup it built itself.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from html import escape
from typing import Protocol
from urllib.parse import parse_qs, quote

from . import __version__
from .model import DomainRecord, TenantRecord, TenantState, Transition, Verdict
from .store import CycleRun, StoredTenant

REFRESH_SECONDS = 30
JOURNAL_LIMIT = 200  # entries on a tenant's page, the most recent
# The troubled first: an operator scans from the top.
_ORDER = ("regressed", "blocked", "settling", "waiting", "enabled")


class StoreReader(Protocol):
    """What the pages read of the state store (Store has these)."""

    def load_all(self) -> list[StoredTenant]: ...

    def load(self, tenant: str) -> StoredTenant | None: ...

    def history(self, tenant: str | None = None, limit: int | None = None) -> list[Transition]: ...

    def last_cycle(self) -> CycleRun | None: ...


@dataclass(frozen=True)
class Page:
    status: int
    body: str


# ------------------------------------------------------------------------------------------
# Markup


class Html(str):
    """Markup built by `el`; any other str is text, and is escaped."""


Child = Html | str | int | None | Iterable["Child"]
_VOID = {"meta", "br"}


def el(tag: str, *children: Child, **attrs: str | bool | None) -> Html:
    """<tag attrs>children</tag>. `class_` is `class`, `data_x` is `data-x`; an attribute
    that is None or False is left out, True is written bare."""
    written = "".join(_attribute(name, value) for name, value in attrs.items())
    if tag in _VOID:
        return Html(f"<{tag}{written}>")
    return Html(f"<{tag}{written}>{_children(children)}</{tag}>")


def _attribute(name: str, value: str | bool | None) -> str:
    name = name.rstrip("_").replace("_", "-")
    if value is None or value is False:
        return ""
    if value is True:
        return f" {name}"
    return f' {name}="{escape(value, quote=True)}"'


def _children(children: Iterable[Child]) -> str:
    parts: list[str] = []
    for child in children:
        if child is None:
            continue
        if isinstance(child, Html):
            parts.append(child)
        elif isinstance(child, str | int):
            parts.append(escape(str(child), quote=True))
        else:
            parts.append(_children(child))
    return "".join(parts)


STYLE = """
:root { color-scheme: light; --muted: #5b6270; --line: #d9dce1; }
body { font: 14px/1.45 system-ui, sans-serif; margin: 0; color: #1d2330; background: #f6f7f9; }
header, nav, main, footer { padding: 0 24px; }
header { background: #1d2330; color: #fff; padding-top: 12px; padding-bottom: 12px; }
header h1 { font-size: 18px; margin: 0; }
header p { margin: 2px 0 0; color: #c9ced8; }
nav { margin: 14px 0 10px; }
nav a, nav span { display: inline-block; margin-right: 6px; padding: 3px 10px;
  border: 1px solid var(--line); border-radius: 14px; background: #fff; color: inherit;
  text-decoration: none; }
nav .current { border-color: #1d2330; font-weight: 600; }
table { border-collapse: collapse; width: 100%; background: #fff; margin-bottom: 18px; }
th, td { text-align: left; vertical-align: top; padding: 6px 8px;
  border-bottom: 1px solid var(--line); }
th { font-size: 12px; text-transform: uppercase; letter-spacing: .04em; color: var(--muted); }
.muted, time.ago { color: var(--muted); }
.note { display: block; color: var(--muted); font-size: 13px; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px;
  font-weight: 600; color: #fff; background: #737b8c; white-space: nowrap; }
.s-enabled, .v-filtered, .c-enabled { background: #1f7a3f; }
.s-settling { background: #1f5fa8; }
.s-waiting, .c-disabled { background: #737b8c; }
.s-regressed, .v-direct { background: #b3261e; }
.s-blocked, .v-mixed { background: #b85c00; }
.v-no_mx { background: #6c3fa0; }
.v-unknown, .c-unknown { background: #9aa0ab; }
ul.domains { list-style: none; margin: 6px 0 0; padding: 0; }
ul.domains li { padding: 2px 0; }
.mx { display: block; font-family: ui-monospace, monospace; font-size: 12px;
  color: var(--muted); overflow-wrap: anywhere; }
td.domains { width: 30%; }
.countdown { font-weight: 600; white-space: nowrap; }
td.nowrap { white-space: nowrap; }
summary { cursor: pointer; }
pre { white-space: pre-wrap; word-break: break-all; font-size: 12px; margin: 4px 0; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: 4px 16px; background: #fff;
  padding: 12px 16px; margin: 14px 0; }
dt { color: var(--muted); }
dd { margin: 0; }
h2 { font-size: 15px; margin: 18px 0 8px; }
footer { color: var(--muted); font-size: 12px; padding-bottom: 16px; }
"""
# The Content-Security-Policy the server sends: this style block (by its hash) and nothing
# else, so even markup that escaped escaping could neither run nor load anything.
_STYLE_HASH = base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode()
CONTENT_SECURITY_POLICY = (
    f"default-src 'none'; style-src 'sha256-{_STYLE_HASH}'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)


def _document(title: str, *body: Child, now: datetime) -> str:
    head = el(
        "head",
        el("meta", charset="utf-8"),
        el("meta", name="viewport", content="width=device-width, initial-scale=1"),
        el("meta", http_equiv="refresh", content=str(REFRESH_SECONDS)),
        el("title", title),
        el("style", Html(STYLE)),
    )
    footer = el(
        "footer",
        f"mxwatch {__version__} · rendered {_when(now)} · refreshes every {REFRESH_SECONDS} s",
    )
    return "<!doctype html>\n" + el("html", head, el("body", *body, footer), lang="en") + "\n"


# ------------------------------------------------------------------------------------------
# Routes


def respond(path: str, query: str, store: StoreReader, now: datetime) -> Page:
    """The page for a GET of `path?query`: `/` (optionally `?state=`) or `/tenant/NAME`.
    `path` is percent-decoded already, as WSGI's PATH_INFO is."""
    if path in ("/", ""):
        wanted = parse_qs(query).get("state", [""])[-1]
        if wanted and wanted not in _ORDER:
            return _not_found(f"no state {wanted!r}: states are {', '.join(_ORDER)}", now)
        state = TenantState(wanted) if wanted else None
        body = index_page(store.load_all(), store.last_cycle(), now, state=state)
        return Page(200, body)
    if path.startswith("/tenant/"):
        name = path.removeprefix("/tenant/")
        tenant = store.load(name)
        if tenant is None:
            return _not_found(f"no tenant named {name!r} in the state", now)
        journal = store.history(name, JOURNAL_LIMIT)
        return Page(200, tenant_page(tenant, journal, store.last_cycle(), now))
    return _not_found("no such page", now)


def _not_found(text: str, now: datetime) -> Page:
    body = _document(
        "mxwatch: not found",
        el("header", el("h1", "mxwatch · not found")),
        el("main", el("p", text), el("p", el("a", "All tenants", href="/"))),
        now=now,
    )
    return Page(404, body)


# ------------------------------------------------------------------------------------------
# The index: every tenant


def index_page(
    tenants: Sequence[StoredTenant],
    last: CycleRun | None,
    now: datetime,
    *,
    state: TenantState | None = None,
    live: bool = True,
) -> str:
    """Every tenant (of `state`, when given). `live` False is a file (`status --html`): no
    links, as there is no server to follow them to."""
    shown = sorted(
        (t for t in tenants if state is None or t.record.state is state),
        key=lambda t: (_ORDER.index(t.record.state.value), t.record.name),
    )
    title = f"mxwatch: {len(tenants)} tenants" + (f", {state.value}" if state else "")
    return _document(
        title,
        _header(f"{len(tenants)} tenants", last, now),
        _filters(tenants, state, live=live),
        el("main", _tenant_table(shown, now, live=live)),
        now=now,
    )


def _header(title: str, last: CycleRun | None, now: datetime) -> Html:
    return el("header", el("h1", "mxwatch · ", title), el("p", _last_cycle(last, now)))


def _last_cycle(last: CycleRun | None, now: datetime) -> str:
    if last is None:
        return "No cycle has finished yet."
    outcome = "without errors" if last.ok else "with errors (see the logs)"
    text = f"Last cycle finished {_ago(last.finished_at, now)}, {outcome}"
    if not last.ok and last.last_ok_at is not None:
        text += f"; last without errors {_ago(last.last_ok_at, now)}"
    return text + "."


def _filters(tenants: Sequence[StoredTenant], state: TenantState | None, *, live: bool) -> Html:
    counts = Counter(t.record.state.value for t in tenants)
    choices: list[tuple[str, str | None, int]] = [("all", None, len(tenants))]
    choices += [(name, name, counts[name]) for name in _ORDER]
    items = []
    for label, value, count in choices:
        current = (state.value if state else None) == value
        text = f"{label} {count}"
        if live:
            href = _index_href(value)
            items.append(el("a", text, href=href, class_="current" if current else None))
        else:
            items.append(el("span", text))
    return el("nav", items, aria_label="Filter by state")


def _index_href(state: str | None) -> str:
    # Relative, so that the page works behind a proxy that serves it under a path prefix.
    return f"?state={state}" if state else "."


def _tenant_table(tenants: Sequence[StoredTenant], now: datetime, *, live: bool) -> Html:
    if not tenants:
        return el("p", "No tenant in this state.", class_="muted")
    titles = ("Tenant", "State", "Reason", "Eligible", "Connector", "Domains")
    head = el("thead", el("tr", [el("th", title) for title in titles]))
    rows = [_tenant_row(t, now, live=live) for t in tenants]
    return el("table", head, el("tbody", rows), class_="tenants")


def _tenant_row(tenant: StoredTenant, now: datetime, *, live: bool) -> Html:
    record = tenant.record
    name = (
        el("a", record.name, href="tenant/" + quote(record.name, safe=""))
        if live
        else el("strong", record.name)
    )
    return el(
        "tr",
        el("td", name, class_="nowrap"),
        el(
            "td",
            _state_badge(record.state),
            el("span", _since(record.since, now), class_="note"),
            class_="nowrap",
        ),
        el("td", record.reason, _waiting_for(record)),
        el("td", _eligible(tenant, now) or el("span", "—", class_="muted")),
        el("td", _connector(tenant)),
        el("td", _domains_details(tenant.domains), class_="domains"),
        id=f"tenant-{record.name}",
        class_="tenant",
        data_state=record.state.value,
    )


def _state_badge(state: TenantState) -> Html:
    return el("span", state.value, class_=f"badge s-{state.value}")


def _since(since: datetime | None, now: datetime) -> str | None:
    return None if since is None else f"since {_ago(since, now)}"


def _waiting_for(record: TenantRecord) -> Html | None:
    if not record.waiting_for or record.waiting_for == record.reason:
        return None
    return el("span", "waiting for: ", record.waiting_for, class_="note")


def _eligible(tenant: StoredTenant, now: datetime) -> Html | None:
    record = tenant.record
    if record.eligible_at is None:
        return None
    left = (record.eligible_at - now).total_seconds()
    countdown = f"in {_span(left)}" if left > 0 else "now (at the next cycle)"
    return el(
        "span",
        el("time", countdown, datetime=_iso(record.eligible_at), class_="countdown"),
        el("span", _when(record.eligible_at), class_="note"),
        el("span", record.eligible_reason or None, class_="note"),
    )


def _connector(tenant: StoredTenant) -> Html:
    enabled = tenant.record.connector_enabled
    word = "not read yet" if enabled is None else "enabled" if enabled else "disabled"
    kind = "unknown" if enabled is None else word
    guid = tenant.record.connector_guid
    return el(
        "span",
        el("span", word, class_=f"badge c-{kind}", title=guid),
        el("span", tenant.connector, class_="note"),
    )


def _domains_details(domains: Sequence[DomainRecord]) -> Html:
    counts = Counter(d.verdict.value if d.verdict else "not observed" for d in domains)
    summary = f"{len(domains)} domain{'s' if len(domains) != 1 else ''}" + "".join(
        f" · {count} {verdict}" for verdict, count in sorted(counts.items())
    )
    # Open when something is not filtered: what the tenant waits for is what one looks for.
    attention = any(d.verdict is not Verdict.FILTERED for d in domains)
    items = [el("li", el("span", d.domain), " ", _verdict(d), " ", _mx(d)) for d in domains]
    return el("details", el("summary", summary), el("ul", items, class_="domains"), open=attention)


def _verdict(domain: DomainRecord) -> Html:
    verdict = domain.verdict.value if domain.verdict else "unknown"
    return el("span", verdict if domain.verdict else "not observed", class_=f"badge v-{verdict}")


def _mx(domain: DomainRecord) -> Html:
    """One line per MX record."""
    lines = [f"{m.preference} {m.exchange}" for m in domain.mx] or ["no MX"]
    return el("span", [el("span", line, class_="mx") for line in lines])


# ------------------------------------------------------------------------------------------
# A tenant's page


def tenant_page(
    tenant: StoredTenant, journal: Sequence[Transition], last: CycleRun | None, now: datetime
) -> str:
    record = tenant.record
    return _document(
        f"mxwatch: {record.name}",
        _header(record.name, last, now),
        el("nav", el("a", "← all tenants", href="../")),
        el(
            "main",
            _tenant_facts(tenant, now),
            el("h2", f"Domains ({len(tenant.domains)})"),
            _domain_table(tenant.domains, now),
            el("h2", f"Journal (newest first; at most the last {JOURNAL_LIMIT})"),
            _journal_table(journal),
        ),
        now=now,
    )


def _tenant_facts(tenant: StoredTenant, now: datetime) -> Html:
    record = tenant.record
    facts: list[tuple[str, Child]] = [
        ("State", [_state_badge(record.state), " ", _since(record.since, now)]),
        ("Reason", record.reason),
        ("Waiting for", record.waiting_for or "—"),
        ("Eligible", _eligible(tenant, now) or "—"),
        ("Connector", _connector(tenant)),
        ("Connector GUID", record.connector_guid or "—"),
        ("Connector read", _ago(record.connector_checked_at, now)),
        ("Tenant ID", tenant.tenant_id),
    ]
    return el("dl", [(el("dt", term), el("dd", value)) for term, value in facts])


def _domain_table(domains: Sequence[DomainRecord], now: datetime) -> Html:
    head = ("Domain", "Verdict", "MX", "TTL", "Checked", "Filtered streak", "Accepted domain")
    # "Accepted domain": listed at the last Get-AcceptedDomain read, configured or not.
    rows = [
        el(
            "tr",
            el("td", d.domain),
            el("td", _verdict(d)),
            el("td", _mx(d)),
            el("td", "—" if d.ttl is None else f"{d.ttl} s"),
            el("td", _ago(d.checked_at, now)),
            el("td", _streak(d, now)),
            el("td", "yes" if d.accepted else "no"),
        )
        for d in domains
    ]
    return el("table", el("thead", el("tr", [el("th", h) for h in head])), el("tbody", rows))


def _streak(domain: DomainRecord, now: datetime) -> str:
    if domain.filtered_since is None:
        return "—"
    return f"{domain.filtered_count} since {_ago(domain.filtered_since, now)}"


def _journal_table(journal: Sequence[Transition]) -> Html:
    if not journal:
        return el("p", "No entry yet.", class_="muted")
    head = el("thead", el("tr", [el("th", h) for h in ("At", "Domain", "Change", "Reason")]))
    rows = [_journal_row(entry) for entry in reversed(journal)]
    return el("table", head, el("tbody", rows), class_="journal")


def _journal_row(entry: Transition) -> Html:
    evidence = (
        el(
            "details",
            el("summary", "evidence"),
            el("pre", json.dumps(entry.evidence, indent=1, sort_keys=True, default=str)),
        )
        if entry.evidence
        else None
    )
    return el(
        "tr",
        el("td", _when(entry.at)),
        el("td", entry.domain or "—"),
        el("td", f"{entry.from_state or '—'} → {entry.to_state}"),
        el("td", entry.reason, evidence),
    )


# ------------------------------------------------------------------------------------------
# Times


def _iso(value: datetime) -> str:
    return value.isoformat(timespec="seconds").replace("+00:00", "Z")


def _when(value: datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC")


def _ago(value: datetime | None, now: datetime) -> str:
    if value is None:
        return "never"
    seconds = (now - value).total_seconds()
    if seconds < 0:
        return f"in {_span(-seconds)}"
    return f"{_span(seconds)} ago"


def _span(seconds: float) -> str:
    """A duration for a person: 45s, 14m 05s, 3h 12m, 2d 4h."""
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"
