"""Command line: the only module that prints to the terminal or chooses an exit code."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import __version__, check, daemon, health, logs, provision, runner, web
from .config import (
    ConfigError,
    default_config_path,
    load_config,
    mail_domain,
    resolver_spec,
    state_location,
)
from .credentials import check_credential, credential_refs, exposed_secret_files
from .cycle import DEFAULT_LOCK_WAIT, TenantForecast
from .dns import DnsObserver
from .model import DomainRecord
from .policy import Enable
from .providers import BUILTIN_PROVIDERS, origin
from .provision_plan import TenantPlan
from .settings import Config, DnsConfig, PolicyConfig, PostgresUri, Provider, ResolverSpec
from .store import StoredTenant, StoreError, open_store_readonly
from .store.copy import copy_state
from .webconfig import exposure, web_config_of

EXIT_OK, EXIT_TROUBLE, EXIT_USAGE = 0, 1, 2

DESCRIPTION = """\
Enable an Exchange Online partner inbound connector only once every domain of its tenant
has its MX records on the filtering service, the cut-over has settled, and the connector
passes an audit. Without a command and without --once, mxwatch runs as a daemon."""

EPILOG = """\
exit codes: 0 ok; 1 some tenant blocked or regressed, or an error; 2 bad config or usage.
config: --config, else $MXWATCH_CONFIG, else /etc/mxwatch/mxwatch.toml"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mxwatch",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"mxwatch {__version__}")
    _add_common(parser, None)
    # Subcommands accept the same options after their name; SUPPRESS keeps a value given
    # before the subcommand from being reset to the default.
    common = argparse.ArgumentParser(add_help=False)
    _add_common(common, argparse.SUPPRESS)
    parser.add_argument("--once", action="store_true", help="run one cycle, then exit")
    parser.add_argument(
        "--dry-run", action="store_true", help="observe and decide, but make no writes to Exchange"
    )
    parser.add_argument(
        "--observe-only",
        action="store_true",
        help=(
            "with --once: observe and decide without taking the state's lock and without any "
            "write (Exchange or state), beside a daemon that leads; logs what it would do"
        ),
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    status = commands.add_parser(
        "status", parents=[common], help="current state of every tenant and domain"
    )
    status.add_argument("--json", action="store_true", help="one JSON object")
    status.add_argument(
        "--html",
        type=Path,
        metavar="FILE",
        help="write the status page to FILE instead (for a timer running --once)",
    )
    history = commands.add_parser("history", parents=[common], help="the transition journal")
    history.add_argument("tenant", nargs="?", help="only this tenant")
    history.add_argument("--json", action="store_true", help="JSON lines")
    history.add_argument("--limit", type=int, help="only the last N entries")
    commands.add_parser(
        "check-config", parents=[common], help="validate the config and its credential files"
    )
    state = commands.add_parser("state", help="move the state between SQLite and PostgreSQL")
    state_commands = state.add_subparsers(dest="state_command", metavar="STATE_COMMAND")
    copy = state_commands.add_parser(
        "copy",
        help="copy the whole state and journal into an empty target",
        description=(
            "Copy every tenant, domain, pending intent, the journal and the last cycle's record "
            "from FROM to TO, each an SQLite file path or a postgresql:// URI (the password in "
            "libpq's passfile or PGPASSWORD, never in the URI). TO must hold no state yet."
        ),
    )
    copy.add_argument("source", metavar="FROM")
    copy.add_argument("target", metavar="TO")
    plan = commands.add_parser(
        "plan",
        parents=[common],
        help="what a cycle would do now, and what holds each tenant (reads only, writes nothing)",
        description=(
            "A live, read-only cycle: every tenant's domains are looked up and its connector "
            "and accepted domains read, then decided as a cycle would. Nothing is written to "
            "Exchange or to the state. Exit codes as --once."
        ),
    )
    plan.add_argument("tenants", nargs="*", metavar="TENANT", help="only these tenants")
    plan.add_argument("--json", action="store_true", help="one JSON object")
    demo = commands.add_parser(
        "demo",
        help="a whole cutover on this machine: embedded DNS servers, the Exchange sandbox and "
        "the real daemon (needs the sandbox extra; no config, no network)",
        description="Play a scripted cutover for two tenants on this machine, in under a "
        "minute: a DNS server on 127.0.0.1-127.0.0.3 (a resolver's view, a primary and a "
        "lagging secondary), the Exchange Online sandbox over HTTPS, and the real daemon on a "
        "config written to a new temporary directory. Each step is narrated, then followed by "
        "mxwatch's own log lines. Exit 0 once played, 1 if it did not go as scripted (the "
        "directory is kept), 2 without the sandbox extra (pip install 'mxwatch[sandbox]').",
    )
    demo.add_argument(
        "--keep", action="store_true", help="keep the demo's directory (state, config, demo.json)"
    )
    demo.add_argument("--verbose", action="store_true", help="every log line, not only the story's")
    demo.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        default=argparse.SUPPRESS,
        help="default: info",
    )
    commands.add_parser(
        "health",
        parents=[common],
        help="exit 0 if the last cycle finished within 3 x interval, else 1 with the reason",
    )
    _add_check(commands, common)
    _add_providers(commands, common)
    _add_provision(commands, common)
    parser.add_argument(
        "--lock-wait",
        type=_seconds,
        default=DEFAULT_LOCK_WAIT,
        metavar="SECONDS",
        help=(
            "with --once: how long to wait while another mxwatch runs a cycle on the same "
            f"state (default {DEFAULT_LOCK_WAIT:g}); then exit 1 naming it"
        ),
    )
    parser.add_argument(
        "--metrics-file",
        type=Path,
        metavar="PATH",
        help="with --once: write Prometheus metrics here (node-exporter textfile format)",
    )
    return parser


