"""The daemon end to end: the real `mxwatch` process, Knot DNS, the sandbox over HTTPS.

Every wait polls the daemon's own log lines with a generous timeout, never a fixed sleep.
"""

from __future__ import annotations

import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mxwatch.sandbox.exchange_api import Fault
from tests.fixtures.rig import FILTER_MX, M365_MX, Rig, contoso, enabled
from tests.fixtures.service import Service


def fast() -> dict[str, str]:
    """A 1 s interval without jitter (a fresh dict: tests change it)."""
    return {"interval": "1s", "jitter": "0s"}


def free_tcp_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class NotifySocket:
    """A stand-in for systemd's notify socket (abstract, as systemd's own is), read on a
    thread as systemd reads it: a full datagram queue must not be what the test measures."""

    def __init__(self, tag: str) -> None:
        self.name = f"@mxwatch-test-{tag}-{time.monotonic_ns()}"
        self.fields: list[str] = []
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(b"\0" + self.name[1:].encode())
        self._sock.settimeout(0.1)
        self._open = True
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while self._open:
            try:
                self.fields += self._sock.recv(4096).decode().splitlines()
            except TimeoutError:
                continue

    def close(self) -> list[str]:
        self._open = False
        self._thread.join(5)
        self._sock.close()
        return self.fields


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path.name)
    yield sock
    sock.close()


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def stable_scrape(port: int) -> Samples:
    """Two equal scrapes in a row: no cycle finished in between."""
    previous = scrape(port)
    for _ in range(50):
        time.sleep(0.2)
        current = scrape(port)
        if current == previous:
            return current
        previous = current
    raise AssertionError("metrics never settled")


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def eventually(check: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def test_daemon_enables_after_cutover_reloads_serves_metrics_and_stops_cleanly(
    rig: Rig, notify_socket: NotifySocket
) -> None:
    guid = contoso(rig, mx=M365_MX)
    port = free_tcp_port()
    svc = Service(rig, daemon=fast(), tables={"metrics": {"listen": f"127.0.0.1:{port}"}})
    env = svc.env() | {"NOTIFY_SOCKET": notify_socket.name, "WATCHDOG_USEC": "200000"}
    with svc.start(env=env) as daemon:
        (started,) = daemon.wait_for("daemon_started")
        assert (started["tenants"], started["interval_s"], started["dry_run"]) == (1, 1.0, False)
        daemon.wait_for("next_cycle")
        daemon.wait_for("cycle_finished", count=2)
        assert not enabled(rig, guid)

        rig.knot.set_mx("contoso.com", FILTER_MX)
        daemon.wait_for("connector_enabled")
        assert enabled(rig, guid)

        # A good change is applied: a long interval stops further cycles, which also makes
        # the metrics stand still for an exact comparison.
        svc.daemon["interval"] = "1h"
        svc.write()
        daemon.signal(signal.SIGHUP)
        (reloaded,) = daemon.wait_for("config_reloaded")
        assert reloaded["interval_s"] == 3600.0
        metrics = stable_scrape(port)
        check_metrics(metrics, daemon.named("cycle_finished"), rig)

        # A broken one is refused, and the daemon goes on with the previous config.
        svc.path.write_text(svc.path.read_text() + "\n[policy]\nbogus = 1\n")
        daemon.signal(signal.SIGHUP)
        (failed,) = daemon.wait_for("config_reload_failed")
        assert failed["problems"] and daemon.process.poll() is None
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as answer:
            assert answer.status == 200

        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0, daemon.stderr
        assert daemon.named("daemon_stopped")

    sd = notify_socket.close()
    assert {"READY=1", "STOPPING=1", "WATCHDOG=1"} <= set(sd)
    assert sd.index("READY=1") < sd.index("STOPPING=1")
    svc.write()  # repair the file for the history command
    moves = [(m["domain"], m["from"], m["to"]) for m in svc.history()]
    assert moves == [
        ("contoso.com", None, "direct"),
        ("contoso.com", "direct", "filtered"),
        (None, "waiting", "settling"),
        (None, "settling", "enabled"),
    ]


def check_metrics(metrics: Samples, finished: list[dict[str, object]], rig: Rig) -> None:
    ok_cycles = sum(1 for e in finished if e["errors"] == 0)
    assert value(metrics, "mxwatch_cycles_total", outcome="ok") == ok_cycles == len(finished)
    assert value(metrics, "mxwatch_cycle_duration_seconds_count") == len(finished)
    assert value(metrics, "mxwatch_tenants", state="enabled") == 1
    assert value(metrics, "mxwatch_tenants", state="waiting") == 0
    assert value(metrics, "mxwatch_domains", verdict="filtered") == 1
    # One domain, one resolver: one answer per cycle, direct at first, then filtered.
    answers = value(metrics, "mxwatch_dns_queries_total", outcome="direct") + value(
        metrics, "mxwatch_dns_queries_total", outcome="filtered"
    )
    assert answers == len(finished)
    for cmdlet in ("Get-InboundConnector", "Set-InboundConnector"):
        calls = [r for r in rig.sandbox.requests_to("api") if r.cmdlet == cmdlet]
        assert value(metrics, "mxwatch_exchange_calls_total", cmdlet=cmdlet, status="200") == len(
            calls
        )
    assert value(metrics, "mxwatch_last_success_timestamp_seconds") > time.time() - 60


def test_sigterm_lets_the_running_exchange_write_finish(rig: Rig) -> None:
    rig.policy["confirmations"] = 1
    guid = contoso(rig)
    rig.sandbox.inject(Fault(delay=2.0, cmdlet="Set-InboundConnector"))
    svc = Service(rig, daemon=fast())
    with svc.start() as daemon:
        reads = lambda: [  # noqa: E731
            r for r in rig.sandbox.requests_to("api") if r.cmdlet == "Get-InboundConnector"
        ]
        eventually(lambda: bool(reads()))
        time.sleep(0.3)  # the Set-InboundConnector is now on its 2 s way
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0, daemon.stderr
        assert daemon.named("shutdown_waiting")
        assert [e["guid"] for e in daemon.named("connector_enabled")] == [guid]
    assert enabled(rig, guid)
    tenant_moves = [(m["from"], m["to"]) for m in svc.history() if m["domain"] is None]
    assert tenant_moves == [("waiting", "settling"), ("settling", "enabled")]


def test_health_turns_unhealthy_once_cycles_stop(rig: Rig) -> None:
    contoso(rig)
    svc = Service(rig, daemon=fast())
    assert svc.write() and svc.run("health").code == 1  # no state yet
    with svc.start() as daemon:
        daemon.wait_for("cycle_finished")
        healthy = svc.run("health")
        assert healthy.code == 0, healthy.stdout + healthy.stderr
        assert "healthy" in healthy.stdout
        daemon.process.kill()  # no chance to say goodbye
        daemon.wait()
    # 3 x the 1 s interval: poll rather than sleep a fixed time.
    eventually(lambda: svc.run("health").code == 1)
    unhealthy = svc.run("health")
    assert "unhealthy" in unhealthy.stdout and "3 x interval" in unhealthy.stdout


def test_healthz_is_503_before_any_cycle_can_finish(rig: Rig) -> None:
    contoso(rig)
    rig.resolvers = ["127.0.0.1:1"]  # nothing answers: the first cycle takes the DNS timeout
    port = free_tcp_port()
    svc = Service(rig, daemon=fast(), tables={"metrics": {"listen": f"127.0.0.1:{port}"}})
    with svc.start() as daemon:
        daemon.wait_for("metrics_listening")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5)
        except urllib.error.HTTPError as answer:
            assert answer.code == 503
            assert "no cycle has finished yet" in answer.read().decode()
        else:
            pytest.fail("healthz said ok before any cycle finished")
        daemon.signal(signal.SIGINT)
        assert daemon.wait() == 0


def test_once_writes_the_metrics_textfile(rig: Rig) -> None:
    rig.policy["confirmations"] = 1
    contoso(rig)
    svc = Service(rig)
    svc.write()
    target = rig.tmp / "textfile" / "mxwatch.prom"
    target.parent.mkdir()
    run = svc.run("--once", "--metrics-file", str(target))
    assert run.code == 0, run.stderr
    text = target.read_text()
    found = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert found[("mxwatch_tenants", (("state", "enabled"),))] == 1
    assert found[("mxwatch_cycles_total", (("outcome", "ok"),))] == 1
    key = ("mxwatch_exchange_calls_total", (("cmdlet", "Set-InboundConnector"), ("status", "200")))
    assert found[key] == 1
    assert [p.name for p in target.parent.iterdir()] == ["mxwatch.prom"]
    assert svc.run("--metrics-file", str(target)).code == 2  # only with --once
