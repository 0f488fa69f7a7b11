"""The CLI's own commands, run as a user would: check-config, status before any run, --help."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.fixtures.sandbox import make_app_certificate

TENANTS = """
[[tenant]]
name = "a"
tenant_id = "11111111-1111-1111-1111-111111111111"
connector = "Inbound from Mailprotector Only"
domains = ["a.example"]

[[tenant]]
name = "b"
tenant_id = "22222222-2222-2222-2222-222222222222"
connector = "Inbound from Mailprotector Only"
domains = ["b.example"]
client_secret_env = "MXWATCH_TEST_UNSET_SECRET"
"""


def mxwatch(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mxwatch", *args],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )


def write_config(tmp_path: Path, certificate: Path) -> Path:
    config = tmp_path / "mxwatch.toml"
    config.write_text(
        f'[daemon]\nstate = "{tmp_path / "state.db"}"\n'
        f'[exchange]\nclient_id = "33333333-3333-3333-3333-333333333333"\n'
        f'certificate = "{certificate}"\n' + TENANTS
    )
    return config


def test_check_config_lists_every_unusable_credential(tmp_path: Path) -> None:
    config = write_config(tmp_path, tmp_path / "missing.pem")
    env = {k: v for k, v in os.environ.items() if k != "MXWATCH_TEST_UNSET_SECRET"}
    done = mxwatch("check-config", "-c", str(config), env=env)
    assert done.returncode == 2
    assert "exchange.certificate:" in done.stderr
    assert "missing.pem" in done.stderr
    assert "tenant[1].client_secret_env:" in done.stderr
    assert "MXWATCH_TEST_UNSET_SECRET" in done.stderr


def test_check_config_accepts_usable_credentials(tmp_path: Path) -> None:
    cert = make_app_certificate(tmp_path)
    config = write_config(tmp_path, cert.path)
    env = {**os.environ, "MXWATCH_TEST_UNSET_SECRET": "s3cret-value-for-check"}
    done = mxwatch("check-config", "-c", str(config), env=env)
    assert done.returncode == 0, done.stderr
    assert "ok (2 tenants, 2 domains)" in done.stdout
    assert "s3cret-value-for-check" not in done.stdout + done.stderr


def test_check_config_rejects_a_pem_without_a_private_key(tmp_path: Path) -> None:
    cert = make_app_certificate(tmp_path)
    public_only = tmp_path / "public.pem"
    public_only.write_bytes(cert.certificate_pem)
    config = write_config(tmp_path, public_only)
    env = {**os.environ, "MXWATCH_TEST_UNSET_SECRET": "x" * 10}
    done = mxwatch("check-config", "-c", str(config), env=env)
    assert done.returncode == 2
    assert "exchange.certificate:" in done.stderr
    assert "private key" in done.stderr


def test_status_before_any_run_says_what_to_do(tmp_path: Path) -> None:
    config = write_config(tmp_path, tmp_path / "unused.pem")
    done = mxwatch("status", "-c", str(config))
    assert done.returncode == 1
    assert "--once" in done.stderr


def test_missing_config_file_is_a_usage_error(tmp_path: Path) -> None:
    done = mxwatch("--once", "-c", str(tmp_path / "nope.toml"))
    assert done.returncode == 2
    assert "nope.toml" in done.stderr


def test_help_names_the_commands_and_exit_codes() -> None:
    done = mxwatch("--help")
    assert done.returncode == 0
    for word in ("--once", "--dry-run", "status", "history", "check-config", "exit codes"):
        assert word in done.stdout


def test_check_config_counts_tenants_that_watch_their_accepted_domains(tmp_path: Path) -> None:
    cert = make_app_certificate(tmp_path)
    config = write_config(tmp_path, cert.path)
    text = config.read_text().replace('domains = ["a.example"]\n', "")
    config.write_text(text)
    env = {**os.environ, "MXWATCH_TEST_UNSET_SECRET": "x" * 10}
    done = mxwatch("check-config", "-c", str(config), env=env)
    assert done.returncode == 0, done.stderr
    assert "ok (2 tenants, 1 domains, 1 on their accepted domains)" in done.stdout