def _add_check(commands: Any, common: argparse.ArgumentParser) -> None:
    check_parser = commands.add_parser(
        "check",
        parents=[common],
        help="what mxwatch would decide about these domains right now (no config needed)",
        description=(
            "Observe each DOMAIN as a cycle would (the system resolver and each domain's "
            "authoritative servers) and print its verdict, every source's MX set and TTL, what "
            "is wrong, and the settle wait a cutover from now would get. Exit 0 when every "
            "domain is filtered, 1 otherwise, 2 on usage errors. With -c, the config's dns, "
            "policy and providers apply."
        ),
    )
    check_parser.add_argument(
        "domains", nargs="+", metavar="DOMAIN", type=_domain_argument, help="such as contoso.com"
    )
    check_parser.add_argument(
        "--resolver",
        action="append",
        type=_resolver_argument,
        metavar="IP[:PORT]",
        help="ask this resolver instead (repeatable): system, IP, IP:PORT or [IPv6]:PORT",
    )
    check_parser.add_argument(
        "--no-authoritative",
        action="store_true",
        help="do not also ask each domain's authoritative servers",
    )
    check_parser.add_argument(
        "--provider", metavar="NAME", help="the filter (default mailprotector; built in or -c's)"
    )
    check_parser.add_argument("--json", action="store_true", help="one JSON object")


def _add_providers(commands: Any, common: argparse.ArgumentParser) -> None:
    providers_parser = commands.add_parser(
        "providers",
        parents=[common],
        help="the built-in provider profiles; with -c, the configured ones too (no config needed)",
        description=(
            "List each provider profile: its name, MX patterns, sender ranges and where they "
            "come from. Without -c, the built-in profiles (the default config path is not "
            "read); with -c, the config's providers, each marked built-in, configured or "
            "overrides built-in. Exit 0, or 2 on a bad config."
        ),
    )
    providers_parser.add_argument("--json", action="store_true", help="one JSON object")


def _add_provision(commands: Any, common: argparse.ArgumentParser) -> None:
    provision_parser = commands.add_parser(
        "provision",
        parents=[common],
        help="create each tenant's connector, disabled: prints the plan; --apply makes it",
        description=(
            "Read each tenant's connector and print what provision would do: create a missing "
            "one (disabled, restricted to the provider's sender_ips), or add provider ranges a "
            "disabled one lacks. An enabled connector is never written to. Without --apply "
            "nothing is written; with it, exactly the printed changes are made, journalled "
            "(mxwatch history) and read back. Exit 0 ok, 1 a tenant cannot be provisioned or "
            "an error, 2 bad config or usage."
        ),
    )
    provision_parser.add_argument(
        "tenants", nargs="*", metavar="TENANT", help="only these tenants (default: every one)"
    )
    provision_parser.add_argument(
        "--apply", action="store_true", help="make the planned changes (default: plan only)"
    )
    provision_parser.add_argument(
        "--lock-wait",
        type=_seconds,
        default=argparse.SUPPRESS,
        metavar="SECONDS",
        help=f"with --apply: how long to wait for a running cycle (default {DEFAULT_LOCK_WAIT:g})",
    )


