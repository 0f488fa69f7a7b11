"""Hostile config values through the real command line (issue 5, item 3).

Huge tenants, over-long and control-character names, duplicates at scale, unreadable
certificates and a world-readable secret file (a warning, not an error), each as an operator
would meet it: `python -m mxwatch ...` in a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fixtures.rig import Rig, contoso
from tests.fixtures.sandbox import CLIENT_ID, SECRET, make_app_certificate
from tests.fixtures.unprivileged import AS_NOBODY, NobodyPython

REPO = Path(__file__).resolve().parents[2]
TENANT_ID = "11111111-1111-1111-1111-111111111111"


@dataclass(frozen=True)
class Outcome:
    code: int
    stdout: str
    stderr: str


def mxwatch(*args: str, as_nobody: NobodyPython | None = None) -> Outcome:
    """The checkout's mxwatch; or, given `as_nobody`, its installed copy run as uid 65534."""
    command = [sys.executable, "-m", "mxwatch", *args]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MXWATCH_")}
    env["PYTHONPATH"] = str(REPO)
    if as_nobody is not None:
        command = [*AS_NOBODY, str(as_nobody.python), "-m", "mxwatch", *args]
        del env["PYTHONPATH"]
    done = subprocess.run(
        command, capture_output=True, text=True, env=env, cwd="/", timeout=120, check=False
    )
    return Outcome(done.returncode, done.stdout, done.stderr)


def config_text(
    *,
    domains: list[str] | None = None,
    name: str = "contoso",
    connector: str = "Inbound from Mailprotector Only",
    credential: str = 'certificate = "/etc/mxwatch/app.pem"',
    extra_tenants: str = "",
) -> str:
    # json.dumps writes a valid TOML basic string: control characters become \u escapes.
    return (
        "[exchange]\n"
        f'client_id = "{CLIENT_ID}"\n'
        f"{credential}\n"
        "[[tenant]]\n"
        f"name = {json.dumps(name)}\n"
        f'tenant_id = "{TENANT_ID}"\n'
        f"connector = {json.dumps(connector)}\n"
        f"domains = {json.dumps(domains or ['contoso.com'])}\n"
        f"{extra_tenants}"
    )


def write(directory: Path, text: str) -> Path:
    path = directory / "mxwatch.toml"
    path.write_text(text)
    return path


def problems_of(outcome: Outcome) -> list[str]:
    assert outcome.code == 2, outcome
    lines = outcome.stderr.splitlines()
    assert lines[0].startswith("mxwatch: the configuration has ")
    return [line.strip() for line in lines[1:]]


def test_ten_thousand_domains_in_one_tenant_load(tmp_path: Path) -> None:
    cert = make_app_certificate(tmp_path)
    cert.path.chmod(0o600)
    domains = [f"d{i:05d}.example-{i % 97}.com" for i in range(10_000)]
    path = write(tmp_path, config_text(domains=domains, credential=f'certificate = "{cert.path}"'))
    outcome = mxwatch("check-config", "-c", str(path))
    assert outcome.code == 0, outcome.stderr
    assert outcome.stdout.strip() == f"{path}: ok (1 tenants, 10000 domains)"
    assert outcome.stderr == ""


def test_a_duplicate_among_ten_thousand_is_named(tmp_path: Path) -> None:
    domains = [f"d{i:05d}.example.com" for i in range(10_000)]
    domains[9_999] = "D00017.Example.COM."  # the same as domains[17], spelled otherwise
    outcome = mxwatch("check-config", "-c", str(write(tmp_path, config_text(domains=domains))))
    assert problems_of(outcome) == [
        "tenant[0].domains[9999]: 'D00017.Example.COM.' is the same domain as "
        "tenant[0].domains[17] ('d00017.example.com'), both d00017.example.com"
    ]


def test_duplicate_tenant_and_domain_across_tenants(tmp_path: Path) -> None:
    twin = (
        "[[tenant]]\n"
        'name = "CONTOSO"\n'
        f'tenant_id = "{TENANT_ID.upper()}"\n'
        'connector = "Inbound from Mailprotector Only"\n'
        'domains = ["contoso.com"]\n'
    )
    outcome = mxwatch("check-config", "-c", str(write(tmp_path, config_text(extra_tenants=twin))))
    problems = problems_of(outcome)
    assert "tenant[1].name: same name as tenant[0]" in problems
    assert any(p.startswith("tenant[1].tenant_id: same tenant as tenant[0]") for p in problems)
    assert any(
        p.startswith("tenant[1].domains[0]: 'contoso.com' is the same domain as tenant[0]")
        for p in problems
    )


