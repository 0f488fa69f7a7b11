"""The status page and the per-tenant metrics of a running daemon, and its web config.

A real `mxwatch` process watches five tenants (Knot DNS, the Exchange sandbox over HTTPS), one
in each state; headless Chromium loads the page from it, and the test reads the DOM Chromium
built and saves a screenshot. `MXWATCH_SCREENSHOT=docs/status-page.png` also copies the
screenshot there: that is how the README's is made.
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import bcrypt
import pytest
import trustme

from tests.fixtures.browser import Browser, png_size
from tests.fixtures.htmltree import Element, parse
from tests.fixtures.rig import FILTER_MX, M365_MX, Rig, Tenant
from tests.fixtures.sandbox import CLIENT_ID, CONNECTOR, SECRET, TENANT_ID
from tests.fixtures.service import Daemon, Service
from tests.integration.test_daemon import free_tcp_port, stable_scrape, value

# A connector name the admin API sends back, which the blocked tenant's reason quotes.
HOSTILE = '<img src="http://127.0.0.1:9/x" onerror="document.title=1"> & <b>Inbound</b>'
PASSWORD = "scrape-me-Qx7#not-in-logs"

FLEET = [  # name, tenant ID, domains, MX, connector
    ("contoso", TENANT_ID, ["contoso.com", "contoso.net"], FILTER_MX, {}),
    ("fabrikam", "44444444-4444-4444-4444-444444444444", ["fabrikam.com"], M365_MX, {}),
    (
        "northwind",
        "55555555-5555-5555-5555-555555555555",
        ["northwind.com"],
        FILTER_MX,
        {"Enabled": True},
    ),
    ("tailspin", "66666666-6666-6666-6666-666666666666", ["tailspin.com"], FILTER_MX, None),
    (
        "woodgrove",
        "77777777-7777-7777-7777-777777777777",
        ["woodgrove.com"],
        FILTER_MX,
        {"Enabled": True},
    ),
]


def fleet(rig: Rig) -> None:
    """contoso settles (for an hour), fabrikam waits (direct MX), northwind and woodgrove are
    adopted as enabled, tailspin is blocked: its connector is missing, and the API answers
    with another one, whose name is markup."""
    rig.policy = {"confirmations": 1, "settle": "1h", "min_settle": "0s"}
    for name, tenant_id, domains, mx, connector in FLEET:
        for domain in domains:
            rig.knot.add_zone(domain, mx=mx, ttl=300)
        rig.sandbox.add_tenant(tenant_id, accepted_domains=domains)
        rig.sandbox.register_app(tenant_id, CLIENT_ID, secret=SECRET)
        rig.tenants.append(Tenant(name, tenant_id, domains))
        if connector is None:
            rig.sandbox.add_connector(tenant_id, HOSTILE)
        else:
            rig.sandbox.add_connector(tenant_id, CONNECTOR, **connector)
    rig.knot.add_zone("fabrikam.net", mx=FILTER_MX, ttl=300)
    rig.sandbox.set_accepted_domains(FLEET[1][1], ["fabrikam.com", "fabrikam.net"])


@dataclass
class Running:
    daemon: Daemon
    url: str
    port: int


@pytest.fixture
def running_fleet(rig: Rig) -> Iterator[Running]:
    fleet(rig)
    port = free_tcp_port()
    svc = Service(
        rig,
        daemon={"interval": "1s", "jitter": "0s"},
        tables={"metrics": {"listen": f"127.0.0.1:{port}"}},
    )
    with svc.start() as daemon:
        daemon.wait_for("cycle_finished")
        rig.knot.set_mx("northwind.com", M365_MX)  # mail to it now bounces
        daemon.wait_for("tenant_transition", lambda e: e["to"] == "regressed")
        # Stand still: a long interval, so the page and the metrics are of one cycle.
        svc.daemon["interval"] = "1h"
        svc.write()
        daemon.signal(signal.SIGHUP)
        daemon.wait_for("config_reloaded")
        yield Running(daemon, f"http://127.0.0.1:{port}/", port)
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0, daemon.stderr


def rows(page: Element) -> dict[str, Element]:
    return {row.attrs["id"] or "": row for row in page.find_all("tr", class_="tenant")}


def test_chromium_renders_the_status_page_of_a_running_daemon(
    running_fleet: Running, tmp_path: Path
) -> None:
    browser = Browser(tmp_path)
    page = parse(browser.dom(running_fleet.url))
    found = rows(page)
    assert {row: found[row].attrs["data-state"] for row in found} == {
        "tenant-northwind": "regressed",
        "tenant-tailspin": "blocked",
        "tenant-contoso": "settling",
        "tenant-fabrikam": "waiting",
        "tenant-woodgrove": "enabled",
    }
    assert list(found)[:2] == ["tenant-northwind", "tenant-tailspin"], "the troubled first"
    (countdown,) = found["tenant-contoso"].find_all("time")
    assert countdown.text.startswith(("in 59m", "in 58m")), countdown.text
    fabrikam = found["tenant-fabrikam"]
    assert (
        "fabrikam.com" in fabrikam.text
        and "contoso-com.mail.protection.outlook.com" in fabrikam.text
    )
    assert "direct" in fabrikam.text and "1 filtered" in fabrikam.text
    assert "enabled" in found["tenant-northwind"].text  # its connector
    # The API's connector name is text in the reason; it built no element and ran nothing.
    assert HOSTILE in found["tenant-tailspin"].text
    assert page.tags().isdisjoint({"img", "b", "script"})
    assert page.find_all("title")[0].text == "mxwatch: 5 tenants"

    target = tmp_path / "status-page.png"
    browser.screenshot(running_fleet.url, target)
    assert png_size(target) == (1280, 900)
    if os.environ.get("MXWATCH_SCREENSHOT"):
        shutil.copyfile(target, os.environ["MXWATCH_SCREENSHOT"])


def test_chromium_follows_the_filter_and_the_tenant_page(
    running_fleet: Running, tmp_path: Path
) -> None:
    browser = Browser(tmp_path)
    blocked = parse(browser.dom(running_fleet.url + "?state=blocked"))
    assert list(rows(blocked)) == ["tenant-tailspin"]
    northwind = parse(browser.dom(running_fleet.url + "tenant/northwind"))
    (journal,) = northwind.find_all("table", class_="journal")
    changes = [row.find_all("td")[2].text for row in journal.find_all("tr")[1:]]
    assert changes[:2] == ["enabled → regressed", "filtered → direct"], changes
    assert "waiting → enabled" in changes  # adopted


def test_per_tenant_metrics_of_a_running_daemon(running_fleet: Running) -> None:
    metrics = stable_scrape(running_fleet.port)
    for tenant, state in [
        ("northwind", "regressed"),
        ("tailspin", "blocked"),
        ("contoso", "settling"),
    ]:
        assert value(metrics, "mxwatch_tenant_state", tenant=tenant, state=state) == 1
        assert value(metrics, "mxwatch_tenant_state", tenant=tenant, state="waiting") == 0
    assert value(metrics, "mxwatch_connector_enabled", tenant="northwind") == 1
    assert value(metrics, "mxwatch_connector_enabled", tenant="contoso") == 0
    eligible = value(metrics, "mxwatch_tenant_eligible_timestamp_seconds", tenant="contoso")
    assert eligible > 0
    assert not value(metrics, "mxwatch_tenant_eligible_timestamp_seconds", tenant="fabrikam")
    assert value(metrics, "mxwatch_tenant_domains", tenant="contoso", verdict="filtered") == 2
    assert value(metrics, "mxwatch_tenant_domains", tenant="fabrikam", verdict="direct") == 1
    assert value(metrics, "mxwatch_tenant_domains", tenant="fabrikam", verdict="filtered") == 1
    assert value(metrics, "mxwatch_cycle_interval_seconds") == 3600


# --- the web config: TLS and basic auth for every path ----------------------------------


@dataclass
class Protected:
    port: int
    ca: trustme.CA
    daemon: Daemon


@pytest.fixture
def protected(rig: Rig, tmp_path: Path) -> Iterator[Protected]:
    fleet(rig)
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1")
    leaf.cert_chain_pems[0].write_to_path(str(tmp_path / "web.crt"))
    leaf.private_key_pem.write_to_path(str(tmp_path / "web.key"))
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()
    (tmp_path / "web.toml").write_text(
        '[tls_server_config]\ncert_file = "web.crt"\nkey_file = "web.key"\n'
        f'[basic_auth_users]\nprometheus = "{hashed}"\n'
    )
    port = free_tcp_port()
    metrics = {"listen": f"127.0.0.1:{port}", "web_config": str(tmp_path / "web.toml")}
    svc = Service(rig, daemon={"interval": "1h"}, tables={"metrics": metrics})
    with svc.start() as daemon:
        daemon.wait_for("cycle_finished")
        yield Protected(port, ca, daemon)
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0, daemon.stderr
    assert hashed not in daemon.stderr + str(daemon.events), "the hash never reaches a log"
    assert PASSWORD not in daemon.stderr + str(daemon.events)


def trusting(ca: trustme.CA) -> ssl.SSLContext:
    """A client context that trusts the throw-away CA (and checks the host name)."""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


def get(url: str, context: ssl.SSLContext | None, password: str | None = None) -> int:
    request = urllib.request.Request(url)
    if password is not None:
        token = base64.b64encode(f"prometheus:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as refused:
        if refused.code == 401:
            assert refused.headers["WWW-Authenticate"].startswith('Basic realm="mxwatch"')
        return refused.code


@pytest.mark.parametrize("path", ["/", "/metrics", "/healthz", "/tenant/contoso"])
def test_every_path_needs_the_password_over_tls(protected: Protected, path: str) -> None:
    context = trusting(protected.ca)
    url = f"https://127.0.0.1:{protected.port}{path}"
    assert get(url, context) == 401
    assert get(url, context, "wrong") == 401
    assert get(url, context, PASSWORD) == 200
    (listening,) = protected.daemon.named("metrics_listening")
    assert (listening["tls"], listening["basic_auth"]) == (True, True)


def test_plain_http_to_the_tls_port_gets_no_page(protected: Protected) -> None:
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        get(f"http://127.0.0.1:{protected.port}/", None, PASSWORD)
    # The daemon still serves the next client.
    assert (
        get(f"https://127.0.0.1:{protected.port}/healthz", trusting(protected.ca), PASSWORD) == 200
    )


# --- check-config, the daemon's start and status --html ------------------------------------


def test_check_config_refuses_a_plain_password_and_a_missing_certificate(rig: Rig) -> None:
    fleet(rig)
    web = rig.tmp / "web.toml"
    web.write_text(
        '[tls_server_config]\ncert_file = "absent.crt"\nkey_file = "absent.key"\n'
        f'[basic_auth_users]\nprometheus = "{PASSWORD}"\n'
    )
    svc = Service(rig, tables={"metrics": {"listen": "127.0.0.1:9464", "web_config": str(web)}})
    svc.write()
    for command in (["check-config"], []):  # the daemon refuses to start alike
        run = svc.run(*command)
        assert run.code == 2, run.stdout + run.stderr
        assert (
            "tls_server_config.cert_file: " in run.stderr
            and "absent.crt is not a file" in run.stderr
        )
        assert "basic_auth_users.prometheus: not a bcrypt hash" in run.stderr
        assert PASSWORD not in run.stdout + run.stderr


def test_check_config_warns_of_a_page_open_to_the_network(rig: Rig) -> None:
    fleet(rig)
    svc = Service(rig, tables={"metrics": {"listen": "0.0.0.0:9464"}})  # only checked, not bound
    svc.write()
    run = svc.run("check-config")
    assert run.code == 0, run.stderr
    assert "warning: metrics.listen 0.0.0.0 is not loopback" in run.stderr
    assert "Set metrics.web_config" in run.stderr


def test_status_html_writes_the_page_once(rig: Rig) -> None:
    fleet(rig)
    assert rig.once().code == 1  # tailspin is blocked
    target = rig.tmp / "www" / "mxwatch.html"
    target.parent.mkdir()
    run = rig.mxwatch("status", "--html", str(target))
    assert run.code == 0, run.stderr
    page = parse(target.read_text())
    assert len(rows(page)) == 5 and not page.find_all("a"), "a file has no server to link to"
    assert list(target.parent.iterdir()) == [target], "written whole, then renamed"
    unwritable = rig.mxwatch("status", "--html", str(rig.tmp / "nowhere" / "x.html"))
    assert unwritable.code == 1 and "cannot write" in unwritable.stderr
