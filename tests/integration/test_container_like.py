"""What the container image runs, without a container engine (there is none here).

Like deploy/container/Containerfile: the package is installed (not editable) into a fresh venv
owned by root, and its `mxwatch` entry point runs with no arguments, as an unprivileged user
(setpriv), with the container's environment. Only the state directory is writable by that
user; the config and the installation are read-only to it. It must start, run a cycle against
Knot and the sandbox, answer `mxwatch health`, and exit 0 on SIGTERM.

The venv is tests/fixtures/unprivileged.py's: its dependencies are copied from the project
venv (the same versions the image would get), not downloaded again. What this test is about
is the installed package and the unprivileged, read-only run.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from tests.fixtures.rig import Rig, contoso, enabled
from tests.fixtures.sandbox import SECRET, SECRET_ENV
from tests.fixtures.service import Service
from tests.fixtures.unprivileged import AS_NOBODY, NOBODY, NobodyPython

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="needs root and setpriv to run the entry point as another user",
)


def as_nobody(*command: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run in the state directory, the image's WORKDIR (never the checkout)."""
    return subprocess.run(
        [*AS_NOBODY, *command],
        capture_output=True,
        text=True,
        env=env,
        cwd=env["STATE_DIRECTORY"],
        timeout=60,
        check=False,
    )


def container_files(rig: Rig, image: Path, root: Path) -> tuple[Path, dict[str, str]]:
    """/etc/mxwatch (read-only) and /var/lib/mxwatch (the volume) under `root`, and the
    image's ENV."""
    etc, state = root / "etc", root / "state"
    for directory in (etc, state):
        directory.mkdir(mode=0o755)
    os.chown(state, NOBODY, NOBODY)
    state.chmod(0o700)
    ca = etc / "ca.pem"
    shutil.copy(rig.sandbox.ca_pem_path, ca)
    svc = Service(rig, daemon={"interval": "1s", "jitter": "0s"})
    text = svc.write().read_text()
    text = text.replace(f'state = "{rig.tmp / "state.db"}"', 'state = "auto"')
    text = text.replace(str(rig.sandbox.ca_pem_path), str(ca))
    config = etc / "mxwatch.toml"
    config.write_text(text)
    for path in (ca, config):
        path.chmod(0o644)
    env = {
        "PATH": f"{image / 'bin'}:/usr/bin:/bin",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        "STATE_DIRECTORY": str(state),
        "MXWATCH_CONFIG": str(config),
        "HOME": "/nonexistent",
        SECRET_ENV: SECRET,
    }
    return state, env


def tree(path: Path) -> set[tuple[str, int]]:
    return {(str(p), p.stat().st_mtime_ns) for p in path.rglob("*")}


def test_entrypoint_runs_unprivileged_with_only_the_state_volume_writable(
    rig: Rig, nobody_python: NobodyPython, shared_dir: Path
) -> None:
    rig.policy["confirmations"] = 1
    guid = contoso(rig)
    image = nobody_python.venv
    state, env = container_files(rig, image, shared_dir)
    where = as_nobody(
        str(nobody_python.python), "-c", "import mxwatch; print(mxwatch.__file__)", env=env
    )
    assert where.stdout.startswith(str(image)), f"not the fresh install: {where}"
    installed = tree(image)

    svc = Service(rig)
    entrypoint = [*AS_NOBODY, str(image / "bin" / "mxwatch")]
    with svc.start(command=entrypoint, env=env, cwd=state) as daemon:
        daemon.wait_for("daemon_started")
        daemon.wait_for("connector_enabled")
        daemon.wait_for("cycle_finished")
        health = as_nobody("mxwatch", "health", env=env)
        assert health.returncode == 0, health.stdout + health.stderr
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0, daemon.stderr
        assert daemon.stderr == ""

    assert enabled(rig, guid)
    assert tree(image) == installed, "nothing was written into the installation"
    written = list(state.iterdir())
    allowed = {"state.db", "state.db-wal", "state.db-shm", "state.db.lock"}
    assert {p.name for p in written} <= allowed
    assert all(p.stat().st_uid == NOBODY for p in written)
