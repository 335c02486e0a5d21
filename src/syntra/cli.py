"""The ``syntra`` command line.

Each subcommand is one ``_add_<name>`` function that registers its parser and one
``_run_<name>`` function that does the work and returns the exit code. The computing
lives in library modules (:mod:`syntra.simulate`, :mod:`syntra.demo`,
:mod:`syntra.store.logs`, :mod:`syntra.verify`); this module parses arguments and prints.

Exit codes: 0 on success, 1 when the work fails after it ran (e.g. the plot cannot be
written after all; the result is printed first) or ``verify`` finds damage, 2 for a usage
error or any :class:`~syntra.errors.SyntraError` or budget refusal, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Self

from syntra_core.budget import BudgetError

from syntra import __version__
from syntra.capsule_config import ALGORITHMS
from syntra.cli_api import add_api_commands
from syntra.cli_serve import add_serve
from syntra.errors import SyntraError

if TYPE_CHECKING:
    from syntra.demo import DemoResult
    from syntra.simulate import SimulationResult
    from syntra.verify import Problem, VerifyReport

# Runs shorter than this finish before a progress bar would tell the user anything.
PROGRESS_MIN_ROUNDS = 20_000


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``syntra`` with ``argv`` (default: ``sys.argv[1:]``) and return the exit code."""
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
        return args.run(args)
    except SystemExit as stop:  # argparse exits for --help, --version and usage errors
        return stop.code if isinstance(stop.code, int) else 2
    except (SyntraError, BudgetError) as error:
        print(f"{parser.prog} {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(file=sys.stderr)  # end the line ^C (or a progress bar) left open
        return 130


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="syntra",
        description="Syntra: a self-hosted decision service.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add_command in (_add_simulate, _add_demo, _add_logs, _add_verify, _add_budget, _add_author, add_serve,
                        add_api_commands):
        add_command(subparsers)
    return parser


# --- simulate ----------------------------------------------------------------------------


def _add_simulate(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "simulate",
        help="run a capsule against a synthetic Bernoulli world and report its regret",
        description="Run a capsule against options that pay 1 with known probabilities, and "
        "report its cumulative regret, how often it played the best option, and what it learned.",
    )
    parser.add_argument("--options", required=True, type=_names, metavar="A,B,...",
                        help="comma-separated option names")
    parser.add_argument("--true-arm-rewards", required=True, type=_numbers, metavar="P,Q,...",
                        dest="true_means",
                        help="comma-separated probability that each option pays 1, in [0, 1]")
    parser.add_argument("--rounds", type=int, default=5000, help="rounds to play (default 5000)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--algorithm", choices=sorted(ALGORITHMS), default="thompson",
                        help="decision rule, or auto for the meta-bandit over candidate rules"
                        " (default thompson)")
    parser.add_argument("--context-features", type=int, default=0, metavar="N",
                        help="give every round N uniform features that shift which option is best,"
                        " and decide from them (default 0)")
    parser.add_argument("--drift-at", type=int, metavar="ROUND",
                        help="reverse the true rewards from this round on (abrupt drift)")
    parser.add_argument("--context", default="", metavar="KEY",
                        help="context key every decision uses (default none)")
    parser.add_argument("--plot", metavar="PATH",
                        help="write the cumulative-regret curve to PATH (needs syntra[plot])")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    parser.set_defaults(run=_run_simulate, parser=parser)


def _run_simulate(args: argparse.Namespace) -> int:
    from syntra.simulate import (
        InvalidSimulation,
        check_plot_path,
        plot_regret,
        simulate,
    )

    try:
        if args.plot:
            check_plot_path(args.plot)
        with _ProgressBar(args.rounds, enabled=not args.json) as advance:
            result = simulate(args.options, args.true_means, args.rounds, args.seed,
                              algorithm=args.algorithm, context=args.context,
                              context_features=args.context_features, drift_at=args.drift_at,
                              progress=advance)
    except InvalidSimulation as error:
        args.parser.error(str(error))  # the arguments are wrong: say so as argparse would
    # The result goes out before the plot is drawn: a plot that still fails to write (disk
    # full, the directory removed meanwhile) must not take a finished run down with it.
    if args.json:
        print(json.dumps(result.to_dict(), allow_nan=False))
    else:
        print(_format_simulation(result))
    sys.stdout.flush()
    if args.plot:
        try:
            plot_regret(result, args.plot)
        except OSError as error:
            print(f"syntra simulate: error: cannot write {args.plot}: {error}", file=sys.stderr)
            return 1
        if not args.json:
            print(f"regret curve written to {args.plot}")
    return 0


