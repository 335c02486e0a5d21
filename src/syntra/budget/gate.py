"""A capsule's budget: what each option costs, and holding that cost for each decision.

A capsule installed with ``budget={"account": ..., "costs": {option: microcents}}`` holds
the chosen option's cost on the account for every decision. When the option the rule
prefers does not fit (not enough funds, or the exposure cap), the decision kernel picks a
substitute: every option goes through the kernel's gates with the account's available
funds as the budget limit, and among those that fit the one with the best utility wins,
utility being ``value_microcents`` times what the capsule has learned of that option in
this context, minus its cost. When nothing fits (or nothing that fits is worth its cost)
the decision is a refusal. Feedback then commits the actual cost (``cost=``) or releases
the hold.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from syntra_core.budget import (
    MAX_TTL_SECONDS,
    BudgetRefused,
    ReservationExpired,
    ReservationSettled,
    UnknownAccount,
)
from syntra_core.kernel import Option, PolicySnapshot, Request, prescribe
from syntra_core.learner import with_cost

from syntra.errors import InvalidConfig

# Unless the capsule says what a fully successful outcome is worth, value it so that one
# basis point of learned quality outweighs any realistic per-decision cost: the substitute
# is then the best option that fits, the cheaper one on a tie.
DEFAULT_VALUE_MICROCENTS = 10**12
DEFAULT_HOLD_SECONDS = 300.0
MAX_COST = 2**63 - 1
# Refs kept with each hold, so a restart can match holds to decisions.
OPTION_BITS = 16
OPTION_MASK = (1 << OPTION_BITS) - 1
# A racing reserve can take the funds the kernel counted on; then choose again.
ATTEMPTS = 3
BPS = 10_000


@dataclass(frozen=True, slots=True)
class BudgetSpec:
    account: str
    costs: tuple[int, ...]  # microcents, by option index
    hold_seconds: float = DEFAULT_HOLD_SECONDS
    value_microcents: int = DEFAULT_VALUE_MICROCENTS

    @classmethod
    def parse(cls, spec: Mapping[str, Any] | None, options: tuple[str, ...]) -> BudgetSpec | None:
        if spec is None:
            return None
        if not isinstance(spec, Mapping):
            raise InvalidConfig(f"budget must be a mapping, got {type(spec).__name__}")
        unknown = set(spec) - {"account", "costs", "hold_seconds", "value_microcents"}
        if unknown:
            raise InvalidConfig(f"budget has unknown fields: {sorted(unknown)}")
        account = spec.get("account")
        if not isinstance(account, str) or not account:
            raise InvalidConfig(f"budget.account must name a budget account, got {account!r}")
        costs = spec.get("costs")
        if not isinstance(costs, Mapping):
            raise InvalidConfig("budget.costs must map every option to its cost in microcents")
        if set(costs) != set(options):
            missing, extra = sorted(set(options) - set(costs)), sorted(set(costs) - set(options))
            raise InvalidConfig(f"budget.costs must name every option exactly: missing {missing}, unknown {extra}")
        for option, cost in costs.items():
            if not _is_int(cost) or not 0 <= cost <= MAX_COST:
                raise InvalidConfig(f"budget.costs[{option!r}] must be integer microcents in [0, {MAX_COST}], got {cost!r}")
        hold = spec.get("hold_seconds", DEFAULT_HOLD_SECONDS)
        if isinstance(hold, bool) or not isinstance(hold, numbers.Real) or not math.isfinite(hold) \
                or not 0 < hold <= MAX_TTL_SECONDS:
            raise InvalidConfig(f"budget.hold_seconds must be in (0, {MAX_TTL_SECONDS}], got {hold!r}")
        value = spec.get("value_microcents", DEFAULT_VALUE_MICROCENTS)
        if not _is_int(value) or not 0 < value <= MAX_COST:
            raise InvalidConfig(f"budget.value_microcents must be integer microcents in [1, {MAX_COST}], got {value!r}")
        return cls(account, tuple(int(costs[o]) for o in options), float(hold), int(value))

    def account_index(self, budget) -> int:
        """The index of this spec's account in ``budget``; InvalidConfig if it is not open."""
        try:
            return budget.arena.find_account(self.account)
        except UnknownAccount:
            raise InvalidConfig(f"budget.account {self.account!r} is not an open budget account") from None

    def to_dict(self, options: tuple[str, ...]) -> dict[str, Any]:
        return {"account": self.account, "costs": dict(zip(options, self.costs)),
                "hold_seconds": self.hold_seconds, "value_microcents": self.value_microcents}


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _ref(uid: int, option: int) -> int:
    return (uid << OPTION_BITS) | option


