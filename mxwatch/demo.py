"""`mxwatch demo`: a whole cutover on this machine, with no tenant and no network.

It starts the embedded DNS servers (sandbox/dns_server.py: a resolver's view on 127.0.0.1, a
primary on 127.0.0.2 and its lagging secondary on 127.0.0.3) and the Exchange Online sandbox
over HTTPS (sandbox/exchange_api.py), writes a config for them in a new temporary directory,
and runs the real daemon (daemon.py) on it, a cycle every second. Then it plays a scripted
cutover by changing DNS records, narrating each step before the daemon's own log lines:

contoso (accepted domains contoso.test and contoso-shop.test; a well-formed connector, disabled)
  1. MX on Microsoft 365: `direct`.
  2. The filter added as a backup MX: `mixed`; mxwatch waits.
  3. The MX moved to the filter on the primary, the secondary not transferred yet: held.
  4. The secondary transfers: every source agrees, `settling` until the old MX's TTL is over.
  5. The audit, the enable and its read-back: `enabled`.
  6. contoso-shop.test goes back to Microsoft 365: `regressed`, an error-level alert.
fabrikam (fabrikam.test, on the filter; a connector not restricted to the filter's IPs)
  `blocked` from its first cycle, with the audit's reason.

Nothing in the cycle is mocked: the daemon asks the DNS servers over UDP (TCP when an answer is
truncated) and the sandbox over HTTPS through MSAL and httpx with a certificate, and the gate is
the real one, configured with the real keys (policy.settle = "auto" waits out an old TTL of a
few seconds). The demo learns what happened only as `mxwatch status` does, from the state file,
and from the sandbox. Beside the state it writes `demo.json`: when each step began, the
connector writes the sandbox received, and how the connectors ended; tests/integration/
test_demo.py checks the journal against it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import logs
from .config import load_config
from .daemon import Daemon
from .model import TenantState, Verdict
from .settings import Config
from .store import Store, StoredTenant, StoreError

if TYPE_CHECKING:
    from .sandbox.dns_server import DnsLab
    from .sandbox.exchange_api import ExchangeSandbox

Say = Callable[[str], None]

INTERVAL = 1  # seconds between two cycles of the daemon
OLD_TTL = 8  # seconds: the TTL of the MX before the cutover, which settle = "auto" waits out
NEW_TTL = 300  # the TTL of the MX on the filter (it changes no wait)
STEP_TIMEOUT = 20.0  # seconds one step may take before the demo gives up
HELD_CYCLES = 3  # cycles the demo lets the lagging secondary hold the cutover
_POLL = 0.1  # seconds between two looks at the state file

CLIENT_ID = "d3e0d3e0-0000-4000-8000-00000000d3e0"
CONNECTOR = "Inbound from Mailprotector Only"
FILTER_IPS = ("192.0.2.0/24",)  # the filter's sender range in the demo (TEST-NET-1)
FILTER_MX = ((10, "mx1.inbound.emailservice.io."), (20, "mx2.inbound.emailservice.cc."))
BACKUP_MX = "mx1.inbound.emailservice.io."


@dataclass(frozen=True)
class DemoTenant:
    name: str
    tenant_id: str
    accepted: tuple[str, ...]
    connector: Mapping[str, Any] = field(default_factory=dict)  # fields unlike the default


CONTOSO = DemoTenant(
    "contoso",
    "c0c0c0c0-0000-4000-8000-00000000c0c0",
    ("contoso.test", "contoso-shop.test", "contoso.onmicrosoft.com"),
)
FABRIKAM = DemoTenant(
    "fabrikam",
    "fabfab00-0000-4000-8000-0000000fab00",
    ("fabrikam.test", "fabrikam.onmicrosoft.com"),
    {"RestrictDomainsToIPAddresses": False},  # takes mail from anywhere: fails the audit
)
CONTOSO_DOMAINS = ("contoso.test", "contoso-shop.test")
REGRESSING = "contoso-shop.test"


def microsoft_mx(domain: str) -> str:
    """The Microsoft 365 MX host of a domain, as Exchange Online names it."""
    return domain.replace(".", "-") + ".mail.protection.outlook.com."


class DemoUnavailable(Exception):
    """What the demo needs is not installed; the message says what to install."""


class DemoFailed(Exception):
    """The cutover did not go as scripted (or was interrupted); the message says where."""


@dataclass(frozen=True)
class DemoResult:
    directory: Path
    kept: bool
    seconds: float
    tenants: tuple[StoredTenant, ...]


# --------------------------------------------------------------------------- running it


def run(*, keep: bool, verbose: bool, log_level: str, say: Say) -> DemoResult:
    """Play the demo; `say` prints a line of narration. DemoFailed keeps the directory."""
    try:
        import jwt  # noqa: F401  (the sandbox verifies client assertions with it)
        import trustme  # noqa: F401

        from .sandbox.dns_server import DnsLab
        from .sandbox.exchange_api import ExchangeSandbox
    except ImportError as exc:
        raise DemoUnavailable(
            f"mxwatch demo needs the sandbox extra ({exc.name or 'a module'} is missing): "
            "pip install 'mxwatch[sandbox]', or from a checkout pip install '.[sandbox]'"
        ) from None
    started = time.monotonic()
    directory = Path(tempfile.mkdtemp(prefix="mxwatch-demo-"))
    story = Story(started)
    quiet = None if verbose else Quiet()
    try:
        with contextlib.ExitStack() as stack:
            lab = DnsLab()
            try:
                lab.start()
            except OSError as exc:
                raise DemoFailed(
                    f"the demo's DNS servers cannot listen on 127.0.0.1-127.0.0.3: {exc} "
                    "(on Linux all of 127.0.0.0/8 is loopback)"
                ) from exc
            stack.callback(lab.stop)
            sandbox = stack.enter_context(ExchangeSandbox(workdir=directory))
            world = World(directory, lab, sandbox)
            try:
                config = load_config(world.write_config(), environ={})
                logs.configure(log_level, keep=quiet)
                _introduce(world, say)
                tenants = asyncio.run(_play(config, world, story, say, quiet))
            finally:
                world.write_evidence(story)
    except BaseException:
        say(f"The state, config and demo.json are kept in {directory}")
        raise
    if not keep:
        shutil.rmtree(directory, ignore_errors=True)
    return DemoResult(directory, keep, time.monotonic() - started, tenants)


def _introduce(world: World, say: Say) -> None:
    lab = world.lab
    say("mxwatch demo: a cutover played on this machine, with no tenant and no network")
    say(
        f"    DNS: resolver {lab.resolver_spec}; ns1 (primary) {lab.primary.address}:{lab.port},"
        f" ns2 (secondary) {lab.secondary.address}:{lab.port}"
    )
    say(f"    Exchange Online: the sandbox at {world.sandbox.url}")
    say(f"    mxwatch: the daemon, a cycle every {INTERVAL}s, config {world.config_path}")


async def _play(
    config: Config, world: World, story: Story, say: Say, quiet: Quiet | None
) -> tuple[StoredTenant, ...]:
    lab = world.lab
    story.step(
        say,
        "direct",
        "1. contoso's MX is on Microsoft 365; fabrikam's is on the filter, but its connector "
        "takes mail from anywhere",
    )
    daemon = Daemon(config, dry_run_flag=False, environ={})
    running = asyncio.create_task(daemon.run(), name="mxwatch-daemon")
    assert isinstance(config.daemon.state, Path)  # the demo writes an SQLite state
    watch = Watch(config.daemon.state, running)
    try:
        tenants = await watch.until(
            "contoso direct and fabrikam blocked",
            lambda t: (
                _verdicts(t, CONTOSO) == dict.fromkeys(CONTOSO_DOMAINS, Verdict.DIRECT)
                and _state(t, FABRIKAM) is TenantState.BLOCKED
            ),
        )
        say(f"    contoso waits for: {tenants['contoso'].record.waiting_for}")
        say(f"    fabrikam is blocked: {tenants['fabrikam'].record.reason}")

        backup = BACKUP_MX.rstrip(".")
        story.step(say, "mixed", f"2. contoso adds the filter as a backup MX (20 {backup})")
        for domain in CONTOSO_DOMAINS:
            lab.set_mx(domain, [(0, microsoft_mx(domain)), (20, BACKUP_MX)], ttl=OLD_TTL)
        lab.transfer()
        tenants = await watch.until(
            "contoso mixed",
            lambda t: _verdicts(t, CONTOSO) == dict.fromkeys(CONTOSO_DOMAINS, Verdict.MIXED),
        )
        say(f"    contoso waits for: {tenants['contoso'].record.waiting_for}")

        changed = story.step(
            say,
            "primary_changed",
            "3. contoso moves its MX to the filter on ns1, the primary; ns2, the secondary, "
            "has not transferred the zone yet",
        )
        for domain in CONTOSO_DOMAINS:
            lab.set_mx(domain, FILTER_MX, ttl=NEW_TTL)
        tenants = await watch.cycles_after(changed, HELD_CYCLES, CONTOSO)
        if _verdicts(tenants, CONTOSO) != dict.fromkeys(CONTOSO_DOMAINS, Verdict.MIXED):
            verdicts = ", ".join(f"{d} {v}" for d, v in _verdicts(tenants, CONTOSO).items())
            raise DemoFailed(f"the lagging secondary did not hold contoso: {verdicts}")
        primary, secondary = lab.serials(CONTOSO_DOMAINS[0])
        say(
            f"    held for {HELD_CYCLES} cycles, with no log line: the resolver and ns1 (serial "
            f"{primary}) answer the filter, ns2 (serial {secondary}) still the backup MX"
        )
        say(f"    contoso waits for: {tenants['contoso'].record.waiting_for}")

        story.step(
            say,
            "secondary_transferred",
            "4. ns2 transfers the zone: every source answers the filter",
        )
        lab.transfer()
        tenants = await watch.until(
            "contoso settling", lambda t: _state(t, CONTOSO) is TenantState.SETTLING
        )
        await _count_down(tenants["contoso"], watch, say)

        story.step(
            say,
            "enable",
            "5. eligible: the next cycle reads the connector, audits it, enables it and reads "
            "it back",
        )
        if quiet is not None:
            quiet.forget(CONTOSO.name)  # its audit shows again, though it passed before
        tenants = await watch.until(
            "contoso enabled", lambda t: _state(t, CONTOSO) is TenantState.ENABLED
        )
        enabled = world.connector(CONTOSO)["Enabled"]
        say(f"    the sandbox's connector {CONNECTOR!r} of contoso: Enabled={enabled}")

        story.step(
            say,
            "regression",
            f"6. someone puts {REGRESSING}'s MX back on Microsoft 365, on both servers",
        )
        lab.set_mx(REGRESSING, [(0, microsoft_mx(REGRESSING))], ttl=OLD_TTL)
        lab.transfer()
        tenants = await watch.until(
            "contoso regressed", lambda t: _state(t, CONTOSO) is TenantState.REGRESSED
        )
        say(
            '    on_regression = "alert": the connector stays on, and mail to '
            f"{REGRESSING} bounces until its MX is back on the filter"
        )
        story.step(say, "done", "The end: stopping the daemon")
    finally:
        daemon.stop()
        await _finish(running)
        watch.close()
    return tuple(tenants.values())


async def _finish(running: asyncio.Task[int]) -> None:
    try:
        await running
    except Exception as exc:
        raise DemoFailed(f"the daemon failed: {type(exc).__name__}: {exc}") from exc


async def _count_down(tenant: StoredTenant, watch: Watch, say: Say) -> None:
    """Say when the tenant becomes eligible, then count down to it every two seconds."""
    record = tenant.record
    at = record.eligible_at
    if at is None:
        raise DemoFailed(f"contoso is settling without an eligible_at: {record}")
    say(f"    settling: eligible at {_clock(at)} ({record.eligible_reason})")
    while (left := (at - datetime.now(UTC)).total_seconds()) > 1.0:
        say(f"    eligible in {left:.0f}s")
        await watch.sleep(min(2.0, left - 0.5))


# --------------------------------------------------------------------------- the world


class World:
    """The demo's DNS and Exchange, and the config that points mxwatch at them."""

    def __init__(self, directory: Path, lab: DnsLab, sandbox: ExchangeSandbox) -> None:
        import trustme

        self.directory = directory
        self.lab = lab
        self.sandbox = sandbox
        self.config_path = directory / "mxwatch.toml"
        self.certificate_path = directory / "app.pem"
        # The app's credential: a certificate, as Microsoft documents for this API. Entra
        # (and MSAL's assertion) needs RSA.
        leaf = trustme.CA(key_type=trustme.KeyType.RSA).issue_cert(
            "mxwatch-demo-app", key_type=trustme.KeyType.RSA
        )
        leaf.private_key_and_cert_chain_pem.write_to_path(str(self.certificate_path))
        self.certificate_path.chmod(0o600)
        self.guids: dict[str, str] = {}
        for tenant in (CONTOSO, FABRIKAM):
            sandbox.add_tenant(tenant.tenant_id, accepted_domains=tenant.accepted)
            sandbox.register_app(
                tenant.tenant_id, CLIENT_ID, certificate_pem=leaf.cert_chain_pems[0].bytes()
            )
            fields = {"SenderIPAddresses": list(FILTER_IPS), **tenant.connector}
            self.guids[tenant.name] = sandbox.add_connector(tenant.tenant_id, CONNECTOR, **fields)
        for domain in CONTOSO_DOMAINS:
            lab.add_zone(domain, mx=[(0, microsoft_mx(domain))], ttl=OLD_TTL)
        lab.add_zone("fabrikam.test", mx=FILTER_MX, ttl=NEW_TTL)

    def connector(self, tenant: DemoTenant) -> dict[str, Any]:
        return self.sandbox.connector(tenant.tenant_id, self.guids[tenant.name])

    def write_config(self) -> Path:
        """The config: every key a real one, with short intervals."""

        def text(value: object) -> str:
            return json.dumps(str(value))  # a TOML basic string

        lines = [
            "# Written by `mxwatch demo`: the embedded DNS servers and the Exchange sandbox.",
            "[daemon]",
            f"state = {text(self.directory / 'state.db')}",
            f'interval = "{INTERVAL}s"',
            'jitter = "0s"',
            "[dns]",
            f"resolvers = [{text(self.lab.resolver_spec)}]",
            "authoritative = true",
            f"authoritative_port = {self.lab.port}",
            'timeout = "1s"',
            "[policy]",
            "confirmations = 2",
            'settle = "auto"',
            'min_settle = "3s"',
            'default_old_ttl = "5s"',
            'on_regression = "alert"',
            "[exchange]",
            'cloud = "custom"',
            f"login_url = {text(self.sandbox.url)}",
            f"admin_url = {text(self.sandbox.url)}",
            f"ca_bundle = {text(self.sandbox.ca_pem_path)}",
            f"client_id = {text(CLIENT_ID)}",
            f"certificate = {text(self.certificate_path)}",
            "[providers.mailprotector]",
            f"sender_ips = {json.dumps(list(FILTER_IPS))}",
        ]
        for tenant in (CONTOSO, FABRIKAM):
            lines += [
                "[[tenant]]",
                f"name = {text(tenant.name)}",
                f"tenant_id = {text(tenant.tenant_id)}",
                f"connector = {text(CONNECTOR)}",
            ]
        self.config_path.write_text("\n".join(lines) + "\n")
        return self.config_path

    def write_evidence(self, story: Story) -> None:
        """demo.json: the steps, the connector writes the sandbox received, the connectors."""
        wall, clock = datetime.now(UTC), time.monotonic()
        names = {t.tenant_id: t.name for t in (CONTOSO, FABRIKAM)}
        writes = [
            {
                "tenant": names.get(request.tenant or "", request.tenant),
                "at": _iso(wall - timedelta(seconds=clock - request.at)),
                "parameters": dict(request.parameters),
                "status": request.status,
            }
            for request in self.sandbox.requests_to("api")
            if request.cmdlet == "Set-InboundConnector"
        ]
        connectors = {
            tenant.name: {key: self.connector(tenant)[key] for key in ("Name", "Guid", "Enabled")}
            for tenant in (CONTOSO, FABRIKAM)
        }
        document = {
            "steps": story.steps,
            "connector_writes": writes,
            "connectors": connectors,
            "old_ttl": OLD_TTL,
            "interval": INTERVAL,
        }
        (self.directory / "demo.json").write_text(json.dumps(document, indent=2) + "\n")


