"""Security: TLS always verifies, a token for another tenant is never accepted, and a secret
pasted into a credential key is never echoed.

(Redaction of loaded secrets over all output is covered by the soak test and test_once.py.)
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import trustme

from mxwatch.sandbox.exchange_api import Fault
from tests.fixtures.faults import (  # noqa: F401 - frig_fixture registers the fixture
    FaultRig,
    check_journal,
    frig_fixture,
)
from tests.fixtures.rig import TENANT_B, Rig, contoso, enabled
from tests.fixtures.sandbox import CLIENT_ID

PACKAGE = Path(__file__).resolve().parents[2] / "mxwatch"
# Ways to switch certificate or host name verification off, in any library mxwatch uses.
UNSAFE = re.compile(
    r"verify\s*=\s*False|CERT_NONE|check_hostname\s*=\s*False|_create_unverified_context"
    r"|verify_ssl\s*=\s*False|InsecureRequestWarning"
)


def test_wrong_ca_fails_closed_with_a_clear_error(frig: FaultRig, tmp_path: Path) -> None:
    frig.policy["confirmations"] = 1
    guid = contoso(frig)
    other_ca = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    frig.overrides[("exchange", "ca_bundle")] = str(other_ca)

    run = frig.once()
    assert run.code == 1, run.stdout
    (error,) = run.named("exchange_error")
    assert error["kind"] == "transient"
    assert "TLS verification failed" in error["error"]
    assert "certificate is not trusted" in error["error"]
    assert not enabled(frig, guid)
    # Not a byte of the token request (the secret) or an API call reached the server.
    assert [r for r in frig.sandbox.requests if r.endpoint in ("token", "api")] == []
    assert frig.status()["contoso"]["state"] in ("waiting", "settling")
    check_journal(frig, run.events)


def test_no_code_path_turns_tls_verification_off() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.parent.name == "sandbox":
            continue  # the emulator's server side, which is not a client
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if UNSAFE.search(line):
                offenders.append(f"{path.relative_to(PACKAGE.parent)}:{number}: {line.strip()}")
    assert offenders == []
    assert len(list(PACKAGE.rglob("*.py"))) > 10  # the scan did look at the package


def test_the_scan_would_catch_the_usual_spellings() -> None:
    for line in (
        "httpx.AsyncClient(verify=False)",
        "session.verify = False",
        "ctx.verify_mode = ssl.CERT_NONE",
        "ctx.check_hostname = False",
        "ssl._create_unverified_context()",
    ):
        assert UNSAFE.search(line), line


def test_token_for_another_tenant_is_rejected_and_blocks_for_credentials(
    frig: FaultRig,
) -> None:
    """A token endpoint that hands out tenant B's token for tenant A (a mix-up or an attack):
    the admin API refuses it for A, one fresh token is tried, then the tenant is blocked."""
    frig.policy["confirmations"] = 1
    guid = contoso(frig)
    sandbox = frig.sandbox
    foreign = sandbox.token_response(sandbox.mint_token(TENANT_B, CLIENT_ID))
    sandbox.inject(Fault(target="token", status=200, body=foreign, times=None))

    run = frig.once()
    assert run.code == 1, run.stdout
    assert [r.status for r in sandbox.requests_to("api")] == [401, 401]
    assert len(sandbox.requests_to("token")) == 2
    (error,) = run.named("exchange_error")
    assert (error["kind"], error["status"]) == ("credentials", 401)
    status = frig.status()["contoso"]
    assert status["state"] == "blocked" and "401" in status["reason"]
    assert not enabled(frig, guid) and frig.set_calls() == []
    check_journal(frig, run.events)


# Secrets pasted where a reference belongs, each shaped like what the key expects.
PASTED = [
    ("client_secret_file", "Qz7pasted~client/secret.value"),  # a relative path
    ("certificate", "/Qz7pasted~cert/secret-value.pem"),  # an absolute path
    ("client_secret_env", "QZ7PASTED_SECRET_VALUE_X9"),  # an environment variable name
]


@pytest.mark.parametrize(("key", "secret"), PASTED)
def test_a_secret_pasted_into_a_credential_key_is_never_echoed(
    rig: Rig, key: str, secret: str
) -> None:
    """Not by check-config, the logs, status, history, nor the state file and its journal,
    which is append-only: a secret that reached it could not be scrubbed."""
    rig.credential = f'{key} = "{secret}"'
    guid = contoso(rig)
    check = rig.mxwatch("check-config")
    assert check.code == 2
    assert f"  exchange.{key}: " in check.stderr
    once = rig.once()
    assert once.code == 1
    (error,) = once.named("exchange_error")
    assert error["kind"] == "credentials"
    assert error["error"].startswith(f"exchange.{key}: ")
    assert rig.status()["contoso"]["state"] == "blocked"
    assert not enabled(rig, guid)
    runs = [check, once] + [
        rig.mxwatch(*command)
        for command in (["status"], ["status", "--json"], ["history"], ["history", "--json"])
    ]
    assert [run.code for run in runs[2:]] == [0, 0, 0, 0]
    assert f"exchange.{key}: " in runs[-1].stdout  # the journal names the key instead
    for run in runs:
        assert "QZ7" not in (run.stdout + run.stderr).upper(), run
    state = b"".join(path.read_bytes() for path in rig.tmp.glob("state.db*"))
    assert state and secret.encode() not in state
