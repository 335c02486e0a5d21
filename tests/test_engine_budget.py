"""Budgeted capsules through the Engine: holds, substitution, refusal, settlement, recovery."""

import threading
import time

import pytest
from syntra_core.budget import InsufficientFunds
from syntra_core.wal import Wal

from syntra import Engine
from syntra.budget import Budget
from syntra.budget.journal import JournalRecord, encode_id
from syntra.errors import DuplicateFeedback, InvalidConfig, InvalidReward, StorageError

NAME = "tenants/acme/jobs/llm/capsules/router"
COSTS = {"small": 1_000, "medium": 4_000, "large": 9_000}


def install(engine, **budget):
    spec = {"account": "llm", "costs": COSTS, **budget}
    return engine.install(NAME, options=list(COSTS), budget=spec)


def teach(cap, context, rewards, rounds=60):
    """Feed ``rounds`` decisions per option, each rewarded by ``rewards[option]``.

    Decisions the rule makes are fed whatever option they chose, so after this the rule
    strongly prefers the option with the highest reward."""
    for _ in range(rounds * len(rewards)):
        d = cap.decide(context)
        cap.feedback(d.decision_id, rewards[d.option], cost=0)


@pytest.fixture
def engine():
    eng = Engine.memory(seed=11)
    eng.budget.open_account("llm", 1_000_000)
    yield eng
    eng.close()


def test_install_checks_the_budget_spec(engine):
    with pytest.raises(InvalidConfig, match="not an open budget account"):
        engine.install(NAME, options=list(COSTS), budget={"account": "nope", "costs": COSTS})
    with pytest.raises(InvalidConfig, match=r"missing \['large'\]"):
        engine.install(NAME, options=list(COSTS), budget={"account": "llm", "costs": {"small": 1, "medium": 2}})
    with pytest.raises(InvalidConfig, match=r"budget.costs\['small'\]"):
        engine.install(NAME, options=list(COSTS), budget={"account": "llm", "costs": {**COSTS, "small": -1}})
    with pytest.raises(InvalidConfig, match="hold_seconds"):
        install(engine, hold_seconds=float("nan"))
    with pytest.raises(InvalidConfig, match="unknown fields"):
        install(engine, limit=5)
    assert NAME not in engine


def test_a_decision_holds_its_cost(engine):
    cap = install(engine)
    d = cap.decide("eu")
    assert d.cost == COSTS[d.option] and not d.refused and d.substituted_for is None
    account = engine.budget.account("llm")
    assert (account.reserved, account.remaining) == (d.cost, 1_000_000 - d.cost)
    assert cap.report()["budget"]["held"][d.option] == d.cost