def test_a_300_character_domain_is_refused_with_its_key_path(tmp_path: Path) -> None:
    long_name = ".".join(["a" * 60] * 5) + ".com"  # 60 x 5 + 4 dots + 4 = 308 characters
    outcome = mxwatch(
        "check-config",
        "-c",
        str(write(tmp_path, config_text(domains=["contoso.com", long_name]))),
    )
    [problem] = problems_of(outcome)
    assert problem.startswith("tenant[0].domains[1]: ")
    assert problem.endswith("is longer than 253 characters")


def test_a_63_plus_character_label_is_refused(tmp_path: Path) -> None:
    outcome = mxwatch(
        "check-config", "-c", str(write(tmp_path, config_text(domains=["a" * 64 + ".com"])))
    )
    [problem] = problems_of(outcome)
    assert problem.startswith("tenant[0].domains[0]: ")


@pytest.mark.parametrize(
    ("field", "value", "key"),
    [
        ("name", "contoso\u001b[31m", "tenant[0].name"),
        ("connector", "Inbound\u001b]0;pwned\u0007 from Mailprotector", "tenant[0].connector"),
        ("connector", "Inbound\u202efrom", "tenant[0].connector"),
        ("domains", ["conto\u001b[2Jso.com"], "tenant[0].domains[0]"),
        ("domains", ["contoso.com\u0000.evil"], "tenant[0].domains[0]"),
        ("domains", ["contoso\r\n.com"], "tenant[0].domains[0]"),
    ],
)
def test_control_characters_are_refused_and_never_echoed_raw(
    tmp_path: Path, field: str, value: object, key: str
) -> None:
    outcome = mxwatch(
        "check-config",
        "-c",
        str(write(tmp_path, config_text(**{field: value}))),  # type: ignore[arg-type]
    )
    problems = problems_of(outcome)
    assert [p for p in problems if p.startswith(f"{key}: ")], problems
    text = outcome.stderr.replace("\n", "")
    assert all(char.isprintable() for char in text), repr(outcome.stderr)


def test_a_directory_as_certificate_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "app.pem").mkdir()
    config = config_text(credential=f'certificate = "{tmp_path / "app.pem"}"')
    outcome = mxwatch("check-config", "-c", str(write(tmp_path, config)))
    assert problems_of(outcome) == ["exchange.certificate: is a directory, not a file"]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run the CLI as nobody")
def test_an_unreadable_certificate_is_a_clear_error(
    shared_dir: Path, nobody_python: NobodyPython
) -> None:
    cert = make_app_certificate(shared_dir)
    cert.path.chmod(0o000)
    path = write(shared_dir, config_text(credential=f'certificate = "{cert.path}"'))
    path.chmod(0o644)
    outcome = mxwatch("check-config", "-c", str(path), as_nobody=nobody_python)
    assert problems_of(outcome) == [
        "exchange.certificate: permission denied (cannot read the file)"
    ]


def test_world_readable_secret_file_is_a_warning_in_check_config(tmp_path: Path) -> None:
    secret = tmp_path / "client-secret"
    secret.write_text(SECRET + "\n")
    secret.chmod(0o644)
    config = config_text(credential=f'client_secret_file = "{secret}"')
    path = write(tmp_path, config)
    outcome = mxwatch("check-config", "-c", str(path))
    assert outcome.code == 0, outcome.stderr
    assert outcome.stdout.strip() == f"{path}: ok (1 tenants, 1 domains)"
    assert outcome.stderr.strip() == (
        "mxwatch: warning: exchange.client_secret_file: the file is readable by every user "
        "(mode 0644); it holds a secret: chmod o-rwx it (0600, or 0640 for a group)"
    )
    assert SECRET not in outcome.stderr + outcome.stdout
    secret.chmod(0o600)
    quiet = mxwatch("check-config", "-c", str(path))
    assert (quiet.code, quiet.stderr) == (0, "")


def test_world_readable_certificate_is_logged_at_once_start(rig: Rig) -> None:
    cert = make_app_certificate(rig.tmp)
    cert.path.chmod(0o644)
    rig.sandbox.register_app(TENANT_ID, CLIENT_ID, certificate_pem=cert.certificate_pem)
    rig.credential = f'certificate = "{cert.path}"'
    contoso(rig)
    run = rig.once()
    [warning] = run.named("secret_file_permissions")
    assert warning["level"] == "warning"
    assert warning["key"] == "exchange.certificate"
    assert warning["mode"] == "0644"
    assert "path" not in warning and str(cert.path) not in run.stdout
    assert run.named("cycle_finished"), run.stderr  # a warning, the cycle still runs
    assert cert.private_key_pem.decode().splitlines()[1] not in run.stdout
    cert.path.chmod(0o600)
    assert rig.once().named("secret_file_permissions") == []
