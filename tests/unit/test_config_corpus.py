"""The bad-input corpus: one file per config error in tests/fixtures/configs/, each run through
the real command line (`python -m mxwatch check-config -c FILE`).

Each file must exit 2 and print every expected line fragment (key path and message) on
stderr; `NEVER` lists values that must not be echoed. tests/unit/test_config.py checks the
same rules through `load_config` on inline snippets; this corpus checks what an operator sees.
All files run concurrently in one module-scoped fixture: each is a fresh interpreter.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

CONFIGS = Path(__file__).resolve().parents[1] / "fixtures" / "configs"
REPO = CONFIGS.parents[2]

EXPECTED: dict[str, tuple[str, ...]] = {
    "bad-cloud": ("exchange.cloud: must be 'global', 'gcc-high', 'dod', 'china' or 'custom'",),
    "bad-domain": ("tenant[0].domains[0]: 'contoso' is not a valid mail domain",),
    "bad-duration": ('daemon.interval: must be a duration such as "90s"',),
    "bad-env-name": ("exchange.client_secret_env: must be an environment variable name",),
    "bad-guid": ("tenant[0].tenant_id: not a GUID (expected 8-4-4-4-12 hexadecimal digits)",),
    "bad-on-regression": ("policy.on_regression: must be 'alert' or 'disable'",),
    "bad-pattern": ("providers.mailprotector.mx[0]: '*.com' is too broad",),
    "bad-resolver": ('dns.resolvers[0]: \'dns.google\' is not "system", "IP"',),
    "bad-resolver-port": ("dns.resolvers[0]: '127.0.0.1:70000': the port must be 1-65535",),
    "bad-webhook": ("notify.webhook: must be an https URL",),
    "bare-number-duration": ("dns.timeout: must be a string with a unit", "not a bare number"),
    "custom-cloud-no-urls": (
        'exchange.login_url: required with cloud = "custom"',
        'exchange.admin_url: required with cloud = "custom"',
    ),
    "custom-provider-no-mx": ("providers.acme.mx: required for a provider that is not built in",),
    "duplicate-domain": (
        "tenant[0].domains[1]: 'Contoso.COM.' is the same domain as tenant[0].domains[0]",
        "tenant[1].domains[1]: 'contoso.com' is the same domain as tenant[0].domains[0]",
        "a domain belongs to one tenant",
    ),
    "duplicate-tenant": (
        "tenant[1].name: same name as tenant[0]",
        "tenant[1].tenant_id: same tenant as tenant[0]",
    ),
    "empty-domains": ("tenant[0].domains: must not be empty",),
    "host-bits-sender-ips": (
        "providers.mailprotector.sender_ips[0]: '192.0.2.1/24' is not an IPv4 range",
    ),
    "http-login-url": ("exchange.login_url: must be an https URL",),
    "inline-secret": (
        "exchange.client_secret: unknown key; secrets are never written in the config",
        "tenant[0]: no credential",
    ),
    "ipv6-sender-ips": (
        "providers.mailprotector.sender_ips[0]: '2001:db8::/32': Exchange connectors accept "
        "IPv4 sender ranges only",
    ),
    "managed-and-ignored": ("tenant[0].domains[1]: contoso.net is also in tenant[0].ignore",),
    "many-errors": (
        "has 4 problem(s)",
        "daemon.interval: must be a duration",
        "dns.resolvers[0]: 'not-an-ip' is not",
        "policy.confirmations: must be at least 1",
        "tenant[0].tenant_id: not a GUID",
    ),
    "missing-certificate-file": ("exchange.certificate: file not found",),
    "missing-tenant-id": ("tenant[0].tenant_id: required key is missing",),
    "over-long-durations": (
        "has 5 problem(s)",
        "daemon.interval: must be at most 1d",
        "policy.min_settle: must be at most 30d",
        "policy.recheck: must be at most 7d",
        "exchange.timeout: must be at most 10m",
        "tenant[0].tenant_id: not a GUID",
    ),
    "negative-confirmations": ("policy.confirmations: must be at least 1",),
    "no-credential": ("tenant[0]: no credential; set certificate, client_secret_file",),
    "no-tenant": ("tenant: at least one [[tenant]] is required",),
    "not-utf8": ("not-utf8.toml: not UTF-8 text (byte",),
    "toml-syntax": ("toml-syntax.toml: TOML syntax error", "(at line 3, column"),
    "two-credentials": ("exchange: set only one of certificate, client_secret_file",),
    "unknown-key-nested": ("policy.confirmation: unknown key (did you mean 'confirmations'?)",),
    "unknown-key-tenant": ("tenant[0].domain: unknown key (did you mean 'domains'?)",),
    "unknown-provider": ("tenant[0].provider: no provider named 'acme' (known: barracuda, ",),
    "unknown-table": ("logging: unknown key",),
    "urls-with-named-cloud": ('exchange.login_url: only allowed with cloud = "custom"',),
    "wrong-type": ("dns.authoritative: must be true or false",),
}

# Values that would be secrets had the operator put them there: never printed back.
NEVER: dict[str, tuple[str, ...]] = {
    "inline-secret": ("Qx8~inline-secret-value-9f2",),
    "bad-env-name": ("Qx8~pasted secret value",),
    "bad-webhook": ("webhooksecretpart", "hooks.example.net"),
    "missing-certificate-file": ("does-not-exist",),
}


@dataclass(frozen=True)
class Outcome:
    code: int
    stdout: str
    stderr: str


def check_config(path: Path) -> Outcome:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MXWATCH_")}
    done = subprocess.run(
        [sys.executable, "-m", "mxwatch", "check-config", "-c", str(path)],
        capture_output=True,
        text=True,
        errors="replace",
        env=env,
        cwd=REPO,
        timeout=120,
        check=False,
    )
    return Outcome(done.returncode, done.stdout, done.stderr)


@pytest.fixture(scope="module")
def outcomes() -> dict[str, Outcome]:
    names = sorted(EXPECTED)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = pool.map(check_config, (CONFIGS / f"{name}.toml" for name in names))
        return dict(zip(names, results, strict=True))


def test_every_fixture_has_expectations() -> None:
    on_disk = {path.stem for path in CONFIGS.glob("*.toml")}
    assert on_disk == set(EXPECTED)
    assert len(on_disk) >= 20


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bad_config_is_refused_with_its_key_path(name: str, outcomes: dict[str, Outcome]) -> None:
    outcome = outcomes[name]
    assert outcome.code == 2, outcome
    assert outcome.stdout == ""
    lines = outcome.stderr.splitlines()
    assert lines[0].startswith("mxwatch: the configuration has "), outcome.stderr
    # One indented line per problem, no traceback.
    assert all(line.startswith("  ") for line in lines[1:]), outcome.stderr
    assert len(lines) - 1 == int(lines[0].split(" has ")[1].split()[0])
    for fragment in EXPECTED[name]:
        assert fragment in outcome.stderr, f"{fragment!r} not in:\n{outcome.stderr}"
    for value in NEVER.get(name, ()):
        assert value not in outcome.stderr