def test_feedback_commits_the_actual_cost_or_releases(engine):
    cap = install(engine)
    first, second = cap.decide("eu"), cap.decide("eu")
    cap.feedback(first.decision_id, 1.0, cost=first.cost // 2)   # under the hold: the rest returns
    cap.feedback(second.decision_id, 0.0)                       # no cost: the hold is released
    account = engine.budget.account("llm")
    assert (account.reserved, account.committed) == (0, first.cost // 2)
    assert account.remaining == 1_000_000 - first.cost // 2
    assert cap.report()["budget"]["spend"][first.option] == first.cost // 2
    assert engine.budget.verify() == []


def test_an_overrun_the_account_cannot_cover_changes_nothing(engine):
    cap = install(engine)
    d = cap.decide("eu")
    spare = engine.budget.account("llm").remaining
    with pytest.raises(InsufficientFunds):
        cap.feedback(d.decision_id, 1.0, cost=d.cost + spare + 1)
    assert cap.is_pending(d.decision_id)
    assert engine.budget.account("llm").reserved == d.cost
    assert sum(cap.report()["contexts"]["eu"]["pulls"].values()) == 0
    engine.budget.top_up("llm", 1)
    cap.feedback(d.decision_id, 1.0, cost=d.cost + spare + 1)
    account = engine.budget.account("llm")
    assert (account.remaining, account.reserved, account.committed) == (0, 0, 1_000_001)


def test_a_bad_reward_or_cost_settles_nothing(engine):
    cap = install(engine)
    d = cap.decide("eu")
    for reward, cost in [(0.5, 10), (float("nan"), 10), (1.0, -1), (1.0, 1.5), (1.0, True)]:
        with pytest.raises(InvalidReward):
            cap.feedback(d.decision_id, reward, cost=cost)
    assert engine.budget.account("llm").reserved == d.cost
    cap.feedback(d.decision_id, 1.0, cost=d.cost)
    with pytest.raises(DuplicateFeedback):
        cap.feedback(d.decision_id, 1.0, cost=d.cost)
    assert engine.budget.account("llm").committed == d.cost


def test_a_capsule_without_a_budget_refuses_a_cost():
    eng = Engine.memory()
    cap = eng.install(NAME, options=["a", "b"])
    d = cap.decide("eu")
    with pytest.raises(InvalidReward, match="no budget"):
        cap.feedback(d.decision_id, 1.0, cost=5)
    assert cap.is_pending(d.decision_id)


def test_a_preferred_option_that_does_not_fit_is_substituted(engine):
    cap = install(engine)
    teach(cap, "eu", {"small": 0.0, "medium": 1.0, "large": 1.0})
    # Hold everything but what the medium option costs: large (the rule's favourite with
    # medium) cannot fit, medium just does, and the kernel prefers it to small, which the
    # capsule has learned is worse.
    spare = engine.budget.available("llm")
    engine.budget.reserve("llm", spare - COSTS["medium"], ttl=600)
    seen = set()
    for _ in range(40):
        d = cap.decide("eu")
        seen.add((d.option, d.substituted_for))
        if d.refused:
            break
        cap.feedback(d.decision_id, 1.0)   # released: the same funds are there next time
    assert ("medium", "large") in seen
    assert all(option == "medium" for option, _ in seen)
    assert cap.report()["budget"]["substitutions"] >= 1


def test_nothing_fits_is_a_refusal_that_changes_no_money(engine):
    cap = install(engine)
    engine.budget.reserve("llm", engine.budget.available("llm") - COSTS["small"] + 1, ttl=600)
    before = engine.budget.account("llm")
    d = cap.decide("eu")
    assert d.refused and d.decision_id is None and d.option is None and d.cost == 0
    assert d.refusal == "budget: insufficient_funds"
    assert engine.budget.account("llm") == before
    assert cap.pending == 0 and cap.decisions == 1
    assert cap.report()["budget"]["refusals"] == 1


def test_exposure_cap_refusal_names_its_reason():
    eng = Engine.memory()
    eng.budget.open_account("llm", 1_000_000, exposure_cap=COSTS["large"])
    cap = install(eng)
    held = [cap.decide("eu") for _ in range(12)]
    refused = [d for d in held if d.refused]
    assert refused and all(d.refusal == "budget: exposure_cap_exceeded" for d in refused)
    assert eng.budget.account("llm").reserved <= COSTS["large"]


def test_an_expired_hold_is_returned_and_feedback_still_learns(engine):
    cap = install(engine, hold_seconds=0.001)
    d = cap.decide("eu")
    time.sleep(0.01)
    cap.feedback(d.decision_id, 1.0, cost=d.cost)
    account = engine.budget.account("llm")
    assert (account.remaining, account.reserved, account.committed) == (1_000_000, 0, 0)
    assert cap.report()["contexts"]["eu"]["pulls"][d.option] == 1


def test_threads_never_overspend():
    eng = Engine.memory()
    funds = 50 * COSTS["large"]
    eng.budget.open_account("llm", funds)
    cap = install(eng)
    granted = []

    def worker():
        for _ in range(100):
            d = cap.decide("eu")
            if not d.refused:
                granted.append(d.cost)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    account = eng.budget.account("llm")
    assert account.reserved == sum(granted) <= funds
    assert account.remaining == funds - sum(granted)
    assert eng.budget.verify() == []


def test_budgeted_decisions_survive_a_restart(tmp_path):
    eng = Engine.open(tmp_path, seed=5)
    eng.budget.open_account("llm", 20_000)
    cap = install(eng)
    made = [cap.decide("eu") for _ in range(6)]
    assert any(d.refused for d in made) and any(not d.refused for d in made)
    digest, report = eng.state_digest(), cap.report()
    eng.close(checkpoint=False)

    eng = Engine.open(tmp_path)
    cap = eng.capsule(NAME)
    assert eng.state_digest() == digest
    assert cap.report() == report
    served = [d for d in made if not d.refused]
    for d in served:
        cap.feedback(d.decision_id, 1.0, cost=d.cost - 1)
    account = eng.budget.account("llm")
    assert (account.reserved, account.committed) == (0, sum(d.cost - 1 for d in served))
    eng.close()

    eng = Engine.open(tmp_path)
    assert eng.budget.account("llm") == account
    assert eng.capsule(NAME).report()["budget"]["spend"] == {
        o: sum(d.cost - 1 for d in served if d.option == o) for o in COSTS}
    eng.close()


def test_a_substitute_is_logged_with_propensity_one(engine):
    cap = install(engine)
    teach(cap, "eu", {"small": 0.0, "medium": 1.0, "large": 1.0})
    engine.budget.reserve("llm", engine.budget.available("llm") - COSTS["medium"], ttl=600)
    substituted = []
    for _ in range(40):
        d = cap.decide("eu")
        if d.substituted_for:
            substituted.append(d)
        cap.feedback(d.decision_id, 1.0)
    assert substituted
    assert all((d.option, d.substituted_for, d.propensity) == ("medium", "large", 1.0)
               for d in substituted)


def test_lapsed_holds_are_swept_before_refusing():
    eng = Engine.memory()
    eng.budget.open_account("llm", 3 * COSTS["large"])
    cap = install(eng, hold_seconds=0.05)
    while eng.budget.available("llm") >= COSTS["small"]:
        assert not cap.decide("eu").refused     # holds nobody settles
    time.sleep(0.1)
    assert not cap.decide("eu").refused
    assert eng.budget.verify() == []


def test_uninstall_gives_the_holds_back(engine):
    cap = install(engine)
    for _ in range(3):
        cap.decide("eu")
    engine.uninstall(NAME)
    assert engine.budget.account("llm").reserved == 0
    assert engine.budget.reservations() == []


def test_a_free_option_is_charged_what_it_cost_after_a_restart(tmp_path):
    eng = Engine.open(tmp_path, seed=1)
    eng.budget.open_account("llm", 10_000)
    cap = eng.install(NAME, options=["free", "paid"],
                      budget={"account": "llm", "costs": {"free": 0, "paid": 100}})
    made = [cap.decide("eu") for _ in range(12)]
    free = next(d for d in made if d.option == "free")
    eng.close(checkpoint=False)
    eng = Engine.open(tmp_path)
    eng.capsule(NAME).feedback(free.decision_id, 1.0, cost=700)
    assert eng.budget.account("llm").committed == 700
    assert eng.capsule(NAME).report()["budget"]["spend"]["free"] == 700
    eng.close()


def test_feedback_whose_budget_record_was_lost_is_settled_on_recovery(tmp_path):
    """The engine's feedback record and the budget's commit sync apart: if only the first
    reaches the disk, recovery commits the cost the feedback record carries."""
    eng = Engine.open(tmp_path, seed=1)
    eng.budget.open_account("llm", 100_000)
    cap = install(eng)
    d = cap.decide("eu")
    budget = eng.budget
    real_submit = budget._submit

    def lose_commits(kind, payload):
        return None if kind == JournalRecord.COMMIT else real_submit(kind, payload)

    budget._submit = lose_commits
    cap.feedback(d.decision_id, 1.0, cost=d.cost - 3)
    eng.close(checkpoint=False)

    eng = Engine.open(tmp_path)
    account = eng.budget.account("llm")
    assert (account.reserved, account.committed) == (0, d.cost - 3)
    assert eng.capsule(NAME).report()["budget"]["spend"][d.option] == d.cost - 3
    eng.close()
    eng = Engine.open(tmp_path)     # and the settlement itself is journaled now
    assert eng.budget.account("llm") == account
    eng.close()


def test_a_budget_failure_refuses_the_decision_and_keeps_the_log_in_step(tmp_path):
    eng = Engine.open(tmp_path, seed=1)
    eng.budget.open_account("llm", 100_000)
    cap = install(eng)
    real_reserve = eng.budget.submit_reserve
    failures = iter([StorageError("journal write failed")])

    def flaky_reserve(*args, **kwargs):
        error = next(failures, None)
        if error is not None:
            raise error
        return real_reserve(*args, **kwargs)

    eng.budget.submit_reserve = flaky_reserve
    with pytest.raises(StorageError):
        cap.decide("eu")
    after = [cap.decide("eu") for _ in range(3)]
    assert all(not d.refused for d in after) and cap.pending == 3
    digest = eng.state_digest()
    eng.close(checkpoint=False)
    eng = Engine.open(tmp_path)
    assert eng.state_digest() == digest
    assert eng.capsule(NAME).report()["budget"]["refusals"] == 1
    eng.close()


def test_a_rebuild_never_reuses_an_id_an_expiry_names(tmp_path):
    """A sweep can journal the expiry of a hold whose reserve record never landed; ids
    handed out after a rebuild must start above it."""
    directory = tmp_path / "budget"
    with Budget.open(directory) as budget:
        budget.open_account("llm", 1_000)
    with Wal.open(directory / "journal") as wal:
        wal.append(JournalRecord.EXPIRE, encode_id(41))
    with Budget.open(directory) as budget:
        hold = budget.reserve("llm", 10, ttl=60)
        assert hold > 41
        assert budget.commit(hold, 10) == 10
    with Budget.open(directory) as budget:
        assert budget.account("llm").committed == 10


def test_refusal_and_substitution_counts_survive_a_checkpoint(tmp_path):
    eng = Engine.open(tmp_path, seed=3)
    eng.budget.open_account("llm", 12_000)
    cap = install(eng)
    for _ in range(8):
        cap.decide("eu")
    counts = {k: cap.report()["budget"][k] for k in ("refusals", "substitutions")}
    assert counts["refusals"] > 0
    eng.close()                                  # with a final checkpoint: no log tail
    eng = Engine.open(tmp_path)
    assert {k: eng.capsule(NAME).report()["budget"][k] for k in counts} == counts
    eng.close()


def test_a_durable_engine_sweeps_lapsed_holds_in_the_background(tmp_path):
    eng = Engine.open(tmp_path, seed=1)
    eng.budget.open_account("llm", 3 * COSTS["large"])
    cap = install(eng, hold_seconds=0.05)
    while eng.budget.available("llm") >= COSTS["small"]:
        assert not cap.decide("eu").refused     # holds nobody settles
    deadline = time.monotonic() + 10
    while eng.budget.account("llm").reserved and time.monotonic() < deadline:
        time.sleep(0.05)
    assert eng.budget.account("llm").reserved == 0
    last = cap.decide("eu")
    assert not last.refused
    eng.close()
    eng = Engine.open(tmp_path)                  # the expiries were journaled
    account = eng.budget.account("llm")
    assert (account.reserved, account.committed) == (last.cost, 0)
    eng.close()
