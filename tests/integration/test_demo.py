"""`mxwatch demo` as a user runs it, and its story checked against the journal it leaves.

The demo narrates a cutover; the journal (`mxwatch history --json` on the kept state) must tell
the same story, and the sandbox's record of connector writes (demo.json) must show that the
connector was enabled only once every source agreed and the old TTL was over: the demo plays
the real gate, it does not get around it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime, timedelta
from typing import Any

import pytest

DEMO_LIMIT = 60.0  # seconds: the demo's promise, start-up included


def _mxwatch(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mxwatch", *args],
        capture_output=True,
        text=True,
        check=False,
        env=env,
        timeout=180,
    )


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.fixture(scope="module")
def played(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One `mxwatch demo --keep` run: its output, how long it took, and what it kept."""
    tmp = tmp_path_factory.mktemp("demo")
    env = {**os.environ, "TMPDIR": str(tmp)}
    started = time.monotonic()
    done = _mxwatch("demo", "--keep", env=env)
    seconds = time.monotonic() - started
    assert done.returncode == 0, done.stdout + done.stderr
    (directory,) = tmp.glob("mxwatch-demo-*")
    config = directory / "mxwatch.toml"
    history = _mxwatch("-c", str(config), "history", "--json")
    assert history.returncode == 0, history.stderr
    status = _mxwatch("-c", str(config), "status", "--json")
    assert status.returncode == 0, status.stderr
    return {
        "stdout": done.stdout,
        "seconds": seconds,
        "directory": directory,
        "journal": [json.loads(line) for line in history.stdout.splitlines()],
        "status": {t["name"]: t for t in json.loads(status.stdout)["tenants"]},
        "demo": json.loads((directory / "demo.json").read_text()),
    }


def _entries(played: dict[str, Any], tenant: str, domain: str | None) -> list[dict[str, Any]]:
    return [e for e in played["journal"] if e["tenant"] == tenant and e["domain"] == domain]


def _step(played: dict[str, Any], name: str) -> datetime:
    (at,) = [_at(s["at"]) for s in played["demo"]["steps"] if s["step"] == name]
    return at


def test_it_finishes_in_under_a_minute_and_says_where_its_state_is(played: dict[str, Any]) -> None:
    assert played["seconds"] < DEMO_LIMIT
    out = played["stdout"]
    config = played["directory"] / "mxwatch.toml"
    assert f"The state is in {played['directory'] / 'state.db'}" in out
    assert f"-c {config} status" in out
    assert f"-c {config} history" in out
    # The narration, one line per step, in order, among the daemon's own log lines.
    steps = [line for line in out.splitlines() if line.startswith("==> ")]
    assert [line.split("] ", 1)[1][:2] for line in steps[:6]] == [
        "1.",
        "2.",
        "3.",
        "4.",
        "5.",
        "6.",
    ]
    assert any('"event": "connector_enabled"' in line for line in out.splitlines())


def test_each_domain_goes_direct_mixed_filtered_and_one_comes_back(played: dict[str, Any]) -> None:
    def path(domain: str) -> list[tuple[str | None, str]]:
        return [(e["from"], e["to"]) for e in _entries(played, "contoso", domain)]

    cutover = [(None, "direct"), ("direct", "mixed"), ("mixed", "filtered")]
    assert path("contoso.test") == cutover
    assert path("contoso-shop.test") == [*cutover, ("filtered", "direct")]


def test_the_lagging_secondary_held_the_cutover(played: dict[str, Any]) -> None:
    changed = _step(played, "primary_changed")
    transferred = _step(played, "secondary_transferred")
    for domain in ("contoso.test", "contoso-shop.test"):
        (filtered,) = [e for e in _entries(played, "contoso", domain) if e["to"] == "filtered"]
        # Not when the primary changed: only once the secondary had the new MX too.
        assert _at(filtered["at"]) > transferred > changed
        sources = {s["source"]: s["verdict"] for s in filtered["evidence"]["sources"]}
        assert set(sources.values()) == {"filtered"}
        assert {s.split("@")[-1] for s in sources if s.startswith("auth:")} == {
            "127.0.0.2",
            "127.0.0.3",
        }


def test_settling_waits_out_the_old_ttl_before_the_enable(played: dict[str, Any]) -> None:
    tenant = [(e["from"], e["to"]) for e in _entries(played, "contoso", None)]
    assert tenant == [("waiting", "settling"), ("settling", "enabled"), ("enabled", "regressed")]
    settling, enabled, regressed = _entries(played, "contoso", None)
    old_ttl = timedelta(seconds=played["demo"]["old_ttl"])
    assert _at(enabled["at"]) >= _at(settling["at"]) + old_ttl
    assert enabled["reason"] == "enabled by mxwatch: every covered domain filtered and settled"
    assert set(enabled["evidence"]["domains"].values()) == {"filtered"}
    assert regressed["reason"].startswith("contoso-shop.test is direct")
    assert _at(regressed["at"]) > _step(played, "regression")
    assert played["status"]["contoso"]["state"] == "regressed"


def test_the_sandbox_connector_was_enabled_once_after_every_source_agreed(
    played: dict[str, Any],
) -> None:
    demo = played["demo"]
    (write,) = demo["connector_writes"]
    assert write["tenant"] == "contoso"
    assert write["parameters"]["Enabled"] is True
    assert write["status"] == 200
    filtered = max(
        _at(e["at"]) for e in _entries(played, "contoso", "contoso.test") if e["to"] == "filtered"
    )
    assert _at(write["at"]) >= filtered + timedelta(seconds=demo["old_ttl"])
    assert _at(write["at"]) > _step(played, "secondary_transferred")
    assert demo["connectors"]["contoso"]["Enabled"] is True
    assert played["status"]["contoso"]["connector"]["enabled"] is True


def test_the_tenant_with_a_bad_connector_ends_blocked_with_its_reason(
    played: dict[str, Any],
) -> None:
    (blocked,) = _entries(played, "fabrikam", None)
    assert (blocked["from"], blocked["to"]) == ("waiting", "blocked")
    reason = "audit failed: neither RestrictDomainsToIPAddresses nor RestrictDomainsToCertificate"
    assert blocked["reason"].startswith(reason)
    assert played["status"]["fabrikam"]["state"] == "blocked"
    assert played["demo"]["connectors"]["fabrikam"]["Enabled"] is False
    assert f"fabrikam   blocked    {reason}" in played["stdout"]


def test_without_the_sandbox_extra_it_says_what_to_install() -> None:
    code = (
        "import sys; sys.modules['trustme'] = None; from mxwatch.cli import main; "
        "sys.exit(main(['demo']))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=60
    )
    assert done.returncode == 2
    assert "pip install 'mxwatch[sandbox]'" in done.stderr
    assert "trustme" in done.stderr
    assert done.stdout == ""
