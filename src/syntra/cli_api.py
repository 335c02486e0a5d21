"""The ``syntra`` commands that talk to a running server over gRPC (:mod:`syntra.client`).

    syntra capsule install|get|list|delete|freeze|unfreeze ...
    syntra decide NAME ...; syntra feedback NAME DECISION_ID ...; syntra report NAME
    syntra token create|list|revoke ...; syntra backup --out FILE; syntra restore FILE

Every command takes ``--server HOST:PORT`` (default: SYNTRA_SERVER, else 127.0.0.1:7443),
``--token`` (default: SYNTRA_TOKEN), ``--timeout SECONDS`` and ``--json``. Output is a
table, or with ``--json`` one JSON document. A call the server refuses prints
``syntra <command>: error: <CODE>: <message>`` and exits 2 (1 when the server is
unreachable or too slow: UNAVAILABLE, DEADLINE_EXCEEDED), as a usage error exits 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from syntra.errors import SyntraError

DEFAULT_SERVER = "127.0.0.1:7443"
SERVER_ENV = "SYNTRA_SERVER"
TOKEN_ENV = "SYNTRA_TOKEN"
DEFAULT_TIMEOUT = 10.0
# Backup and restore move a whole store: their calls get more time.
TRANSFER_TIMEOUT = 600.0
POLICY_FILE = "policy.json"
# Failures of the server's reachability, not of the request: a run may succeed later.
_TRANSIENT = ("UNAVAILABLE", "DEADLINE_EXCEEDED")


def add_api_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register the API commands (capsule, decide, feedback, report, token, backup,
    restore) on ``syntra``'s subcommand parsers."""
    connection = _connection_options()
    _add_capsule(subparsers, connection)
    _add_decide(subparsers, connection)
    _add_feedback(subparsers, connection)
    _add_report(subparsers, connection)
    _add_token(subparsers, connection)
    _add_backup(subparsers, connection)