# --------------------------------------------------------------------------- watching


class Story:
    """The steps as they were played, with their times (for demo.json)."""

    def __init__(self, started: float) -> None:
        self.started = started
        self.steps: list[dict[str, str]] = []

    def step(self, say: Say, key: str, text: str) -> datetime:
        at = datetime.now(UTC)
        self.steps.append({"step": key, "at": _iso(at), "text": text})
        say(f"==> [{time.monotonic() - self.started:4.1f}s] {text}")
        return at


class Watch:
    """The state file as `mxwatch status` reads it, polled while the daemon runs."""

    def __init__(self, path: Path, daemon: asyncio.Task[int]) -> None:
        self._path = path
        self._daemon = daemon
        self._store: Store | None = None

    def close(self) -> None:
        if self._store is not None:
            self._store.close()

    def tenants(self) -> dict[str, StoredTenant] | None:
        """The stored tenants by name, or None while the daemon has not created the state."""
        try:
            if self._store is None:
                self._store = Store.open_readonly(self._path)
            return {t.record.name: t for t in self._store.load_all()}
        except StoreError:
            return None

    async def until(
        self,
        what: str,
        done: Callable[[dict[str, StoredTenant]], bool],
        timeout: float = STEP_TIMEOUT,
    ) -> dict[str, StoredTenant]:
        """The tenants once `done` holds for them; DemoFailed after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            tenants = self.tenants()
            if tenants is not None and done(tenants):
                return tenants
            if time.monotonic() >= deadline:
                raise DemoFailed(f"no {what} after {timeout:g}s")
            await self.sleep(_POLL)

    async def cycles_after(
        self, moment: datetime, count: int, tenant: DemoTenant
    ) -> dict[str, StoredTenant]:
        """The tenants once `count` cycles that started after `moment` observed `tenant`."""
        seen: set[datetime] = set()

        def enough(tenants: dict[str, StoredTenant]) -> bool:
            stored = tenants.get(tenant.name)
            checked = [d.checked_at for d in stored.domains] if stored else []
            if checked and all(at is not None and at > moment for at in checked):
                seen.update(at for at in checked if at is not None)
            return len(seen) >= count

        return await self.until(f"{count} cycles", enough)

    async def sleep(self, seconds: float) -> None:
        """Sleep, unless the daemon has stopped (a signal, an error): then DemoFailed."""
        if self._daemon.done():
            raise DemoFailed("the daemon stopped before the demo's end (interrupted?)")
        await asyncio.sleep(seconds)


def _verdicts(tenants: Mapping[str, StoredTenant], tenant: DemoTenant) -> dict[str, Any]:
    stored = tenants.get(tenant.name)
    return {d.domain: d.verdict for d in stored.domains} if stored else {}


def _state(tenants: Mapping[str, StoredTenant], tenant: DemoTenant) -> TenantState | None:
    stored = tenants.get(tenant.name)
    return stored.record.state if stored else None


# --------------------------------------------------------------------------- the log lines


class Quiet:
    """Which of the daemon's log lines the demo shows: not the routine ones of every cycle
    (`--verbose` shows them), and not a line printed before with the same fields (a blocked
    tenant is read and audited again every cycle)."""

    ROUTINE = frozenset({"cycle_started", "cycle_finished", "next_cycle"})

    def __init__(self) -> None:
        self._seen: dict[str, set[str]] = {}

    def __call__(self, event: Mapping[str, Any]) -> bool:
        if event.get("event") in self.ROUTINE:
            return False
        seen = self._seen.setdefault(str(event.get("tenant", "")), set())
        key = json.dumps(dict(event), sort_keys=True, default=str)
        if key in seen:
            return False
        seen.add(key)
        return True

    def forget(self, tenant: str) -> None:
        """Show the tenant's lines again, repeats included."""
        self._seen.pop(tenant, None)


# --------------------------------------------------------------------------- helpers


def _iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


def _clock(at: datetime) -> str:
    return at.strftime("%H:%M:%S") + "Z"


def command_prefix(argv: Iterable[str] = ()) -> str:
    """How to run this mxwatch again: `mxwatch` when that is it on PATH, else its path."""
    argv = list(argv) or sys.argv
    program = Path(argv[0]) if argv else Path()
    if program.name == "__main__.py":
        return f"{sys.executable} -m mxwatch"
    found = shutil.which("mxwatch")
    if found and program.is_file() and Path(found).resolve() == program.resolve():
        return "mxwatch"
    return str(program.resolve()) if program.is_file() else "mxwatch"