class _ProgressBar:
    """A tqdm bar on stderr for long runs; for short ones, or when disabled, nothing at all.

    The bar appears on the first report, which :func:`~syntra.simulate.simulate` makes once
    the settings are valid, so an invalid run prints its error and no stub of a bar.
    """

    def __init__(self, rounds: int, *, enabled: bool):
        self._rounds = rounds
        self._enabled = enabled and rounds >= PROGRESS_MIN_ROUNDS
        self._bar = None

    def advance(self, rounds: int) -> None:
        if self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(total=self._rounds, unit="round", unit_scale=True, file=sys.stderr)
        self._bar.update(rounds)

    def __enter__(self) -> Callable[[int], None] | None:
        return self.advance if self._enabled else None

    def __exit__(self, *exc_info: object) -> None:
        if self._bar is not None:
            self._bar.close()


def _format_simulation(result: SimulationResult) -> str:
    best = set(result.best_options)
    rows = [
        [
            option + (" *" if option in best else ""),
            f"{mean:.3f}",
            f"{result.pulls[option]:,}",
            f"{result.pulls[option] / result.rounds:.1%}",
            "-" if result.mean_reward[option] is None else f"{result.mean_reward[option]:.3f}",
        ]
        for option, mean in zip(result.options, result.true_means)
    ]
    context = f", context {result.context!r}" if result.context else ""
    lines = [
        f"{result.rounds:,} rounds of {result.algorithm} on {len(result.options)} options "
        f"(seed {result.seed}{context})",
        "",
        _table(["option", "true mean", "pulls", "share", "learned mean"], rows, "<>>>>"),
        "",
        f"cumulative regret  {result.cumulative_regret:,.1f}"
        f"  (uniform random: {result.uniform_regret:,.1f})",
        f"best-arm share     {result.best_arm_share:.1%}  (* = best option)",
    ]
    if result.context_features or result.drift_at is not None:
        lines[0] += f", {result.context_features} features" if result.context_features else ""
        lines[0] += f", drift at round {result.drift_at:,}" if result.drift_at is not None else ""
        lines.append("(with features or a drift the true means move: shares are of the base means)")
    if result.learning is not None:
        lines += ["", f"lifecycle          {result.learning['lifecycle']}"]
        events = result.learning["drift_events"]
        if events:
            lines.append("drift detected at  " + ", ".join(f"decision {e['sequence']:,} ({e['scope']})"
                                                           for e in events))
        lines += ["", _table(["candidate", "trials", "estimated value", "share"], [
            [name, f"{c['trials']:,}", "-" if c["value"] is None else f"{c['value']:.3f}", f"{c['share']:.1%}"]
            for name, c in result.learning["candidates"].items()], "<>>>")]
    return "\n".join(lines)


# --- demo --------------------------------------------------------------------------------


def _add_demo(subparsers: argparse._SubParsersAction) -> None:
    from syntra.demo import DEFAULT_DATA, DEFAULT_ROUNDS

    parser = subparsers.add_parser(
        "demo",
        help="run a real server, teach the example capsules, show what they learned",
        description="Start syntra serve (dev mode, loopback, free ports, a fresh admin key), "
        "install the example capsules of examples/ through the gRPC API, drive simulated "
        "traffic at them (each context has its own best option), show what each context "
        "learned against the truth, keep serving (--duration), then stop the server "
        "gracefully and verify its store. Exits 0 only if every context learned its true "
        "best option and the store verifies.",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the simulated worlds (default 0)")
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS,
                        help=f"decisions per context (default {DEFAULT_ROUNDS})")
    parser.add_argument("--data", default=DEFAULT_DATA, metavar="DIR",
                        help=f"the server's data directory, recreated on every run and verified at the "
                        f"end (default {DEFAULT_DATA})")
    parser.add_argument("--duration", type=float, metavar="SECONDS",
                        help="keep serving this long after the traffic (default: until Ctrl-C when "
                        "stdout is a terminal and without --json, else 0)")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    parser.set_defaults(run=_run_demo, parser=parser)


