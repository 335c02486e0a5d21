"""``syntra budget``: open, top-up, show and verify, on an idle budget and on a live one."""

import json
import mmap
import struct
import subprocess
import sys

import pytest
from syntra_core.budget import ACCOUNT_BYTES, ACCOUNT_FIELDS, HEADER_BYTES

from syntra import Engine
from syntra.budget import Budget
from syntra.cli import main


def run(capsys, *argv):
    code = main(["budget", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_open_top_up_show_verify(tmp_path, capsys):
    where = tmp_path / "budget"
    assert run(capsys, "open", where, "llm", "--initial", "1_000_000", "--exposure-cap", "400000")[0] == 0
    assert run(capsys, "open", where, "search", "--initial", "0")[0] == 0
    code, out, _ = run(capsys, "top-up", where, "search", "2500")
    assert code == 0 and "2,500 microcents free" in out

    code, out, _ = run(capsys, "show", where, "--json")
    shown = json.loads(out)
    assert code == 0 and shown["live_owner"] is False and shown["holds"] == []
    assert [(a["name"], a["remaining"], a["exposure_cap"], a["topped_up"]) for a in shown["accounts"]] == [
        ("llm", 1_000_000, 400_000, 0), ("search", 2_500, 2**63 - 1, 2_500)]
    code, out, _ = run(capsys, "show", where)
    assert code == 0 and "llm" in out and "400,000" in out

    code, out, _ = run(capsys, "verify", where)
    assert code == 0 and out.startswith("OK: 2 accounts, 0 open holds")

    # What the commands did is journaled: the owner's rebuild sees it.
    with Budget.open(where) as budget:
        assert budget.account("search").remaining == 2_500
        assert budget.account("llm").exposure_cap == 400_000


@pytest.mark.parametrize("argv, message", [
    (["top-up", "{d}", "nope", "5"], "no open account 'nope'"),
    (["top-up", "{d}", "llm", "0"], "amount must be in [1,"),
    (["top-up", "{d}", "llm", str(2**63 - 1)], "would exceed"),
    (["open", "{d}", "llm", "--initial", "1"], "already open"),
    (["open", "{d}", "bad name", "--initial", "1"], "account names are"),
])
def test_refusals_exit_2_with_the_reason(tmp_path, capsys, argv, message):
    where = tmp_path / "budget"
    run(capsys, "open", where, "llm", "--initial", "10")
    code, out, err = run(capsys, *[a.format(d=where) for a in argv])
    assert code == 2 and message in err and out == ""


def test_show_on_a_missing_budget_is_an_error(tmp_path, capsys):
    code, _, err = run(capsys, "show", tmp_path / "nothing")
    assert code == 2 and "no budget arena" in err


def test_verify_reports_the_first_violation(tmp_path, capsys):
    where = tmp_path / "budget"
    run(capsys, "open", where, "llm", "--initial", "1000")
    run(capsys, "open", where, "ops", "--initial", "500")
    # Damage the second account behind the arena's back: 7 microcents appear from nowhere.
    with open(where / "arena", "r+b") as f, mmap.mmap(f.fileno(), 0) as m:
        at = HEADER_BYTES + ACCOUNT_BYTES + ACCOUNT_FIELDS["remaining"]
        struct.pack_into("<q", m, at, 507)
    code, out, _ = run(capsys, "verify", where)
    assert code == 1
    assert out.splitlines()[0] == (
        "VIOLATION: account 'ops' (index 1): remaining 507 + reserved 0 + committed 0 = 507,"
        " but initial 500 + top-ups 0 = 500")


def test_top_up_reaches_a_live_owner(tmp_path):
    """A running engine owns the budget; the command changes its arena in place and
    journals on the side, and the engine's next start still has the money."""
    engine = Engine.open(tmp_path, seed=1)
    engine.budget.open_account("llm", 100)
    cap = engine.install("tenants/t/jobs/j/capsules/c", options=["a", "b"],
                         budget={"account": "llm", "costs": {"a": 60, "b": 60}})
    assert not cap.decide("x").refused
    assert cap.decide("x").refused            # 40 left: nothing fits
    done = subprocess.run([sys.executable, "-m", "syntra.cli", "budget", "top-up", str(tmp_path), "llm", "80"],
                          capture_output=True, text=True, check=True)
    assert "120 microcents free" in done.stdout
    assert not cap.decide("x").refused        # the owner sees the top-up at once
    shown = subprocess.run([sys.executable, "-m", "syntra.cli", "budget", "show", str(tmp_path), "--json"],
                           capture_output=True, text=True, check=True)
    assert json.loads(shown.stdout)["live_owner"] is True
    engine.close()

    engine = Engine.open(tmp_path)
    account = engine.budget.account("llm")
    assert (account.topped_up, account.reserved, account.remaining) == (80, 120, 60)
    engine.close()