class CapsuleBudget:
    """One capsule's holds on its budget account. The capsule serialises calls to it."""

    def __init__(self, spec: BudgetSpec, budget, uid: int, options: tuple[str, ...]):
        self.spec = spec
        self.budget = budget
        self.uid = uid
        self.options = options
        self.account = spec.account_index(budget)
        # Decision sequence -> reservation id, for holds not yet settled. Rebuilt from the
        # budget's own holds, so after a restart it has exactly the holds the journal has.
        self.holds = {h.ref_b: h.id for h in budget.reservations()
                      if h.ref_a >> OPTION_BITS == uid and h.account == self.account}
        # Costs that replayed feedback reported, for holds the journal did not see settled.
        self.replayed_costs: dict[int, int | None] = {}
        self.refusals = 0
        self.substitutions = 0

    def hold(self, learner, d, qualities, minimum_quality_bps: int = 0):
        """Hold the cost of decision ``d`` (substituting or refusing when it does not fit).

        ``qualities`` is a callable giving each option's learned quality in basis points for
        ``d``'s context; a substitute must reach ``minimum_quality_bps`` (the quality floor
        of the request's regime, fed to the kernel's quality gate). Returns (decision, ticket): the ticket (None without a journal)
        must be waited on before the decision is acknowledged. Errors other than a refusal
        (the journal failed) propagate, and the caller must refuse ``d``.
        """
        arm = d.option_index
        reason = "insufficient_funds"
        swept = False
        for _ in range(ATTEMPTS + 1):
            cost = self.spec.costs[arm]
            if cost == 0:
                return self._served(learner, d, arm, 0), None
            try:
                rid, ticket = self.budget.submit_reserve(
                    self.account, cost, self.spec.hold_seconds, ref_a=_ref(self.uid, arm), ref_b=d.sequence)
            except BudgetRefused as refusal:
                reason = refusal.reason
                if not swept and not self.budget.durable:
                    # Lapsed holds still count until something touches them. (A durable
                    # budget has a sweeper thread: sweeping here would wait on its journal.)
                    swept = True
                    if self.budget.expire_due():
                        continue
                arm = self._substitute(d, arm, qualities(), minimum_quality_bps)
                if arm is None:
                    break
                continue
            self.holds[d.sequence] = rid
            return self._served(learner, d, arm, cost), ticket
        self.refusals += 1
        return learner.refuse_last(d, f"budget: {reason}"), None

    def _served(self, learner, d, arm: int, cost: int):
        if arm != d.option_index:
            self.substitutions += 1
            d = learner.substitute_last(d, arm)
        return with_cost(d, cost) if cost else d

    def _substitute(self, d, refused_arm: int, qualities: list[int], minimum_quality_bps: int) -> int | None:
        """The kernel's pick among the options that fit what the account has left (and are
        worth their cost: an option whose utility is not positive is not served)."""
        available = self.budget.available(self.spec.account)
        policy = PolicySnapshot(
            [Option(i, quality_bps=q, risk_ceiling_bps=BPS, p95_latency_ms=0, input_cost_per_million=cost)
             for i, (q, cost) in enumerate(zip(qualities, self.spec.costs))],
            hard_risk_limit_bps=BPS, minimum_confidence_bps=0, risk_penalty_multiplier_bps=0,
            latency_penalty_microcents_per_ms=0,
        )
        # input_units of one million make the kernel's cost exactly the option's cost.
        request = Request(
            sequence=d.sequence, requested_option=refused_arm, input_units=1_000_000, output_units=0,
            business_value_microcents=self.spec.value_microcents, budget_limit_microcents=available,
            risk_bps=0, confidence_bps=BPS, minimum_quality_bps=minimum_quality_bps, max_p95_latency_ms=0,
        )
        verdict = prescribe(policy, request)
        return None if verdict.action == "reject" else verdict.winner_id

    def settle(self, learner, sequence: int, cost: int | None):
        """Claim the settlement of decision ``sequence``'s hold: commit ``cost``, or release
        the hold when None. Returns the claim to pass to :meth:`finish` once the feedback is
        durable (None when there is nothing to settle). A refusal (an overrun the account
        cannot cover) raises and changes nothing; a hold that lapsed is simply gone."""
        rid = self.holds.get(sequence, 0)
        arm = learner.pending_arm(sequence)
        if not rid and cost and arm >= 0 and self.spec.costs[arm] == 0:
            # A free option held nothing: charge what the decision actually cost. (A hold
            # that lapsed is not charged: its money went back when it expired.)
            rid, _ = self.budget.submit_reserve(self.account, cost, self.spec.hold_seconds,
                                                ref_a=_ref(self.uid, arm), ref_b=sequence)
        claim = None
        if rid:
            try:
                claim = self.budget.begin_settle(rid, cost)
            except (ReservationExpired, ReservationSettled):
                pass
        self.holds.pop(sequence, None)
        return claim

    def finish(self, claim) -> None:
        """Wait for the claim's journal record, then free its money."""
        if claim is not None:
            try:
                self.budget.finish_settle(*claim)
            except ReservationExpired:
                pass

    async def finish_async(self, claim) -> None:
        if claim is not None:
            try:
                await self.budget.finish_settle_async(*claim)
            except ReservationExpired:
                pass

    def reconcile(self, learner) -> int:
        """After replay: settle the holds of decisions whose feedback is in the engine's log
        but whose settlement the budget journal lost (the two logs sync apart), with the
        cost that feedback reported. Returns how many were settled."""
        settled = 0
        for sequence in [s for s in self.holds if learner.pending_arm(s) < 0]:
            self.finish(self.settle(learner, sequence, self.replayed_costs.get(sequence)))
            settled += 1
        self.replayed_costs.clear()
        return settled

    def release_all(self) -> None:
        """Give back every hold (the capsule is being uninstalled)."""
        for rid in list(self.holds.values()):
            try:
                self.budget.release(rid)
            except (ReservationExpired, ReservationSettled):
                pass
        self.holds.clear()

    def counters(self) -> dict[str, int]:
        """What a checkpoint keeps of this object (holds live in the budget journal)."""
        return {"refusals": self.refusals, "substitutions": self.substitutions}

    def load_counters(self, counters: dict[str, int]) -> None:
        refusals, substitutions = counters.get("refusals", 0), counters.get("substitutions", 0)
        if not all(isinstance(n, int) and n >= 0 for n in (refusals, substitutions)):
            raise ValueError(f"bad budget counters {counters!r}")
        self.refusals, self.substitutions = refusals, substitutions

    def report(self) -> dict[str, Any]:
        spend = self.budget.spend()
        held = {}
        for h in self.budget.reservations():
            if h.ref_a >> OPTION_BITS == self.uid and h.account == self.account:
                option = self.options[h.ref_a & OPTION_MASK]
                held[option] = held.get(option, 0) + h.amount
        return {
            "account": self.spec.account,
            "spend": {o: spend.get(_ref(self.uid, i), 0) for i, o in enumerate(self.options)},
            "held": {o: held.get(o, 0) for o in self.options},
            "refusals": self.refusals,
            "substitutions": self.substitutions,
        }


def learned_quality_bps(table, context_key, low: float, high: float) -> list[int]:
    """Each option's learned reward in ``context_key``, scaled to basis points with a
    uniform prior (so an untried option scores the middle), at least 1."""
    n = table.n_arms
    if context_key not in table:
        return [BPS // 2] * n
    pulls, sums = table.pulls(context_key), table.reward_sums(context_key)
    out = []
    for k in range(n):
        scaled = (sums[k] - low * pulls[k]) / (high - low)
        out.append(max(1, min(BPS, round(BPS * (scaled + 1) / (pulls[k] + 2)))))
    return out