def _run_demo(args: argparse.Namespace) -> int:
    from syntra.client import SyntraRpcError
    from syntra.demo import Demo, DemoFailed
    from syntra.verify import verify_store

    if args.duration is not None and not 0 <= args.duration < float("inf"):
        args.parser.error(f"--duration must be a number of seconds >= 0, got {args.duration}")
    interactive = sys.stdout.isatty() and not args.json
    duration = args.duration if args.duration is not None else (None if interactive else 0.0)
    try:
        demo = Demo(args.data, seed=args.seed, rounds=args.rounds)
    except ValueError as error:
        args.parser.error(str(error))
    say = (lambda text="": None) if args.json else (lambda text="": print(text, flush=True))
    try:
        with demo:
            server = demo.server
            say(f"syntra serve --dev-mode is up (pid {server.pid}): gRPC {server.address}, "
                f"ops http://{server.ops_address}, data {demo.data}")
            installed = demo.install()
            say(f"installed {len(installed)} example capsules from {demo.examples}")
            say(f"{demo.rounds:,} decisions per context (seed {demo.seed}), through DecideBatch and FeedbackBatch:")
            with _DemoProgress(demo.rounds, bars=interactive, lines=not args.json and not interactive) as progress:
                result = demo.drive(progress=progress.start, finished=progress.finish)
            say()
            say(_format_demo(result))
            say()
            say(f"serving: gRPC {server.address}, metrics http://{server.ops_address}/metrics")
            if duration != 0:
                token = demo.visitor_token(duration)
                say(f"try it:  SYNTRA_SERVER={server.address} SYNTRA_TOKEN={token} syntra report "
                    f"{next(iter(installed.values()))}")
                say("(that token may act on tenants/demo only; the admin key never leaves the demo)")
                say("Ctrl-C stops the server" if duration is None else f"serving for {duration:g} s")
            stopped_by = demo.serve(duration)
            say(f"stopping the server (SIGTERM){', interrupted' if stopped_by == 'interrupted' else ''}")
            exit_code = demo.stop()
    except DemoFailed as error:
        print(f"syntra demo: error: {error}", file=sys.stderr)
        return 1
    except SyntraRpcError as error:
        print(f"syntra demo: error: {error.code.name}: {error.message} (the server's log: "
              f"{demo.server.log_path})", file=sys.stderr)
        return 1
    if stopped_by == "server exited":
        print(f"syntra demo: error: the server exited on its own (code {exit_code}); its log:\n"
              f"{demo.server.log_tail()}", file=sys.stderr)
    proof = verify_store(demo.server.store)
    report = result.to_dict()
    report["server"] = {"address": demo.server.address, "ops": demo.server.ops_address, "pid": demo.server.pid,
                        "exit_code": exit_code, "stopped_by": stopped_by}
    report["store"] = {"path": str(demo.server.store), "verified": proof.ok}
    succeeded = result.learned == result.contexts and exit_code == 0 and proof.ok
    report["ok"] = succeeded
    say(f"stopped (exit code {exit_code})")
    say(f"store {demo.server.store}: {_format_verify(proof)}")
    if args.json:
        print(json.dumps(report, allow_nan=False))
    elif succeeded:
        say(f"inspect it: syntra verify {demo.server.store}; "
            f"syntra logs export {demo.server.store} --out decisions.parquet")
    if succeeded:
        return 0
    why = []
    if result.learned < result.contexts:
        why.append(f"only {result.learned} of {result.contexts} contexts learned their true best option"
                   " (more --rounds would help)")
    if exit_code != 0:
        why.append(f"the server exited with code {exit_code}")
    if not proof.ok:
        why.append("the store does not verify")
    print(f"syntra demo: failed: {'; '.join(why)}", file=sys.stderr)
    return 1


