"""`mxwatch providers [--json] [-c FILE]` through the real CLI (issue 10, item 6).

Without -c it lists the built-in profiles and reads no config; with -c, the config's
providers, each marked built-in, configured or overrides built-in.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from mxwatch.providers import BUILTIN_PROVIDERS

# A config needs a tenant and a credential reference; `providers` reads neither.
CONFIG = """
[providers.mailprotector]
mx = ["MX1.Filter.Example."]
sender_ips = ["192.0.2.0/24"]

[providers.acme]
mx = ["*.in.acme-filter.example"]

[exchange]
client_id = "22222222-2222-2222-2222-222222222222"
client_secret_env = "MXWATCH_TEST_UNSET_SECRET"

[[tenant]]
name = "t"
tenant_id = "11111111-1111-1111-1111-111111111111"
connector = "Inbound from Filter Only"
domains = ["contoso.com"]
provider = "acme"
"""


def providers(*args: str) -> subprocess.CompletedProcess[str]:
    # A config named by the environment must not be read: only -c brings one in.
    env = {**os.environ, "MXWATCH_CONFIG": "/nonexistent/mxwatch.toml"}
    return subprocess.run(
        [sys.executable, "-m", "mxwatch", "providers", *args],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )


def listed(done: subprocess.CompletedProcess[str]) -> dict[str, dict[str, Any]]:
    assert done.returncode == 0, done.stderr
    return {entry["name"]: entry for entry in json.loads(done.stdout)["providers"]}


def test_without_a_config_it_lists_the_built_ins() -> None:
    done = providers()
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    heads = [line for line in done.stdout.splitlines() if not line.startswith(" ")]
    assert heads == [f"{name}  (built-in)" for name in BUILTIN_PROVIDERS]
    assert "    mx:         *.inbound.emailservice.io, " in done.stdout
    assert ", inbound.emailservice.co\n" in done.stdout  # the apex names too
    assert "    sender_ips: 94.100.128.0/20, 185.140.204.0/22, " in done.stdout


def test_json_without_a_config_is_the_built_in_profiles() -> None:
    entries = listed(providers("--json"))
    assert list(entries) == list(BUILTIN_PROVIDERS)
    for name, provider in BUILTIN_PROVIDERS.items():
        assert entries[name] == {
            "name": name,
            "origin": "built-in",
            "mx": list(provider.mx),
            "sender_ips": [str(network) for network in provider.sender_ips],
            "source": provider.source,
        }


def test_with_a_config_overrides_and_additions_are_marked(tmp_path: Path) -> None:
    config = tmp_path / "mxwatch.toml"
    config.write_text(CONFIG, encoding="utf-8")
    entries = listed(providers("--json", "-c", str(config)))
    assert list(entries) == [*BUILTIN_PROVIDERS, "acme"]
    overridden = entries["mailprotector"]
    assert overridden["origin"] == "overrides built-in"
    assert overridden["mx"] == ["mx1.filter.example"]  # normalised
    assert overridden["sender_ips"] == ["192.0.2.0/24"]
    assert overridden["source"].endswith("overridden in config")
    assert entries["acme"] == {
        "name": "acme",
        "origin": "configured",
        "mx": ["*.in.acme-filter.example"],
        "sender_ips": [],
        "source": "config",
    }
    assert entries["mimecast"]["origin"] == "built-in"

    text = providers("-c", str(config)).stdout.splitlines()
    assert "mailprotector  (overrides built-in)" in text
    assert "acme  (configured)" in text
    assert "mimecast  (built-in)" in text


def test_a_bad_config_exits_2_with_its_problems(tmp_path: Path) -> None:
    config = tmp_path / "mxwatch.toml"
    config.write_text(CONFIG.replace('"*.in.acme-filter.example"', '"*.example"'), "utf-8")
    done = providers("-c", str(config))
    assert done.returncode == 2
    assert "providers.acme.mx[0]: '*.example' is too broad" in done.stderr
    assert done.stdout == ""