def read_capsule_spec(path: str | Path) -> tuple[str, dict[str, Any] | None]:
    """The capsule YAML at ``path`` as a server installs it, and its policy.

    The server takes the program inline, so a ``program_file`` is read (relative to the
    spec) and put in the spec as ``program``; the policy is ``policy.json`` beside the
    spec, or None. Raises :class:`~syntra.authoring.AuthoringError` naming the problem.
    """
    import yaml

    from syntra.authoring import AuthoringError

    path = Path(path)
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise AuthoringError("", f"cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise AuthoringError("", f"{path} is not valid YAML: {exc}") from None
    if not isinstance(spec, dict):
        raise AuthoringError("", f"{path} must hold a mapping of the spec's fields")
    if "program_file" in spec and "program" not in spec:
        program_path = path.parent / str(spec["program_file"])
        try:
            source = program_path.read_text(encoding="utf-8")
        except OSError as exc:
            raise AuthoringError("program_file", f"cannot read {program_path}: {exc.strerror}") from None
        spec = {("program" if key == "program_file" else key): (source if key == "program_file" else value)
                for key, value in spec.items()}
    policy = None
    policy_path = path.parent / POLICY_FILE
    if policy_path.is_file():
        try:
            policy = json.loads(policy_path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise AuthoringError(POLICY_FILE, f"cannot read {policy_path}: {exc.strerror}") from None
        except ValueError as exc:
            raise AuthoringError(POLICY_FILE, f"is not valid JSON: {exc}") from None
        if not isinstance(policy, dict):
            raise AuthoringError(POLICY_FILE, "must be a JSON object")
    return yaml.safe_dump(spec, sort_keys=False, allow_unicode=True), policy


# --- plumbing -----------------------------------------------------------------------------


def _connection_options() -> argparse.ArgumentParser:
    """The options every API command shares (a parent parser)."""
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("connection and output")
    group.add_argument("--server", type=_address, metavar="HOST:PORT",
                       help=f"the server (default: ${SERVER_ENV}, else {DEFAULT_SERVER})")
    group.add_argument("--token", metavar="SECRET",
                       help=f"bearer token (default: ${TOKEN_ENV}; prefer it, a command line is visible to others)")
    group.add_argument("--timeout", type=_seconds, metavar="SECONDS",
                       help=f"deadline of each call (default {DEFAULT_TIMEOUT:g}; backup and restore"
                       f" {TRANSFER_TIMEOUT:g})")
    group.add_argument("--tls", action="store_true", help="connect with TLS, trusting the system's roots")
    group.add_argument("--tls-ca", metavar="PEM", help="connect with TLS, trusting these root certificates")
    group.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    return parent


def _command(subparsers, name: str, connection: argparse.ArgumentParser, run: Callable, *,
             help: str, description: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(name, parents=[connection], help=help, description=description or help)
    parser.set_defaults(run=_calling(run), parser=parser, default_timeout=timeout)
    return parser


def _calling(run: Callable[[Any, argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """``run(client, args)`` with a connected client, its failures printed as
    ``syntra <command>: error: <CODE>: <message>`` with the exit code they call for."""

    def call(args: argparse.Namespace) -> int:
        from syntra.client import Client, SyntraRpcError

        server = args.server or os.environ.get(SERVER_ENV) or DEFAULT_SERVER
        if args.server is None:
            try:
                _address(server)
            except argparse.ArgumentTypeError as error:
                print(f"{args.parser.prog}: error: ${SERVER_ENV}: {error}", file=sys.stderr)
                return 2
        timeout = args.timeout or args.default_timeout
        tls: bool | bytes = args.tls
        if args.tls_ca:
            try:
                tls = Path(args.tls_ca).read_bytes()
            except OSError as error:
                print(f"{args.parser.prog}: error: --tls-ca: {error.strerror}: {args.tls_ca}", file=sys.stderr)
                return 2
        try:
            # No --token: the client reads $SYNTRA_TOKEN itself.
            with Client(server, token=args.token or None, timeout=timeout, tls=tls) as client:
                return run(client, args)
        except SyntraRpcError as error:
            print(f"{args.parser.prog}: error: {error.code.name}: {error.message}", file=sys.stderr)
            return 1 if error.code.name in _TRANSIENT else 2
        except SyntraError as error:  # an argument the client refused before sending
            print(f"{args.parser.prog}: error: {error}", file=sys.stderr)
            return 2

    return call


def _emit(args: argparse.Namespace, document: Any, text: str) -> int:
    print(json.dumps(document, indent=2, allow_nan=False) if args.json else text)
    return 0


def _table(headers: list[str], rows: list[list[str]], align: str) -> str:
    # Imported here, not at the top: syntra.cli imports this module.
    from syntra.cli import _table as table

    return table(headers, rows, align)


def _fields(pairs: list[tuple[str, Any]]) -> str:
    """A two-column table of the pairs whose value is not None."""
    rows = [(name, _text(value)) for name, value in pairs if value is not None]
    width = max((len(name) for name, _ in rows), default=0)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}"
    return json.dumps(value, separators=(",", ":"))


def _address(text: str) -> str:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return text


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def _json_argument(kind: type | None = dict) -> Callable[[str], Any]:
    """An option's JSON value, inline or ``@file``; with ``kind``, it must be one."""
    names = {dict: "a JSON object", None: "JSON"}

    def parse(text: str) -> Any:
        if text.startswith("@"):
            try:
                text = Path(text[1:]).read_text(encoding="utf-8")
            except OSError as exc:
                raise argparse.ArgumentTypeError(f"cannot read {text[1:]}: {exc.strerror}") from None
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from None
        if kind is not None and not isinstance(value, kind):
            raise argparse.ArgumentTypeError(f"must be {names[kind]}, got {type(value).__name__}")
        return value

    return parse


def _names(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of names")
    return names


# --- capsule ------------------------------------------------------------------------------


def _add_capsule(subparsers, connection) -> None:
    parser = subparsers.add_parser("capsule", help="install, show, list, delete, freeze and unfreeze capsules",
                                   description="Capsules on a server, by resource name "
                                   "(tenants/{tenant}/jobs/{job}/capsules/{capsule}).")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    install = _command(actions, "install", connection, _install, help="install a capsule under a job",
                       description="Install a capsule under PARENT (tenants/{t}/jobs/{j}): from a capsule "
                       "spec (its program_file inlined, a policy.json beside it sent as its policy), from a "
                       "Lycan program (--lyc with --options), or as a plain bandit over --options.")
    install.add_argument("parent", metavar="PARENT", help="the job: tenants/{tenant}/jobs/{job}")
    install.add_argument("--id", dest="capsule_id", default="", metavar="ID",
                         help="the capsule part of the name (default with --spec: the spec's name)")
    source = install.add_mutually_exclusive_group(required=True)
    source.add_argument("--spec", metavar="YAML", help="a capsule spec (capsule.yaml, see syntra author)")
    source.add_argument("--options", type=_names, metavar="A,B,...", help="the options, in order")
    install.add_argument("--lyc", metavar="FILE",
                         help="the capsule's Lycan program (needs --options): compiled (.lyc) or source (.lycs)")
    install.add_argument("--reward", type=_json_argument(), metavar="JSON|@FILE",
                         help='the reward spec, e.g. \'{"type": "bernoulli"}\' (default bernoulli)')
    install.add_argument("--learning", type=_json_argument(), metavar="JSON|@FILE",
                         help="a learning.json config (turns on the learning layer)")
    install.add_argument("--policy", type=_json_argument(), metavar="JSON|@FILE",
                         help="a program capsule's I/O policy (with --spec: instead of its policy.json)")
    install.add_argument("--shadow", action="store_true",
                         help="install in shadow mode: it suggests, the caller reports what it took")
    for action, run, text in (
        ("get", _get, "show a capsule"),
        ("delete", _delete, "remove a capsule and what it learned (its log stays)"),
        ("freeze", _freeze, "serve from the current state and learn nothing until unfrozen"),
        ("unfreeze", _unfreeze, "learn again"),
    ):
        sub = _command(actions, action, connection, run, help=text)
        sub.add_argument("name", metavar="NAME", help="tenants/{tenant}/jobs/{job}/capsules/{capsule}")
    listing = _command(actions, "list", connection, _list, help="list the capsules the caller may read",
                       description="List the capsules under PARENT (a tenant or a job; default: all) that "
                       "the caller may read.")
    listing.add_argument("parent", nargs="?", default="", metavar="PARENT",
                         help="tenants/{tenant} or tenants/{tenant}/jobs/{job}")


def _install(client, args: argparse.Namespace) -> int:
    fail = args.parser.error
    arguments: dict[str, Any] = {"shadow": args.shadow}
    if args.spec is not None:
        for option in ("lyc", "reward", "learning"):
            if getattr(args, option) is not None:
                fail(f"--{option} cannot go with --spec: the spec holds it")
        from syntra.authoring import AuthoringError

        try:
            arguments["yaml_spec"], arguments["policy"] = read_capsule_spec(args.spec)
        except AuthoringError as error:
            fail(f"--spec: {error}")
    else:
        if not args.capsule_id:
            fail("--id is required unless --spec names the capsule")
        arguments.update(options=args.options, reward=args.reward, learning=args.learning)
        if args.lyc is not None:
            arguments["lyc"] = _read_program(args.lyc, fail)
        elif args.policy is not None:
            fail("--policy is for a program capsule: give --lyc or --spec")
    if args.policy is not None:
        arguments["policy"] = args.policy
    capsule = client.install_capsule(args.parent, args.capsule_id, **arguments)
    return _emit(args, capsule, f"installed {capsule['name']}\n{_capsule_fields(capsule)}")


def _read_program(path: str, fail: Callable[[str], None]) -> bytes:
    """A compiled program's bytes; a source (.lycs) is compiled here."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        fail(f"--lyc: cannot read {path}: {exc.strerror}")
    if not path.endswith(".lycs"):
        return data
    import lycan

    try:
        return lycan.compile_bytes(data.decode("utf-8"))
    except (lycan.LycanError, UnicodeDecodeError) as exc:
        fail(f"--lyc: {path} does not compile: {exc}")


def _get(client, args) -> int:
    capsule = client.get_capsule(args.name)
    return _emit(args, capsule, _capsule_fields(capsule))


def _delete(client, args) -> int:
    client.delete_capsule(args.name)
    return _emit(args, {"deleted": args.name}, f"deleted {args.name} (its log stays)")


def _freeze(client, args) -> int:
    capsule = client.freeze(args.name)
    return _emit(args, capsule, f"{capsule['name']} is {capsule['lifecycle']}: it serves from what it has"
                                " learned and learns nothing until unfrozen")


def _unfreeze(client, args) -> int:
    capsule = client.unfreeze(args.name)
    return _emit(args, capsule, f"{capsule['name']} is {capsule['lifecycle']}: it learns again")


def _list(client, args) -> int:
    capsules = client.list_capsules(args.parent)
    rows = [[c["name"], str(len(c["options"])), c["algorithm"], c["lifecycle"],
             f"{c['decisions']:,}", f"{c['pending']:,}"] for c in capsules]
    text = (_table(["name", "options", "algorithm", "lifecycle", "decisions", "pending"], rows, "<><<>>")
            if rows else "no capsules")
    return _emit(args, capsules, text)


def _capsule_fields(capsule: dict[str, Any]) -> str:
    return _fields([
        ("name", capsule["name"]),
        ("options", ", ".join(capsule["options"])),
        ("algorithm", capsule["algorithm"]),
        ("lifecycle", capsule["lifecycle"]),
        ("program", capsule["program"]),
        ("shadow", capsule["shadow"]),
        ("decisions", capsule["decisions"]),
        ("pending", capsule["pending"]),
        ("reward", capsule["reward_spec"]),
        ("budget", capsule["budget"] or None),
        ("policy", capsule["policy"] or None),
        ("learning", "(the learning.json it runs: --json shows it)" if capsule["learning_config"] else None),
    ])


# --- decide and feedback ------------------------------------------------------------------


def _add_decide(subparsers, connection) -> None:
    parser = _command(subparsers, "decide", connection, _decide, help="ask a capsule to decide",
                      description="Ask capsule NAME to decide, and print the decision (report its "
                      "outcome with syntra feedback NAME DECISION_ID).")
    parser.add_argument("name", metavar="NAME", help="tenants/{tenant}/jobs/{job}/capsules/{capsule}")
    parser.add_argument("--context", default="", metavar="KEY", help="the context key (discrete contexts)")
    parser.add_argument("--features", type=_json_argument(), metavar="JSON|@FILE",
                        help="typed features, for a capsule whose contexts are features")
    parser.add_argument("--metrics", type=_json_argument(), metavar="JSON|@FILE",
                        help="monitored metrics (name: number), for a capsule whose regimes watch them")
    parser.add_argument("--input", type=_json_argument(None), metavar="JSON|@FILE", help="a program capsule's input")


def _decide(client, args) -> int:
    decision = client.decide(args.name, args.context, features=args.features, metrics=args.metrics,
                             input=args.input)
    document = dataclasses.asdict(decision)
    document.pop("fallback")
    document.pop("error")
    option = None if decision.option is None else f"{decision.option} (option {decision.option_index})"
    text = _fields([
        ("decision_id", decision.decision_id or None),
        ("option", option),
        ("propensity", f"{decision.propensity:.6g}"),
        ("context", decision.context_key or None),
        ("value", decision.value),
        ("refused", decision.refusal if decision.refused else None),
        ("confidence", decision.confidence),
        ("shadow", True if decision.shadow else None),
        ("substituted_for", decision.substituted_for),
        ("cost", f"{decision.cost_microcents:,} microcents" if decision.cost_microcents else None),
        ("sequence", decision.sequence),
    ])
    return _emit(args, document, text)


def _add_feedback(subparsers, connection) -> None:
    parser = _command(subparsers, "feedback", connection, _feedback, help="report how a decision worked out",
                      description="Report the outcome of decision DECISION_ID of capsule NAME (applied "
                      "exactly once).")
    parser.add_argument("name", metavar="NAME", help="tenants/{tenant}/jobs/{job}/capsules/{capsule}")
    parser.add_argument("decision_id", metavar="DECISION_ID")
    outcome = parser.add_mutually_exclusive_group(required=True)
    outcome.add_argument("--reward", type=float, metavar="R", help="the reward, within the capsule's range")
    outcome.add_argument("--components", type=_json_argument(), metavar="JSON|@FILE",
                         help="the reward's components (name: number), when its spec combines them")
    parser.add_argument("--signal", metavar="S", help="which of the capsule's fused signals the reward is")
    parser.add_argument("--cost", type=int, metavar="MICROCENTS",
                        help="what the decision actually cost (budgeted capsules; default: release the hold)")
    parser.add_argument("--taken-option", metavar="O", help="shadow capsules: the option the caller took")
    parser.add_argument("--taken-propensity", type=float, metavar="P",
                        help="shadow capsules: the probability the caller's own policy had of taking it")


def _feedback(client, args) -> int:
    if (args.taken_option is None) != (args.taken_propensity is None):
        args.parser.error("--taken-option and --taken-propensity go together")
    client.feedback(args.decision_id, args.reward, capsule=args.name, components=args.components,
                    signal=args.signal, cost_microcents=args.cost, taken_option=args.taken_option,
                    taken_propensity=args.taken_propensity)
    return _emit(args, {"decision_id": args.decision_id, "recorded": True},
                 f"recorded the outcome of {args.decision_id}")


# --- report -------------------------------------------------------------------------------


def _add_report(subparsers, connection) -> None:
    parser = _command(subparsers, "report", connection, _report, help="what a capsule has learned",
                      description="What capsule NAME has learned: per context its plays, mean reward and "
                      "best option (the most played); its lifecycle, candidates and drift events.")
    parser.add_argument("name", metavar="NAME", help="tenants/{tenant}/jobs/{job}/capsules/{capsule}")


def _report(client, args) -> int:
    report = client.report(args.name)
    return _emit(args, report, format_report(report))


def format_report(report: dict[str, Any]) -> str:
    """A capsule report (``Capsule.report()``) as tables."""
    lines = [(f"{report['name']}  ({report['algorithm']}, {report.get('lifecycle', 'no learning layer')}, "
              f"{report['decisions']:,} decisions, {report['pending']:,} pending)")]
    rows = []
    for key, context in sorted(report["contexts"].items()):
        pulls = context["pulls"]
        plays = sum(pulls.values())
        rewarded = [(pulls[o], m) for o, m in context["mean_reward"].items() if m is not None and pulls[o]]
        weight = sum(n for n, _ in rewarded)
        mean = "-" if not weight else f"{sum(n * m for n, m in rewarded) / weight:.3f}"
        best = context["best_option"]
        share = f" ({pulls[best] / plays:.0%})" if best is not None and plays else ""
        rows.append([key or '""', f"{plays:,}", mean, (best or "-") + share])
    lines += ["", _table(["context", "plays", "mean reward", "best (share of plays)"], rows, "<>><")
              if rows else "no contexts yet"]
    candidates = report.get("candidates") or {}
    if candidates:
        lines += ["", _table(["candidate", "trials", "estimated value", "share"], [
            [name, f"{c['trials']:,}", "-" if c["value"] is None else f"{c['value']:.3f}", f"{c['share']:.1%}"]
            for name, c in candidates.items()], "<>>>")]
    for event in report.get("drift_events") or ():
        lines.append(f"drift at decision {event['sequence']:,} ({event['scope']} scope, option {event['option']})")
    refusals = report.get("refusals") or {}
    if refusals:
        lines.append("refusals: " + ", ".join(f"{reason} {count:,}" for reason, count in refusals.items()))
    return "\n".join(lines)


# --- tokens -------------------------------------------------------------------------------


def _add_token(subparsers, connection) -> None:
    parser = subparsers.add_parser("token", help="create, list and revoke API tokens",
                                   description="API tokens: a bearer secret with scopes (role on a resource).")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = _command(actions, "create", connection, _token_create, help="create a token and print its secret once",
                      description="Create a token. Roles: admin (alone), tenant_admin:tenants/{t}, and "
                      "decide, feedback or read on a job or a capsule.")
    create.add_argument("--scope", action="append", required=True, dest="scopes", metavar="ROLE[:RESOURCE]",
                        help="a scope, e.g. decide:tenants/acme/jobs/web (repeat for more)")
    create.add_argument("--ttl", type=int, default=0, metavar="SECONDS",
                        help="seconds until it expires (default: the server's, 30 days)")
    create.add_argument("--name", default="", metavar="TEXT", help="a display name")
    listing = _command(actions, "list", connection, _token_list, help="list tokens")
    listing.add_argument("--all", action="store_true", help="include revoked and expired tokens")
    revoke = _command(actions, "revoke", connection, _token_revoke, help="revoke a token at once")
    revoke.add_argument("name", metavar="NAME", help="tokens/{id} (or just the id)")


def _token_create(client, args) -> int:
    token, secret = client.create_token(args.scopes, ttl_seconds=args.ttl, display_name=args.name)
    text = "\n".join([
        f"created {token['name']}" + (f" ({token['display_name']})" if token["display_name"] else ""),
        f"scopes   {', '.join(token['scopes'])}",
        f"expires  {token['expire_time']}",
        f"secret   {secret}",
        "Keep the secret now: it will not be shown again (the server keeps only its hash).",
    ])
    return _emit(args, {"token": token, "secret": secret}, text)


def _token_list(client, args) -> int:
    tokens = client.list_tokens(args.all)
    rows = [[t["name"], t["display_name"] or "-", ", ".join(t["scopes"]), t["create_time"] or "-",
             t["expire_time"] or "-", "revoked" if t["revoke_time"] else _expired_or_active(t)] for t in tokens]
    text = (_table(["name", "display name", "scopes", "created", "expires", "state"], rows, "<<<<<<")
            if rows else "no tokens")
    return _emit(args, tokens, text)


def _expired_or_active(token: dict[str, Any]) -> str:
    import datetime

    expires = token["expire_time"]
    if expires and datetime.datetime.fromisoformat(expires) <= datetime.datetime.now(datetime.UTC):
        return "expired"
    return "active"


def _token_revoke(client, args) -> int:
    name = args.name if args.name.startswith("tokens/") else f"tokens/{args.name}"
    token = client.revoke_token(name)
    return _emit(args, token, f"revoked {token['name']} at {token['revoke_time']}")


# --- backup and restore -------------------------------------------------------------------


def _add_backup(subparsers, connection) -> None:
    backup = _command(subparsers, "backup", connection, _backup, timeout=TRANSFER_TIMEOUT,
                      help="write a consistent bundle of the server's store to a file (admin)",
                      description="Stream a consistent backup bundle (a tar archive: the latest checkpoint "
                      "and the WAL after it) to FILE. FILE appears only once the bundle is complete and "
                      "matches its manifest (size and BLAKE3).")
    backup.add_argument("--out", required=True, metavar="FILE", help="where to write the bundle")
    restore = _command(subparsers, "restore", connection, _restore, timeout=TRANSFER_TIMEOUT,
                       help="replace the server's store with a backup bundle (admin)",
                       description="Send the bundle in FILE; the server verifies it before it replaces "
                       "anything, and keeps the previous store beside the new one.")
    restore.add_argument("file", metavar="FILE", help="a bundle written by syntra backup")


def _backup(client, args) -> int:
    from syntra.store.files import write_atomically

    out = Path(args.out)
    if not out.parent.is_dir():
        args.parser.error(f"--out: cannot write in {out.parent}: no such directory")
    manifests = []
    try:
        # The file appears whole or not at all: a failed transfer leaves no partial bundle.
        write_atomically(out, lambda file: manifests.append(
            client.backup(file, timeout=args.timeout or args.default_timeout)))
    except OSError as exc:
        args.parser.error(f"--out: cannot write {out}: {exc.strerror or exc}")
    manifest = manifests[0]
    text = (f"wrote {out}: {manifest['size_bytes']:,} bytes, the store up to WAL sequence "
            f"{manifest['wal_sequence']:,}\nhead digest {manifest['head_digest']}\nblake3      {manifest['blake3']}")
    return _emit(args, {"path": str(out), **manifest}, text)


def _restore(client, args) -> int:
    try:
        with open(args.file, "rb") as source:
            restored = client.restore(source, timeout=args.timeout or args.default_timeout)
    except OSError as exc:
        args.parser.error(f"cannot read {args.file}: {exc.strerror}")
    text = (f"restored {args.file}: {restored['capsules']:,} capsules, the store up to WAL sequence "
            f"{restored['wal_sequence']:,} (head digest {restored['head_digest']});"
            " the server kept its previous store beside the new one")
    return _emit(args, restored, text)
