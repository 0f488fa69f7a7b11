"""Webhook notifications from the real CLI to a receiver on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.fixtures.rig import M365_MX, Rig, Tenant, contoso
from tests.fixtures.sandbox import TENANT_ID
from tests.fixtures.service import Service

# Slack and Teams keep the webhook's key in the path; it must never reach a log line.
SECRET_PATH = "/services/T000/B000/pathSecretXq93k"
SECRET_QUERY = "sig=querySecretZ8"


class Receiver:
    def __init__(self) -> None:
        self.posts: list[tuple[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.posts.append((self.path, json.loads(body)))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{SECRET_PATH}?{SECRET_QUERY}"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.server.shutdown()
    server.server.server_close()


def once(svc: Service) -> tuple[int, list[dict[str, Any]], str]:
    run = svc.run("--once")
    assert run.stderr == "", run.stderr
    return run.code, [json.loads(line) for line in run.stdout.splitlines()], run.stdout


def named(events: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in events if e["event"] == name]


@pytest.mark.parametrize("style", ["json", "slack", "teams"])
def test_enabled_is_posted_in_each_format(rig: Rig, receiver: Receiver, style: str) -> None:
    rig.policy["confirmations"] = 1
    contoso(rig)
    svc = Service(rig, tables={"notify": {"webhook": receiver.url(), "format": style}})
    svc.write()
    code, events, output = once(svc)
    assert code == 0
    [(path, body)] = receiver.posts
    assert path == f"{SECRET_PATH}?{SECRET_QUERY}"
    if style == "json":
        assert {k: body[k] for k in ("event", "tenant", "from", "to")} == {
            "event": "tenant_transition",
            "tenant": "contoso",
            "from": "settling",
            "to": "enabled",
        }
        assert body["reason"].startswith("enabled by mxwatch") and body["at"].endswith("Z")
    elif style == "slack":
        assert "tenant contoso is now enabled (was settling)" in body["text"]
    else:
        [attachment] = body["attachments"]
        assert body["type"] == "message"
        assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
        card = attachment["content"]
        assert card["type"] == "AdaptiveCard"
        assert "tenant contoso is now enabled" in card["body"][0]["text"]
    [sent] = named(events, "notify_sent")
    assert sent["webhook"] == f"http://127.0.0.1:{receiver.port}"
    assert "pathSecretXq93k" not in output and "querySecretZ8" not in output


def test_blocked_regressed_and_waiting_after_disable_are_posted(
    rig: Rig, receiver: Receiver
) -> None:
    rig.policy |= {"confirmations": 1, "on_regression": "disable"}
    guid = contoso(rig)
    rig.knot.add_zone("fabrikam.com", mx=M365_MX)
    # A tenant the sandbox does not know: its connector cannot be read, so it is blocked.
    rig.tenants.append(Tenant("fabrikam", "55555555-5555-5555-5555-555555555555", ["fabrikam.com"]))
    svc = Service(rig, tables={"notify": {"webhook": receiver.url()}})
    svc.write()
    once(svc)
    rig.knot.set_mx("contoso.com", M365_MX)
    once(svc)
    moves = [(b["tenant"], b["from"], b["to"]) for _, b in receiver.posts]
    assert ("contoso", "settling", "enabled") in moves
    assert ("contoso", "enabled", "regressed") in moves
    assert ("contoso", "regressed", "waiting") in moves
    assert [m for m in moves if m[0] == "fabrikam"] == [("fabrikam", "waiting", "blocked")]
    assert not any(m[2] == "settling" for m in moves), "routine moves are not notified"
    assert rig.sandbox.connector(TENANT_ID, guid)["Enabled"] is False


def test_dead_webhook_never_slows_the_cycle(rig: Rig) -> None:
    rig.policy["confirmations"] = 1
    contoso(rig)
    # Accepts connections (the kernel's backlog does) but never answers a byte.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}{SECRET_PATH}"
        notify = {"webhook": url, "timeout": "1s", "retries": 1}
        svc = Service(rig, tables={"notify": notify})
        svc.write()
        code, events, output = once(svc)
    assert code == 0
    [finished] = named(events, "cycle_finished")
    assert finished["duration_s"] < 1.0, "the cycle waited for the webhook"
    [failed] = named(events, "notify_failed")
    assert failed["attempts"] == 2 and "no answer within 1s" in failed["error"]
    assert failed["webhook"] == url.removesuffix(SECRET_PATH)
    assert "pathSecretXq93k" not in output
