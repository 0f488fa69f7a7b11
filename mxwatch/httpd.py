"""The daemon's HTTP server on `metrics.listen`: the status page (`/`, `/tenant/NAME`),
Prometheus `/metrics` and `/healthz`, on a thread of its own.

With a web config (webconfig.py) every path is served over TLS and behind basic auth alike.
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

from . import web
from .store import StoreError
from .webconfig import WebConfig

HealthCheck = Callable[[], tuple[bool, str]]
StartResponse = Callable[..., Any]
Environ = dict[str, Any]
App = Callable[[Environ, StartResponse], Iterable[bytes]]

# The page lists an MSP's customers: no cache keeps it, no other site frames it or learns
# where it came from, and the browser takes it for nothing but HTML.
_PAGE_HEADERS = [
    ("Content-Type", "text/html; charset=utf-8"),
    ("Content-Security-Policy", web.CONTENT_SECURITY_POLICY),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-store"),
]
_REASONS = {200: "OK", 404: "Not Found"}


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a stuck request must not keep the process alive at exit
    tls: ssl.SSLContext | None = None

    def get_request(self) -> tuple[socket.socket, Any]:
        raw, address = super().get_request()
        if self.tls is None:
            return raw, address
        # The handshake happens on the request's own thread at its first read (under the
        # handler's timeout), so a client that stalls it holds up no one else.
        return self.tls.wrap_socket(raw, server_side=True, do_handshake_on_connect=False), address

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that fails the handshake or hangs up is its own problem, not stderr's."""


class _QuietHandler(WSGIRequestHandler):
    timeout = 30  # seconds a client may take to send its request (and the TLS handshake)

    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes and page views are not news; stderr stays free for real problems."""


class StatusServer:
    """Serves until close(); `port` is the one bound."""

    def __init__(
        self,
        listen: tuple[str, int],
        *,
        registry: CollectorRegistry,
        health: HealthCheck,
        store: web.StoreReader,
        web_config: WebConfig,
    ) -> None:
        app = _guarded(_routes(make_wsgi_app(registry), health, store), web_config)
        self._server = make_server(
            *listen, app, server_class=_ThreadingServer, handler_class=_QuietHandler
        )
        self._server.tls = web_config.server_context()
        self.port = self._server.server_port
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="mxwatch-http", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def _guarded(app: App, web_config: WebConfig) -> App:
    """Every path behind basic auth when the web config names users."""

    def guarded(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        if web_config.authorised(environ.get("HTTP_AUTHORIZATION")):
            return app(environ, start_response)
        start_response(
            "401 Unauthorized",
            [
                ("Content-Type", "text/plain; charset=utf-8"),
                ("WWW-Authenticate", 'Basic realm="mxwatch", charset="UTF-8"'),
            ],
        )
        return [b"401 Unauthorized\n"]

    return guarded


def _routes(metrics: App, health: HealthCheck, store: web.StoreReader) -> App:
    def routes(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return metrics(environ, start_response)
        if path == "/healthz":
            ok, reason = health()
            status = "200 OK" if ok else "503 Service Unavailable"
            start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
            return [f"{'ok' if ok else 'unhealthy'}: {reason}\n".encode()]
        return _page(environ, start_response, store)

    return routes


def _page(
    environ: Environ, start_response: StartResponse, store: web.StoreReader
) -> Iterable[bytes]:
    method = environ.get("REQUEST_METHOD", "GET")
    if method not in ("GET", "HEAD"):
        start_response("405 Method Not Allowed", [("Allow", "GET, HEAD")])
        return [b"the status page is read-only\n"]
    # PEP 3333: PATH_INFO holds the decoded path's bytes as latin-1; names are UTF-8.
    path = environ.get("PATH_INFO", "/").encode("latin-1").decode("utf-8", "replace")
    try:
        page = web.respond(
            path,
            environ.get("QUERY_STRING", ""),
            store,
            datetime.now(UTC),
        )
    except StoreError as exc:  # the message names the file and what to do, never a secret
        start_response("503 Service Unavailable", [("Content-Type", "text/plain; charset=utf-8")])
        return [f"the state cannot be read: {exc}\n".encode()]
    # A copy: wsgiref adds Content-Length to the list it is given, and would send the first
    # page's length with every later page.
    start_response(f"{page.status} {_REASONS[page.status]}", list(_PAGE_HEADERS))
    return [] if method == "HEAD" else [page.body.encode()]
