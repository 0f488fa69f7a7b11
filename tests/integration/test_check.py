"""`mxwatch check DOMAIN...` through the real CLI against real Knot DNS (issue 10, item 3).

Without -c it needs no config at all; with -c the config's dns (here: the lab's authoritative
port), policy and providers apply. The lab (tests/fixtures/knot.py `AuthLab`) has a lagging
secondary that still serves the old MX, as real secondaries do.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.knot import LAB_SECONDARY, AuthLab, KnotServer, free_port

FILTER_MX = [(10, "mx1.inbound.emailservice.io."), (20, "mx2.inbound.emailservice.cc.")]
MICROSOFT = "contoso-com.mail.protection.outlook.com"
BACKUP_MX = [(10, "mx1.inbound.emailservice.io."), (20, f"{MICROSOFT}.")]

# A config needs a tenant and a credential reference; `check` reads neither.
_TENANT = """
[exchange]
client_id = "22222222-2222-2222-2222-222222222222"
client_secret_env = "MXWATCH_TEST_UNSET_SECRET"
[[tenant]]
name = "lab"
tenant_id = "11111111-1111-1111-1111-111111111111"
connector = "Inbound from Mailprotector Only"
domains = ["lab.test"]
"""


def check(*args: str) -> subprocess.CompletedProcess[str]:
    # A config named by the environment must not be read: only -c brings one in.
    env = {**os.environ, "MXWATCH_CONFIG": "/nonexistent/mxwatch.toml"}
    return subprocess.run(
        [sys.executable, "-m", "mxwatch", "check", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def lab_config(tmp_path: Path, lab: AuthLab, extra: str = "") -> str:
    path = tmp_path / "mxwatch.toml"
    path.write_text(
        f'[dns]\nresolvers = ["127.0.0.1:{lab.resolver.port}"]\n'
        f'authoritative_port = {lab.port}\ntimeout = "1s"\n' + extra + _TENANT
    )
    return str(path)


def test_without_a_config_every_filtered_domain_exits_0(knot: KnotServer) -> None:
    knot.add_zone("contoso.com", mx=FILTER_MX, ttl=300)
    knot.add_zone("contoso.net", mx=FILTER_MX, ttl=300)
    resolver = f"127.0.0.1:{knot.port}"

    done = check("--resolver", resolver, "--no-authoritative", "contoso.com", "Contoso.NET.")

    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "contoso.com: filtered (provider mailprotector)"
    source = lines[1].split()
    assert source[:4] == [resolver, "filtered", "ttl", "300s"]
    assert " ".join(source[4:]) == "10 mx1.inbound.emailservice.io, 20 mx2.inbound.emailservice.cc"
    assert lines[2] == "  settle from now: 3600s (no old MX seen, default_old_ttl 3600s)"
    assert "contoso.net: filtered (provider mailprotector)" in lines  # normalised


def test_a_backup_mx_left_on_microsoft_says_what_is_wrong_and_exits_1(knot: KnotServer) -> None:
    knot.add_zone("contoso.com", mx=FILTER_MX)
    knot.add_zone("fabrikam.com", mx=BACKUP_MX)

    done = check(
        "--resolver", f"127.0.0.1:{knot.port}", "--no-authoritative", "contoso.com", "fabrikam.com"
    )

    assert done.returncode == 1
    assert "fabrikam.com: mixed (provider mailprotector)" in done.stdout
    assert f"  wrong: backup MX {MICROSOFT} does not belong to mailprotector" in done.stdout
    assert "contoso.com: filtered" in done.stdout


def test_the_authoritative_servers_are_asked_and_a_lagging_secondary_holds_it_back(
    auth_lab: AuthLab, tmp_path: Path
) -> None:
    auth_lab.add_zone("lagcheck.test", mx=[(0, f"{MICROSOFT}.")], ttl=7200)
    auth_lab.set_mx("lagcheck.test", [(10, "mx1.inbound.emailservice.io.")])  # ns2 never told
    config = lab_config(tmp_path, auth_lab)

    done = check("-c", config, "lagcheck.test")

    assert done.returncode == 1
    lagging = f"auth:ns2.lagcheck.test@{LAB_SECONDARY}"
    assert (
        f"  wrong: MX {MICROSOFT} does not belong to mailprotector (from {lagging})" in done.stdout
    )
    assert "  settle from now: 7200s (old MX TTL 7200s)" in done.stdout
    # The resolver alone sees only the new MX: that is what --no-authoritative trusts.
    alone = check("-c", config, "--no-authoritative", "lagcheck.test")
    assert alone.returncode == 0, alone.stdout


def test_json_has_every_source_with_its_mx_ttl_and_authority(
    auth_lab: AuthLab, tmp_path: Path
) -> None:
    auth_lab.add_zone("jsoncheck.test", mx=BACKUP_MX, ttl=900)

    done = check("-c", lab_config(tmp_path, auth_lab), "--json", "jsoncheck.test")

    assert done.returncode == 1
    (result,) = json.loads(done.stdout)["domains"]
    assert result["verdict"] == "mixed"
    assert result["wrong"] == [f"backup MX {MICROSOFT} does not belong to mailprotector"]
    assert {s["source"]: s["authoritative"] for s in result["sources"]} == {
        f"127.0.0.1:{auth_lab.resolver.port}": False,
        "auth:ns1.jsoncheck.test@127.0.0.2": True,
        f"auth:ns2.jsoncheck.test@{LAB_SECONDARY}": True,
    }
    for source in result["sources"]:
        assert source["ttl"] == 900
        assert source["mx"] == [
            {"preference": 10, "exchange": "mx1.inbound.emailservice.io"},
            {"preference": 20, "exchange": MICROSOFT},
        ]
    # First-hand 900 s, but the resolver's copy only says what it had left: default_old_ttl.
    assert result["settle_seconds"] == 3600


def test_with_a_config_its_providers_and_policy_apply(auth_lab: AuthLab, tmp_path: Path) -> None:
    auth_lab.add_zone("acmecheck.test", mx=[(10, "in1.acme-filter.example.")])
    extra = '[policy]\nsettle = "2h"\n[providers.acme]\nmx = ["*.acme-filter.example"]\n'
    config = lab_config(tmp_path, auth_lab, extra)

    done = check("-c", config, "--provider", "acme", "acmecheck.test")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "acmecheck.test: filtered (provider acme)" in done.stdout
    assert "  settle from now: 7200s (settle 7200s)" in done.stdout

    default = check("-c", config, "acmecheck.test")
    assert default.returncode == 1
    assert "MX in1.acme-filter.example does not belong to mailprotector" in default.stdout


def test_an_unanswered_resolver_is_unknown_and_exits_1(tmp_path: Path) -> None:
    config = tmp_path / "mxwatch.toml"
    config.write_text(f'[dns]\nresolvers = ["127.0.0.1:{free_port()}"]\ntimeout = "1s"\n' + _TENANT)

    done = check("-c", str(config), "--no-authoritative", "contoso.com")

    assert done.returncode == 1
    assert "contoso.com: unknown" in done.stdout
    assert "  wrong: no usable answer: timeout after 1s" in done.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "the following arguments are required: DOMAIN"),
        (["bad..example"], "'bad..example' is not a valid domain name"),
        (["--resolver", "dns.example", "a.example"], "'dns.example' is not"),
        (["--resolver", "192.0.2.1:0", "a.example"], "the port must be 1-65535"),
        (["--provider", "acme", "a.example"], "unknown provider 'acme' (known: barracuda, "),
        (["-c", "/nonexistent/given.toml", "a.example"], "/nonexistent/given.toml"),
    ],
)
def test_usage_errors_exit_2_and_name_the_bad_value(args: list[str], message: str) -> None:
    done = check(*args)
    assert done.returncode == 2
    assert message in done.stderr
    assert done.stdout == ""