class _DemoProgress:
    """The demo's traffic as it goes: a tqdm bar per capsule (``bars``, on a terminal), or
    a line per capsule as it finishes (``lines``), or nothing."""

    def __init__(self, rounds: int, *, bars: bool, lines: bool):
        import threading

        self._rounds = rounds
        self._bars_wanted = bars
        self._lines = lines
        self._bars: list = []
        self._lock = threading.Lock()  # one capsule's thread at a time on the terminal

    def start(self, world) -> Callable[[int], None] | None:
        if not self._bars_wanted:
            return None
        from tqdm import tqdm

        with self._lock:
            bar = tqdm(total=self._rounds * len(world.true_means), desc=world.example, unit="decision",
                       unit_scale=True, file=sys.stdout, position=len(self._bars), leave=True)
            self._bars.append(bar)

        def advance(count: int) -> None:
            with self._lock:
                bar.update(count)

        return advance

    def finish(self, outcome) -> None:
        if self._lines:
            with self._lock:
                print(f"  {outcome.example}: {outcome.decisions:,} decisions in {outcome.seconds:.1f} s", flush=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        for bar in self._bars:
            bar.close()


def _format_demo(result: DemoResult) -> str:
    lines = ["learned best = the option the capsule played most (a tie goes to the higher mean)"]
    for scenario in result.scenarios:
        rows = [
            [
                c.context,
                (c.learned_best or "-") + ("" if c.learned else "  <- not the true best"),
                c.true_best,
                f"{c.true_best_share:.1%}",
                f"{c.mean_reward:.3f}",
            ]
            for c in scenario.contexts
        ]
        lines += [
            "",
            f"{scenario.title}  ({scenario.name})",
            f"reward 1 = {scenario.meaning}",
            _table(["context", "learned best", "true best", "share to true best", "mean reward"],
                   rows, "<<<>>"),
        ]
        for sequence in scenario.drift_at:
            lines.append(f"drift detected at decision {sequence:,}: the capsule went back to warmup")
    lines += ["", f"{result.learned} of {result.contexts} contexts learned their true best option."]
    return "\n".join(lines)


# --- logs --------------------------------------------------------------------------------


# syntra.store.logs.LOG_KINDS, repeated so that building the parser does not import pyarrow.
LOG_KINDS = ("decisions", "feedback", "audit")


def _add_logs(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "logs",
        help="work with a store's Arrow logs of decisions, feedback and audit events",
        description="Work with the Arrow IPC logs of a store: one file per sealed WAL segment "
        "under DIR/logs/, plus the live segment's records read from the WAL.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    export = actions.add_parser(
        "export",
        help="write one log to an Arrow IPC or Parquet file",
        description="Write one log of the store in DIR, sealed segments and live tail alike, to "
        "a single Arrow IPC file or Parquet file (chosen by the extension of --out).",
    )
    export.add_argument("store", metavar="DIR",
                        help="the store directory (the path given to Engine.open)")
    export.add_argument("--kind", choices=LOG_KINDS, default="decisions",
                        help="which log (default decisions)")
    export.add_argument("--since", type=_sequence, metavar="SEQ",
                        help="only rows whose WAL sequence is greater than SEQ")
    export.add_argument("--out", required=True, type=_export_path, metavar="PATH",
                        help="output file: PATH.arrow (Arrow IPC file) or PATH.parquet")
    export.add_argument("--allow-gaps", action="store_true",
                        help="export what is left when rows are lost (WAL segments removed by "
                        "retention whose log files are missing or damaged), with a warning; "
                        "without it, such a loss is an error")
    export.set_defaults(run=_run_logs_export, parser=export)


def _run_logs_export(args: argparse.Namespace) -> int:
    from syntra.errors import StorageError
    from syntra.store.logs import LogGaps, export_log

    prefix = "syntra logs export"
    # A damaged log file read from the WAL instead is worth a line, in this command's voice.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{prefix}: warning: %(message)s"))
    handler.setLevel(logging.WARNING)
    store_log = logging.getLogger("syntra.store")
    store_log.addHandler(handler)
    try:
        result = export_log(args.store, args.out, kind=args.kind, since=args.since,
                            allow_gaps=args.allow_gaps)
    except LogGaps as error:
        print(f"{prefix}: error: {error}; nothing was written (--allow-gaps exports the rest)",
              file=sys.stderr)
        return 1
    except StorageError as error:  # damage is a failed run, not a usage error
        print(f"{prefix}: error: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"{prefix}: error: cannot write {args.out}: {error.strerror or error}",
              file=sys.stderr)
        return 1
    finally:
        store_log.removeHandler(handler)
    if result.gaps:
        print(f"{prefix}: warning: the {result.kind} log is missing rows, left out: "
              f"{', '.join(map(str, result.gaps))}", file=sys.stderr)
    span = (f" (WAL sequences {result.first_sequence}-{result.last_sequence})"
            if result.rows else "")
    print(f"wrote {result.rows:,} {result.kind} rows{span} to {result.path} as {result.format}")
    return 0


def _export_path(text: str) -> str:
    from syntra.store.logs import export_format

    try:
        export_format(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def _sequence(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a WAL sequence (an integer >= 0)")
    return value


# --- verify ------------------------------------------------------------------------------


def _add_verify(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "verify",
        help="check a store: WAL chain, checkpoints, a full replay and the Arrow logs",
        description="Check the store in DIR without changing it: recompute the WAL's hash "
        "chain, check every checkpoint (digest, signature with --public-key, head digest "
        "against the log), replay the whole log, re-deriving every decision, and check that "
        "every Arrow log file reads and holds its segment's records. Prints OK with counts "
        "and exits 0, or prints the first damage exactly and exits 1.",
    )
    parser.add_argument("store", metavar="DIR",
                        help="the store directory (the path given to Engine.open)")
    parser.add_argument("--public-key", metavar="PEM",
                        help="ed25519 public key (PEM file): every checkpoint must be signed by it")
    parser.set_defaults(run=_run_verify, parser=parser)


def _run_verify(args: argparse.Namespace) -> int:
    from syntra.verify import verify_store

    report = verify_store(args.store, public_key=args.public_key)
    print(_format_verify(report))
    return 0 if report.ok else 1


def _format_verify(report: VerifyReport) -> str:
    if not report.ok:
        count = len(report.problems)
        lines = [f"FAILED: {count} problem{'s' if count > 1 else ''} in {report.path}"]
        for problem in report.problems:
            lines += _format_problem(problem)
        return "\n".join(lines + [f"note: {note}" for note in report.notes])
    if report.replayed_from == 0:
        origin = "from the start of the log"
    else:
        origin = f"after the checkpoint at sequence {report.replayed_from:,}"
    if not report.checkpoints:
        checkpoints = "none"
    elif report.signatures_checked:
        checkpoints = "digests and signatures valid, heads and states match the log"
    else:
        checkpoints = ("digests valid (signatures not checked: no --public-key), heads and "
                       "states match the log")
    lines = [
        f"OK: {_count(report.segments, 'segment')}, {_count(report.records, 'record')}, "
        f"{_count(report.decisions, 'decision')}, {report.feedback:,} feedback, "
        f"{_count(report.checkpoints, 'checkpoint')} verified",
        f"chain: sequences {report.first_sequence:,}-{report.last_sequence:,} "
        f"({report.audit:,} audit records)",
        f"checkpoints: {checkpoints}",
        f"replay: {_count(report.replayed, 'record')} {origin}, every decision re-derived",
        f"logs: {_count(report.log_files, 'Arrow log file')} valid"
        + (f", {report.log_files_orphaned:,} of them outlive their WAL segment"
           if report.log_files_orphaned else "")
        + (", rows match the WAL" if report.log_files > report.log_files_orphaned else ""),
    ]
    return "\n".join(lines + [f"note: {note}" for note in report.notes])


def _format_problem(problem: Problem) -> list[str]:
    title = {"wal": "WAL damaged", "checkpoint": "bad checkpoint",
             "replay": "replay diverged", "logs": "bad Arrow log"}[problem.area]
    lines = [f"{title}: {problem.message}"]
    fields = [
        ("checkpoint", problem.checkpoint),
        ("log", problem.log),
        ("segment", problem.segment),
        ("offset", problem.offset),
        ("sequence", problem.sequence),
        ("expected", problem.expected.hex() if problem.expected is not None else None),
        ("actual", problem.actual.hex() if problem.actual is not None else None),
    ]
    lines += [f"  {name:<10}  {value}" for name, value in fields if value is not None]
    return lines


# --- budget ------------------------------------------------------------------------------


def _add_budget(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "budget",
        help="open, top up, show and verify budget accounts",
        description="Work on a budget directory (or the budget of an engine store), also while "
        "a server owns it: changes go through the shared arena and are journaled before the "
        "command reports success. Amounts are integer microcents.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    opener = actions.add_parser("open", help="open an account (creating the budget if needed)")
    opener.add_argument("directory", metavar="DIR", help="the budget directory")
    opener.add_argument("name", metavar="NAME", help="account name: 1-64 of [A-Za-z0-9_.-]")
    opener.add_argument("--initial", type=_microcents, required=True, metavar="MICROCENTS")
    opener.add_argument("--exposure-cap", type=_microcents, metavar="MICROCENTS",
                        help="the most open reservations may hold at once (default: no cap)")
    opener.set_defaults(run=_run_budget_open, parser=opener)
    topper = actions.add_parser("top-up", help="add funds to an account")
    topper.add_argument("directory", metavar="DIR", help="the budget directory or engine store")
    topper.add_argument("name", metavar="NAME")
    topper.add_argument("amount", type=_microcents, metavar="MICROCENTS")
    topper.set_defaults(run=_run_budget_top_up, parser=topper)
    for action, run, text in (
        ("show", _run_budget_show, "print every account and its open holds"),
        ("verify", _run_budget_verify,
         "check remaining + reserved + committed == initial + top-ups, remaining >= 0 and "
         "reserved == the open holds, for every account; exit 1 at the first violation"),
    ):
        sub = actions.add_parser(action, help=text, description=text)
        sub.add_argument("directory", metavar="DIR", help="the budget directory or engine store")
        sub.add_argument("--json", action="store_true", help="print JSON instead of a table")
        sub.set_defaults(run=run, parser=sub)


def _microcents(text: str) -> int:
    try:
        return int(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer number of microcents") from None


def _run_budget_open(args: argparse.Namespace) -> int:
    from syntra.budget import tool

    state = tool.open_account(args.directory, args.name, args.initial, args.exposure_cap)
    print(f"opened {state.name!r} with {state.initial:,} microcents (account {state.index})")
    return 0


def _run_budget_top_up(args: argparse.Namespace) -> int:
    from syntra.budget import tool

    state = tool.top_up(args.directory, args.name, args.amount)
    print(f"{state.name!r} now has {state.remaining:,} microcents free")
    return 0


def _run_budget_show(args: argparse.Namespace) -> int:
    from syntra.budget import tool

    state = tool.snapshot(args.directory)
    if args.json:
        print(json.dumps({"live_owner": state.live_owner,
                          "accounts": [a._asdict() for a in state.accounts],
                          "holds": [h._asdict() for h in state.holds]}, indent=2))
        return 0
    print(_budget_table(state))
    return 0


def _run_budget_verify(args: argparse.Namespace) -> int:
    from syntra.budget import tool

    state, problems = tool.verify(args.directory)
    if args.json:
        print(json.dumps({"ok": not problems, "accounts": len(state.accounts), "problems": problems}, indent=2))
    elif problems:
        print(f"VIOLATION: {problems[0]}")
        if len(problems) > 1:
            print(f"({_count(len(problems) - 1, 'more violation')})")
    else:
        print(f"OK: {_count(len(state.accounts), 'account')}, {_count(len(state.holds), 'open hold')};"
              " every account conserves its money")
    return 1 if problems else 0


def _budget_table(state) -> str:
    holds: dict[int, int] = {}
    for h in state.holds:
        holds[h.account] = holds.get(h.account, 0) + 1
    cap = lambda a: "-" if a.exposure_cap == 2**63 - 1 else f"{a.exposure_cap:,}"  # noqa: E731
    rows = [[a.name, f"{a.initial + a.topped_up:,}", f"{a.remaining:,}", f"{a.reserved:,}",
             f"{a.committed:,}", cap(a), str(holds.get(a.index, 0))] for a in state.accounts]
    owner = "owned by a running process" if state.live_owner else "no running owner"
    table = _table(["account", "funded", "remaining", "reserved", "committed", "exposure cap", "holds"],
                   rows, "<>>>>>>") if rows else "no accounts"
    return f"{table}\n({owner}; amounts in microcents)"


# --- author ------------------------------------------------------------------------------


def _add_author(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "author",
        help="turn a capsule spec (YAML) into a capsule directory Engine.install_dir installs",
        description="Check every field of SPEC (an error names its YAML path), compile its Lycan "
        "program, and write program.lycs, program.lyc, learning.json, reward_spec.json and "
        "manifest.json (with each file's BLAKE3) into DIR; a policy.json beside SPEC is copied.",
    )
    parser.add_argument("spec", metavar="SPEC", help="the capsule spec, capsule.yaml")
    parser.add_argument("--out-dir", required=True, metavar="DIR", help="where to write the capsule")
    parser.set_defaults(run=_run_author, parser=parser)


def _run_author(args: argparse.Namespace) -> int:
    from syntra.authoring import author

    manifest = author(args.spec, args.out_dir)
    print(f"wrote {manifest['name']} {manifest['version']} ({len(manifest['options'])} options) to {args.out_dir}")
    return 0


# --- shared ------------------------------------------------------------------------------


def _table(headers: list[str], rows: list[list[str]], align: str) -> str:
    """Columns padded to fit; ``align`` has one ``<`` (text) or ``>`` (numbers) per column."""
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]

    def line(cells: list[str]) -> str:
        padded = (c.ljust(w) if a == "<" else c.rjust(w) for c, w, a in zip(cells, widths, align))
        return "  ".join(padded).rstrip()

    return "\n".join(line(row) for row in [headers, *rows])


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",")] if text.strip() else []


def _numbers(text: str) -> list[float]:
    numbers = []
    for item in text.split(","):
        try:
            numbers.append(float(item))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{item.strip()!r} is not a number") from None
    return numbers


if __name__ == "__main__":
    raise SystemExit(main())
