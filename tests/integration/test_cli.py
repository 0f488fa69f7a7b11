"""The CLI's own commands, run as a user would: check-config, status and history, --help."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from mxwatch.sandbox.exchange_api import Fault
from tests.fixtures.rig import FILTER_MX, Rig, Tenant, contoso
from tests.fixtures.sandbox import TENANT_ID, make_app_certificate

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


def test_check_config_lists_every_unusable_credential_by_its_key(tmp_path: Path) -> None:
    config = write_config(tmp_path, tmp_path / "missing.pem")
    env = {k: v for k, v in os.environ.items() if k != "MXWATCH_TEST_UNSET_SECRET"}
    done = mxwatch("check-config", "-c", str(config), env=env)
    assert done.returncode == 2
    assert done.stderr.splitlines()[1:] == [
        "  exchange.certificate: file not found",
        "  tenant[1].client_secret_env: the environment variable it names is not set",
    ]


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


# --- status and history print text from the admin API: escaped, one line per line -----------

HOSTILE = "\x1b[31mX\n"  # colours the terminal red, then starts a line of its own
HOSTILE_ESCAPED = "\\x1b[31mX\\n"


def human_output(rig: Rig) -> list[str]:
    """`status` and `history` as a person reads them; both must succeed."""
    runs = [rig.mxwatch("status"), rig.mxwatch("history")]
    assert [run.code for run in runs] == [0, 0], [run.stderr for run in runs]
    return [run.stdout for run in runs]


def assert_escaped(text: str, escaped: str) -> None:
    assert escaped in text, text
    assert all(char.isprintable() for line in text.splitlines() for char in line), repr(text)


def test_a_connector_name_with_an_escape_sequence_is_printed_escaped(rig: Rig) -> None:
    rig.knot.add_zone("contoso.com", mx=FILTER_MX, ttl=60)
    rig.tenants.append(Tenant("contoso", TENANT_ID, ["contoso.com"]))
    rig.sandbox.set_accepted_domains(TENANT_ID, ["contoso.com"])
    rig.sandbox.add_connector(TENANT_ID, HOSTILE)  # and none under the configured name
    assert rig.once().code == 1
    reason = rig.status()["contoso"]["reason"]
    assert reason.startswith("connector missing: ") and "1 other connector(s)" in reason
    status, history = human_output(rig)
    for text in (status, history):
        assert_escaped(text, HOSTILE_ESCAPED)
    [tenant_line] = [line for line in status.splitlines() if line.startswith("contoso ")]
    assert "blocked" in tenant_line and HOSTILE_ESCAPED in tenant_line


def test_an_error_text_with_control_characters_is_printed_escaped(rig: Rig) -> None:
    contoso(rig)
    text = "Identity\x1b]0;owned\x07 is\r\nnot valid"
    body = json.dumps({"error": {"code": "BadRequest", "message": text}}).encode()
    rig.sandbox.inject(Fault(status=400, body=body, cmdlet="Get-InboundConnector", times=None))
    assert rig.once().code == 1
    assert rig.status()["contoso"]["reason"].endswith(text)  # stored as the API sent it
    for output in human_output(rig):
        assert_escaped(output, "Identity\\x1b]0;owned\\x07 is\\r\\nnot valid")
