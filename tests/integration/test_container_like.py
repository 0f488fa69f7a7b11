"""What the container image runs, without a container engine (there is none here).

Like deploy/container/Containerfile: the package is installed from its sources (not editable)
into a fresh venv owned by root, and its `mxwatch` entry point runs with no arguments, as an
unprivileged user (setpriv), with the container's environment. Only the state directory is
writable by that user; the config and the installation are read-only to it. It must start,
run a cycle against Knot and the sandbox, answer `mxwatch health`, and exit 0 on SIGTERM.

The dependencies are not downloaded again: a .pth file lends the fresh venv the project
venv's site-packages (the same versions the image would get). What this test is about is
the installed package and the unprivileged, read-only run; a second full dependency install
would add half a minute and test pip instead.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.rig import Rig, contoso, enabled
from tests.fixtures.sandbox import SECRET, SECRET_ENV
from tests.fixtures.service import Service

REPO = Path(__file__).resolve().parents[2]
NOBODY = 65534
AS_NOBODY = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--"]

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="needs root and setpriv to run the entry point as another user",
)


@pytest.fixture(scope="module")
def image() -> Iterator[Path]:
    """A directory laid out like the image: a fresh venv with mxwatch installed in it."""
    root = Path(tempfile.mkdtemp(prefix="mxwatch-image-"))
    root.chmod(0o755)  # the unprivileged user must reach the venv inside
    source = root / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source)
    shutil.copytree(REPO / "mxwatch", source / "mxwatch", ignore=shutil.ignore_patterns("*.pyc"))
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    pip = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python")]
    subprocess.run(
        [*pip, "install", "-q", "--no-deps", str(source)], check=True, capture_output=True
    )
    shutil.rmtree(source)
    site = Path(sysconfig.get_paths(vars={"base": str(venv)})["purelib"])
    deps = sysconfig.get_paths()["purelib"]
    (site / "_mxwatch_test_deps.pth").write_text(deps + "\n")
    yield venv
    shutil.rmtree(root)


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


def container_files(rig: Rig, image: Path) -> tuple[Path, dict[str, str]]:
    """/etc/mxwatch (read-only) and /var/lib/mxwatch (the volume), and the image's ENV."""
    root = image.parent
    etc, state = root / "etc", root / "state"
    for directory in (etc, state):
        shutil.rmtree(directory, ignore_errors=True)
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
    rig: Rig, image: Path
) -> None:
    rig.policy["confirmations"] = 1
    guid = contoso(rig)
    state, env = container_files(rig, image)
    where = as_nobody(
        str(image / "bin" / "python"), "-c", "import mxwatch; print(mxwatch.__file__)", env=env
    )
    if where.returncode != 0 and "ModuleNotFoundError" in where.stderr:
        pytest.skip(f"the project venv is not readable by uid {NOBODY}: {where.stderr[-200:]}")
    assert where.stdout.startswith(str(image)), "the fresh install, not the checkout, runs"
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