def _domain_argument(text: str) -> str:
    try:
        return mail_domain(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _resolver_argument(text: str) -> ResolverSpec:
    try:
        return resolver_spec(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 <= value <= 3600:
        raise argparse.ArgumentTypeError("must be between 0 and 3600 seconds")
    return value


def _add_common(parser: argparse.ArgumentParser, default: Any) -> None:
    parser.add_argument("-c", "--config", type=Path, default=default, help="config file (TOML)")
    parser.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        default=default if default is argparse.SUPPRESS else "info",
        help="default: info",
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Commands that print a report keep stdout for it; their log lines go to stderr.
    reports = ("check", "provision", "plan")
    logs.configure(args.log_level, sys.stderr if args.command in reports else None)
    if args.command == "providers":
        return _providers(args)
    if args.command == "check":
        return _check(args)
    if args.command == "state":
        return _state(args)
    if args.command == "demo":  # it writes its own config
        return _demo(args)
    try:
        config = load_config(args.config or default_config_path(os.environ), environ=os.environ)
    except ConfigError as exc:
        return _config_failed(exc.problems)
    try:
        return _dispatch(args, config)
    except ConfigError as exc:  # metrics.web_config, read when the daemon starts
        return _config_failed(exc.problems)
    except StoreError as exc:
        print(f"mxwatch: {exc}", file=sys.stderr)
        return EXIT_TROUBLE


def _dispatch(args: argparse.Namespace, config: Config) -> int:
    if args.command == "check-config":
        return _check_config(config)
    if args.command == "plan":
        return _plan(config, args.tenants, as_json=args.json)
    if args.command == "status" and args.html is not None:
        return _status_html(config, args.html)
    if args.command == "status":
        return _status(config, as_json=args.json)
    if args.command == "history":
        return _history(config, args.tenant, args.limit, as_json=args.json)
    if args.command == "health":
        return _health(config)
    if args.command == "provision":
        return _provision(config, args.tenants, apply=args.apply, lock_wait=args.lock_wait)
    if args.metrics_file is not None and not args.once:
        print(
            "mxwatch: --metrics-file needs --once (the daemon serves [metrics] listen)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if args.observe_only and not args.once:
        print("mxwatch: --observe-only needs --once", file=sys.stderr)
        return EXIT_USAGE
    if args.observe_only:
        return asyncio.run(runner.run_observe(config))
    if args.once:
        dry_run = args.dry_run or config.daemon.dry_run
        return asyncio.run(
            runner.run_once(
                config, dry_run=dry_run, metrics_file=args.metrics_file, lock_wait=args.lock_wait
            )
        )
    return asyncio.run(daemon.run_daemon(config, dry_run_flag=args.dry_run))


def _state(args: argparse.Namespace) -> int:
    """`mxwatch state copy FROM TO`: no config is read; both stores are named."""
    if args.state_command != "copy":
        print("mxwatch: state needs a command: mxwatch state copy FROM TO", file=sys.stderr)
        return EXIT_USAGE
    try:
        source, target = state_location(args.source), state_location(args.target)
    except ValueError as exc:
        print(f"mxwatch: state copy: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        tenants, entries = copy_state(source, target)
    except StoreError as exc:
        print(f"mxwatch: {_printable(str(exc))}", file=sys.stderr)
        return EXIT_TROUBLE
    print(f"mxwatch: copied {tenants} tenants and {entries} journal entries")
    return EXIT_OK


def _check(args: argparse.Namespace) -> int:
    """`mxwatch check`: no config unless -c names one (the default path is not read)."""
    config = None
    if args.config is not None:
        try:
            config = load_config(args.config, environ=os.environ)
        except ConfigError as exc:
            return _config_failed(exc.problems)
    providers = config.providers if config else BUILTIN_PROVIDERS
    name = args.provider or "mailprotector"
    if name not in providers:
        known = ", ".join(sorted(providers))
        print(f"mxwatch: unknown provider {name!r} (known: {known})", file=sys.stderr)
        return EXIT_USAGE
    dns_config = config.dns if config else DnsConfig()
    dns_config = replace(
        dns_config,
        resolvers=tuple(args.resolver or dns_config.resolvers),
        authoritative=dns_config.authoritative and not args.no_authoritative,
    )
    policy_config = config.policy if config else PolicyConfig()
    domains = list(dict.fromkeys(args.domains))
    looked = check.check_domains(
        DnsObserver(dns_config), domains, providers[name], policy_config, datetime.now(UTC)
    )
    results = asyncio.run(looked)
    if args.json:
        print(json.dumps(check.check_document(results, providers[name]), indent=2))
    else:
        for line in check.check_lines(results, providers[name]):
            _print_line(line)
    return EXIT_OK if all(result.filtered for result in results) else EXIT_TROUBLE


def _providers(args: argparse.Namespace) -> int:
    """`mxwatch providers`: as `check`, no config unless -c names one."""
    providers = BUILTIN_PROVIDERS
    if args.config is not None:
        try:
            providers = load_config(args.config, environ=os.environ).providers
        except ConfigError as exc:
            return _config_failed(exc.problems)
    entries = [_provider_entry(provider) for provider in providers.values()]
    if args.json:
        print(json.dumps({"providers": entries}, indent=2))
        return EXIT_OK
    for entry in entries:
        _print_line(f"{entry['name']}  ({entry['origin']})")
        _print_line(f"    mx:         {', '.join(entry['mx'])}")
        _print_line(f"    sender_ips: {', '.join(entry['sender_ips']) or 'none'}")
        _print_line(f"    source:     {entry['source']}")
    return EXIT_OK


def _provider_entry(provider: Provider) -> dict[str, Any]:
    return {
        "name": provider.name,
        "origin": origin(provider),
        "mx": list(provider.mx),
        "sender_ips": [str(network) for network in provider.sender_ips],
        "source": provider.source,
    }


def _provision(config: Config, names: Sequence[str], *, apply: bool, lock_wait: float) -> int:
    by_name = {tenant.name: tenant for tenant in config.tenants}
    unknown = [name for name in names if name not in by_name]
    if unknown:
        known = ", ".join(by_name) or "none"
        print(
            f"mxwatch: no tenant named {', '.join(map(repr, unknown))} in {config.path} "
            f"(tenants: {known})",
            file=sys.stderr,
        )
        return EXIT_USAGE
    runner.warn_exposed_secret_files(config)
    tenants = [by_name[name] for name in dict.fromkeys(names)] or list(config.tenants)

    def show(plans: Sequence[TenantPlan]) -> None:
        for line in provision.plan_lines(plans, apply=apply):
            _print_line(line)
        sys.stdout.flush()  # the plan is out before the first write is made

    report = asyncio.run(
        provision.run_provision(config, tenants, apply=apply, lock_wait=lock_wait, show_plan=show)
    )
    for line in provision.applied_lines(report.applied):
        _print_line(line)
    return report.exit_code


def _demo(args: argparse.Namespace) -> int:
    from . import demo  # the sandbox it imports is an optional extra

    bold = sys.stdout.isatty()

    def say(line: str) -> None:
        text = _printable(line)
        print(f"\x1b[1m{text}\x1b[0m" if bold else text, flush=True)

    try:
        result = demo.run(keep=args.keep, verbose=args.verbose, log_level=args.log_level, say=say)
    except demo.DemoUnavailable as exc:
        print(f"mxwatch: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except demo.DemoFailed as exc:
        print(f"mxwatch: the demo did not go as scripted: {exc}", file=sys.stderr)
        return EXIT_TROUBLE
    except KeyboardInterrupt:
        print("mxwatch: the demo was interrupted", file=sys.stderr)
        return EXIT_TROUBLE
    say(f"Done in {result.seconds:.0f}s. How the tenants ended:")
    for stored in result.tenants:
        record = stored.record
        say(f"    {record.name:<10} {record.state.value:<10} {record.reason}")
    config = result.directory / "mxwatch.toml"
    mxwatch = demo.command_prefix()
    if result.kept:
        say(f"The state is in {result.directory / 'state.db'}; look at it with:")
    else:
        say(
            f"The state was in {result.directory / 'state.db'}, now removed; run "
            "`mxwatch demo --keep` to keep it and look at it with:"
        )
    say(f"    {mxwatch} -c {config} status")
    say(f"    {mxwatch} -c {config} history")
    return EXIT_OK


def _health(config: Config) -> int:
    with open_store_readonly(config.daemon.state) as store:
        last, leader = store.last_cycle(), store.leader()
    ok, reason = health.check(last, config.daemon.interval, datetime.now(UTC))
    print(f"mxwatch: {'healthy' if ok else 'unhealthy'}: {reason}")
    if leader is not None:  # replicas on a shared state: say which one acts
        print(_printable(f"mxwatch: leader: {leader[0]} since {leader[1]}"))
    return EXIT_OK if ok else EXIT_TROUBLE


def _config_failed(problems: Sequence[str]) -> int:
    print(f"mxwatch: the configuration has {len(problems)} problem(s):", file=sys.stderr)
    for problem in problems:
        print(f"  {_printable(problem)}", file=sys.stderr)
    return EXIT_USAGE


def _printable(text: str) -> str:
    """Control characters escaped: a hostile value in a problem must not drive the terminal."""
    return "".join(
        char if char.isprintable() else char.encode("unicode_escape").decode("ascii")
        for char in text
    )


def _check_config(config: Config) -> int:
    problems = [problem for ref in credential_refs(config) for problem in check_credential(ref)]
    ca_bundle = config.exchange.ca_bundle
    if ca_bundle is not None and not ca_bundle.is_file():
        problems.append(f"exchange.ca_bundle: {ca_bundle} is not a file")
    problems += _state_problems(config)
    try:
        exposed_page = exposure(config.metrics, web_config_of(config.metrics))
    except ConfigError as exc:
        problems += exc.problems
    if problems:
        return _config_failed(problems)
    warnings = [exposed.message() for exposed in exposed_secret_files(config)]
    for warning in [*warnings, exposed_page] if exposed_page else warnings:
        print(f"mxwatch: warning: {_printable(warning)}", file=sys.stderr)
    domains = sum(len(t.domains) for t in config.tenants)
    accepted = sum(not t.domains for t in config.tenants)
    also = f", {accepted} on their accepted domains" if accepted else ""
    print(f"{config.path}: ok ({len(config.tenants)} tenants, {domains} domains{also})")
    return EXIT_OK


def _state_problems(config: Config) -> list[str]:
    """A PostgreSQL state is connected to: unreachable, a refused login or a schema too new
    is a config problem. (An SQLite file is created when it is first needed.)"""
    if not isinstance(config.daemon.state, PostgresUri):
        return []
    try:
        with open_store_readonly(config.daemon.state):
            pass
    except StoreError as exc:
        if exc.kind != "empty":  # a new database: the first cycle creates the schema
            return [f"daemon.state: {exc}"]
    return []


def _status(config: Config, *, as_json: bool) -> int:
    with open_store_readonly(config.daemon.state) as store:
        tenants = store.load_all()
    document = {"tenants": [_tenant_status(t) for t in tenants]}
    if as_json:
        print(json.dumps(document, indent=2))
        return EXIT_OK
    for tenant in document["tenants"]:
        _print_line(
            f"{tenant['name']}  {tenant['state']}  since {tenant['since']}  ({tenant['reason']})"
        )
        if tenant["eligible_at"]:
            _print_line(f"    eligible at {tenant['eligible_at']}: {tenant['eligible_reason']}")
        if tenant["waiting_for"]:
            _print_line(f"    waiting for: {tenant['waiting_for']}")
        for domain in tenant["domains"]:
            _print_domain(domain)
    return EXIT_OK


def _status_html(config: Config, target: Path) -> int:
    """The daemon's status page, once, written whole (temporary file, then rename): a web
    server or a browser never reads half of it."""
    with open_store_readonly(config.daemon.state) as store:
        page = web.index_page(store.load_all(), store.last_cycle(), datetime.now(UTC), live=False)
    partial = target.with_name(f".{target.name}.tmp")
    try:
        partial.write_text(page, encoding="utf-8")
        partial.replace(target)
    except OSError as exc:
        print(f"mxwatch: cannot write {target}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_TROUBLE
    return EXIT_OK


def _print_domain(domain: dict[str, Any]) -> None:
    mx = ", ".join(f"{m['preference']} {m['exchange']}" for m in domain["mx"]) or "-"
    _print_line(f"    {domain['domain']:<30} {domain['verdict'] or '-':<9} {mx}")


def _print_line(line: str) -> None:
    """One line of human output. Reasons, MX hosts and names come from the admin API and DNS,
    so control characters are escaped: one line stays one line, and nothing drives the
    terminal."""
    print(_printable(line))


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def _tenant_status(stored: StoredTenant) -> dict[str, Any]:
    record = stored.record
    return {
        "name": record.name,
        "tenant_id": stored.tenant_id,
        "state": record.state.value,
        "since": _iso(record.since),
        "eligible_at": _iso(record.eligible_at),
        "eligible_reason": record.eligible_reason or None,
        "reason": record.reason,
        "waiting_for": record.waiting_for or None,
        "confirmations": record.confirmations,
        "connector": {
            "identity": stored.connector,
            "guid": record.connector_guid,
            "enabled": record.connector_enabled,
            "checked_at": _iso(record.connector_checked_at),
        },
        "domains": [_domain_status(d) for d in stored.domains],
    }


def _domain_status(d: DomainRecord) -> dict[str, Any]:
    return {
        "domain": d.domain,
        "verdict": d.verdict.value if d.verdict else None,
        "mx": [{"preference": m.preference, "exchange": m.exchange} for m in d.mx],
        "ttl": d.ttl,
        "checked_at": _iso(d.checked_at),
        "filtered_since": _iso(d.filtered_since),
        "filtered_count": d.filtered_count,
    }


def _plan(config: Config, names: Sequence[str], *, as_json: bool) -> int:
    known = [t.name for t in config.tenants]
    unknown = [name for name in names if name not in known]
    if unknown:
        print(
            f"mxwatch: no tenant named {', '.join(map(repr, unknown))} in {config.path} "
            f"(tenants: {', '.join(known)})",
            file=sys.stderr,
        )
        return EXIT_USAGE
    chosen = tuple(t for t in config.tenants if not names or t.name in names)
    plans = asyncio.run(runner.run_plan(replace(config, tenants=chosen)))
    entries = [_plan_entry(plan) for plan in plans]
    if as_json:
        print(json.dumps({"tenants": entries}, indent=2))
    for entry in [] if as_json else entries:
        _print_plan(entry)
    troubled = any(e["next_state"] in ("blocked", "regressed") or e["errors"] for e in entries)
    return EXIT_TROUBLE if troubled else EXIT_OK


def _plan_entry(plan: TenantForecast) -> dict[str, Any]:
    decision, record = plan.decision, plan.decision.record
    audit = decision.audit
    return {
        "name": record.name,
        "state": plan.before.state.value,
        "next_state": record.state.value,
        "transitions": [
            {"from": t.from_state, "to": t.to_state, "reason": t.reason}
            for t in decision.transitions
            if t.domain is None
        ],
        "actions": [
            {"action": "enable" if isinstance(a, Enable) else "disable", "guid": a.guid}
            for a in decision.actions
        ],
        "waiting_for": decision.waiting_for or None,
        "eligible_at": _iso(record.eligible_at),
        "eligible_reason": record.eligible_reason or None,
        "audit": None
        if audit is None
        else {"passed": audit.passed, "failures": audit.failures, "warnings": audit.warnings},
        "errors": plan.errors,
        "domains": [_domain_status(d) for d in plan.domains],
    }


def _print_plan(entry: dict[str, Any]) -> None:
    actions = ", ".join(f"would {a['action']} connector {a['guid']}" for a in entry["actions"])
    _print_line(f"{entry['name']}: {entry['state']} -> {entry['next_state']}  {actions}".rstrip())
    for move in entry["transitions"]:
        _print_line(f"    {move['from']} -> {move['to']}: {move['reason']}")
    if entry["eligible_at"]:
        _print_line(f"    eligible at {entry['eligible_at']}: {entry['eligible_reason']}")
    if entry["waiting_for"]:
        _print_line(f"    waiting for: {entry['waiting_for']}")
    audit = entry["audit"]
    if audit is not None:
        found = [*audit["failures"], *(f"warning: {w}" for w in audit["warnings"])]
        _print_line("; ".join([f"    audit: {'passed' if audit['passed'] else 'failed'}", *found]))
    for domain in entry["domains"]:
        _print_domain(domain)


def _history(config: Config, tenant: str | None, limit: int | None, *, as_json: bool) -> int:
    with open_store_readonly(config.daemon.state) as store:
        entries = store.history(tenant, limit)
    for entry in entries:
        if as_json:
            print(
                json.dumps(
                    {
                        "at": _iso(entry.at),
                        "tenant": entry.tenant,
                        "domain": entry.domain,
                        "from": entry.from_state,
                        "to": entry.to_state,
                        "reason": entry.reason,
                        "evidence": entry.evidence,
                    }
                )
            )
            continue
        subject = f"{entry.tenant}/{entry.domain}" if entry.domain else entry.tenant
        _print_line(
            f"{_iso(entry.at)}  {subject}  {entry.from_state or '-'} -> {entry.to_state}"
            f"  {entry.reason}"
        )
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
