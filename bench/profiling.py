"""A py-spy profile of one `mxwatch --once`, split into parts and frames, as tables.

py-spy is for the bench only: in the venv (`.venv/bin/pip install py-spy`) or anywhere on
PATH. Without it the profile is skipped and the tables say so.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from common import MXWATCH, OnceRun, note, table

PART_IMPORTS = "imports (start-up, and modules imported on first use)"
PART_DNSPYTHON = "dnspython (any frame in dns/)"
PART_LOOP = "asyncio event loop and transports, outside dnspython"
PART_MXWATCH = "mxwatch's own code (innermost frame in mxwatch/)"
PART_OTHER = "the rest (stdlib, sqlite, logging, httpx, ...)"
PROFILE_PARTS = (PART_IMPORTS, PART_DNSPYTHON, PART_LOOP, PART_MXWATCH, PART_OTHER)
# The per-query work in dnspython, whatever the rank of these frames.
PER_QUERY_FRAMES = (
    "Resolver.resolve (dns/asyncresolver.py)",
    "from_wire (dns/message.py)",
    "make_query (dns/message.py)",
    "Message.to_wire (dns/message.py)",
    "Backend.make_socket (dns/_asyncio_backend.py)",
    "_DatagramSocket.close (dns/_asyncio_backend.py)",
    "_SelectorTransport._call_connection_lost (asyncio/selector_events.py)",
)


@dataclass
class Profile:
    note: str
    samples: int = 0
    own: Counter[str] = field(default_factory=Counter)
    inclusive: Counter[str] = field(default_factory=Counter)
    parts: Counter[str] = field(default_factory=Counter)

    def share(self, count: int) -> float:
        return count / self.samples * 100


def frame_name(text: str) -> str:
    """ "func (path/to/file.py:123)" -> "func (to/file.py)": lines differ within a function."""
    name, _, where = text.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    return f"{name} ({'/'.join(path.split('/')[-2:])})" if path else name


def part_of(frames: Sequence[str]) -> str:
    """The part of the run a py-spy sample is in (py-spy gives paths from site-packages)."""
    paths = [frame.partition(" (")[2] for frame in frames]
    if any("importlib._bootstrap" in path for path in paths):
        return PART_IMPORTS
    if any(path.startswith("dns/") for path in paths):
        return PART_DNSPYTHON
    if paths[-1].startswith(("asyncio/", "selectors.py", "socket.py")):
        return PART_LOOP
    if paths[-1].startswith("mxwatch/"):
        return PART_MXWATCH
    return PART_OTHER


def parse_profile(raw: str, note: str) -> Profile:
    """py-spy's raw format: one "frame;frame;...;frame COUNT" line per distinct stack."""
    profile = Profile(note)
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        profile.samples += int(count)
        profile.own[frame_name(frames[-1])] += int(count)
        profile.parts[part_of(frames)] += int(count)
        for frame in dict.fromkeys(frame_name(f) for f in frames):
            profile.inclusive[frame] += int(count)
    return profile


def py_spy_path() -> str | None:
    venv_bin = str(Path(sys.executable).parent)
    return shutil.which("py-spy", path=venv_bin) or shutil.which("py-spy")


def py_spy(config: Path, workdir: Path) -> Profile:
    """py-spy (in the venv or on PATH, for the bench only) over one more `--once`."""
    note(f"py-spy over mxwatch --once -c {config.name}")
    py_spy = py_spy_path()
    if py_spy is None:
        return Profile("not run: py-spy is not installed (.venv/bin/pip install py-spy)")
    raw = workdir / f"{config.stem}.profile.txt"
    argv = [py_spy, "record", "--rate", "250", "--format", "raw", "--output", str(raw), "--"]
    argv += [*MXWATCH, "--once", "-c", str(config)]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if not raw.exists():
        return Profile(f"py-spy failed: {done.stderr.strip()[-300:]}")
    return parse_profile(raw.read_text(), "250 Hz")


def render_profile(title: str, p: Profile, cpu: float, cpu_of: str) -> list[str]:
    """The profile's tables under `title`; `cpu` seconds of CPU, of `cpu_of`, are split by
    the shares."""
    if not p.samples:
        return [f"### {title}", "", f"{p.note}."]
    ours = [
        (frame, count)
        for frame, count in p.inclusive.most_common()
        if "mxwatch/" in frame or "dns/" in frame or "asyncio/tasks" in frame
    ]
    parts = [(part, p.share(p.parts[part])) for part in PROFILE_PARTS]
    return [
        f"### {title}",
        "",
        f"{p.samples} samples at {p.note}. py-spy leaves out idle samples, so a share is of CPU "
        f"time; CPU s is that share of the CPU of {cpu_of} ({cpu:.2f} s).",
        "",
        *table(
            ["part (a sample counts in the first that matches)", "share", "CPU s"],
            [(part, f"{pct:.1f} %", f"{pct * cpu / 100:.2f}") for part, pct in parts],
        ),
        *table(
            ["inclusive, top 20 frames of mxwatch, dnspython and asyncio.tasks", "share"],
            [(f"`{frame}`", f"{p.share(count):.1f} %") for frame, count in ours[:20]],
        ),
        *table(
            ["inclusive, dnspython's per-query work", "share"],
            [(f"`{f}`", f"{p.share(p.inclusive[f]):.1f} %") for f in PER_QUERY_FRAMES],
        ),
        *table(
            ["self, top 12", "share"],
            [(f"`{frame}`", f"{p.share(count):.1f} %") for frame, count in p.own.most_common(12)],
        ),
    ]


def render_steady_profile(title: str, p: Profile, steady: Sequence[OnceRun]) -> list[str]:
    """The profile of one more steady `--once`, splitting the median steady run's CPU."""
    cpu = statistics.median(x.child.cpu for x in steady)
    return render_profile(title, p, cpu, "the median steady `--once`")
