"""Command line: the only module that prints to the terminal or chooses an exit code."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import __version__, daemon, health, logs, runner
from .config import ConfigError, default_config_path, load_config
from .credentials import check_credential, credential_refs, exposed_secret_files
from .cycle import DEFAULT_LOCK_WAIT
from .settings import Config
from .store import Store, StoredTenant, StoreError

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
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    status = commands.add_parser(
        "status", parents=[common], help="current state of every tenant and domain"
    )
    status.add_argument("--json", action="store_true", help="one JSON object")
    history = commands.add_parser("history", parents=[common], help="the transition journal")
    history.add_argument("tenant", nargs="?", help="only this tenant")
    history.add_argument("--json", action="store_true", help="JSON lines")
    history.add_argument("--limit", type=int, help="only the last N entries")
    commands.add_parser(
        "check-config", parents=[common], help="validate the config and its credential files"
    )
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
    logs.configure(args.log_level)
    if args.command == "demo":  # it writes its own config
        return _demo(args)
    try:
        config = load_config(args.config or default_config_path(os.environ), environ=os.environ)
    except ConfigError as exc:
        return _config_failed(exc.problems)
    try:
        return _dispatch(args, config)
    except StoreError as exc:
        print(f"mxwatch: {exc}", file=sys.stderr)
        return EXIT_TROUBLE


def _dispatch(args: argparse.Namespace, config: Config) -> int:
    if args.command == "check-config":
        return _check_config(config)
    if args.command == "status":
        return _status(config, as_json=args.json)
    if args.command == "history":
        return _history(config, args.tenant, args.limit, as_json=args.json)
    if args.command == "health":
        return _health(config)
    if args.metrics_file is not None and not args.once:
        print(
            "mxwatch: --metrics-file needs --once (the daemon serves [metrics] listen)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if args.once:
        dry_run = args.dry_run or config.daemon.dry_run
        return asyncio.run(
            runner.run_once(
                config, dry_run=dry_run, metrics_file=args.metrics_file, lock_wait=args.lock_wait
            )
        )
    return asyncio.run(daemon.run_daemon(config, dry_run_flag=args.dry_run))


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
    with Store.open_readonly(config.daemon.state) as store:
        last = store.last_cycle()
    ok, reason = health.check(last, config.daemon.interval, datetime.now(UTC))
    print(f"mxwatch: {'healthy' if ok else 'unhealthy'}: {reason}")
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
    if problems:
        return _config_failed(problems)
    for exposed in exposed_secret_files(config):
        print(f"mxwatch: warning: {_printable(exposed.message())}", file=sys.stderr)
    domains = sum(len(t.domains) for t in config.tenants)
    accepted = sum(not t.domains for t in config.tenants)
    also = f", {accepted} on their accepted domains" if accepted else ""
    print(f"{config.path}: ok ({len(config.tenants)} tenants, {domains} domains{also})")
    return EXIT_OK


def _status(config: Config, *, as_json: bool) -> int:
    with Store.open_readonly(config.daemon.state) as store:
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
            mx = ", ".join(f"{m['preference']} {m['exchange']}" for m in domain["mx"]) or "-"
            _print_line(f"    {domain['domain']:<30} {domain['verdict'] or '-':<9} {mx}")
    return EXIT_OK


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
        "domains": [
            {
                "domain": d.domain,
                "verdict": d.verdict.value if d.verdict else None,
                "mx": [{"preference": m.preference, "exchange": m.exchange} for m in d.mx],
                "ttl": d.ttl,
                "checked_at": _iso(d.checked_at),
                "filtered_since": _iso(d.filtered_since),
                "filtered_count": d.filtered_count,
            }
            for d in stored.domains
        ],
    }


def _history(config: Config, tenant: str | None, limit: int | None, *, as_json: bool) -> int:
    with Store.open_readonly(config.daemon.state) as store:
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
