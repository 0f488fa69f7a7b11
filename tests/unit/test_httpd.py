"""The HTTP server of the daemon, on loopback: routes, the page's headers, methods, and pages of
different lengths in a row (each whole). The daemon's own use of it, with TLS and basic auth,
is in tests/integration/test_status_page.py."""

from __future__ import annotations

import http.client
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, Gauge

from mxwatch import web
from mxwatch.httpd import StatusServer
from mxwatch.webconfig import WebConfig
from tests.fixtures.htmltree import parse
from tests.unit.test_web import FakeStore, fleet


@pytest.fixture
def server() -> Iterator[StatusServer]:
    registry = CollectorRegistry()
    Gauge("mxwatch_build_info", "Always 1", registry=registry).set(1)
    running = StatusServer(
        ("127.0.0.1", 0),
        registry=registry,
        health=lambda: (False, "no cycle has finished yet"),
        store=FakeStore(fleet()),
        web_config=WebConfig(),
    )
    yield running
    running.close()


def request(server: StatusServer, method: str, path: str) -> tuple[int, dict[str, str], str]:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        connection.request(method, path)
        answer = connection.getresponse()
        return answer.status, dict(answer.getheaders()), answer.read().decode()
    finally:
        connection.close()


def test_routes(server: StatusServer) -> None:
    status, _, body = request(server, "GET", "/metrics")
    assert status == 200 and "mxwatch_build_info 1.0" in body
    assert request(server, "GET", "/healthz")[0] == 503
    assert request(server, "GET", "/tenant/contoso")[0] == 200
    assert request(server, "GET", "/tenant/nobody")[0] == 404
    assert request(server, "GET", "/tenant/%63ontoso")[0] == 200, "percent-decoded once"
    assert request(server, "GET", "/favicon.ico")[0] == 404


def test_the_pages_headers(server: StatusServer) -> None:
    status, headers, _ = request(server, "GET", "/")
    assert status == 200
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert headers["Content-Security-Policy"] == web.CONTENT_SECURITY_POLICY
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Cache-Control"] == "no-store"
    assert headers["Referrer-Policy"] == "no-referrer"


def test_pages_of_different_lengths_in_a_row_each_arrive_whole(server: StatusServer) -> None:
    for path in ("/?state=blocked", "/tenant/fabrikam", "/", "/?state=enabled"):
        status, headers, body = request(server, "GET", path)
        assert status == 200 and int(headers["Content-Length"]) == len(body.encode())
        parse(body)  # every element closed: nothing was cut off
        assert body.rstrip().endswith("</html>")


def test_the_page_is_read_only(server: StatusServer) -> None:
    status, headers, _ = request(server, "POST", "/")
    assert status == 405 and headers["Allow"] == "GET, HEAD"
    status, headers, body = request(server, "HEAD", "/")
    assert status == 200 and body == ""
