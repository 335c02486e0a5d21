"""The integer decision kernel: governance gates, utility in microcents, ranking, digests.

Money is int64 microcents, ratios are basis points (bps, 10000 = 100%), and there are no
floats anywhere: the same inputs give the same decision, bit for bit, on every machine.

A decision runs in three steps.

1. Global gates. ``risk_bps >= hard_risk_limit_bps`` rejects the request as
   ``"hard_risk_limit"``, then ``confidence_bps < minimum_confidence_bps`` as
   ``"minimum_confidence"``. A global reject counts 1 in its bucket and evaluates no option.
2. Per-option gates, in :data:`GATES` order; the first that fails counts once in the
   histogram: ``disabled``, ``quality_floor`` (quality below the request's minimum),
   ``latency`` (p95 above the request's maximum), ``capability`` (a required bit missing),
   ``provider`` (the option's provider bit not allowed), ``region`` (a required region bit
   missing), ``risk_ceiling`` (request risk above the option's ceiling), ``budget`` (cost
   above the budget limit) and ``non_positive_utility`` (utility <= 0).
3. Ranking of the options left: utility descending, then cost ascending, then quality
   descending, then option id ascending. The best is the winner (``"execute_requested"``
   if it is the requested option, else ``"substitute"``) and the second is the runner-up,
   the counterfactual. With none left the request is rejected for its dominant gate: the
   bucket with the highest count, ties going to the earlier gate.

Utility of option ``o`` for a request of value ``V`` (floor is toward minus infinity)::

    cost    = ceil(input_units * o.input_cost_per_million / 10**6)
            + ceil(output_units * o.output_cost_per_million / 10**6)
    utility = floor(V * confidence_bps * o.quality_bps / 10**8)
            - floor(V * risk_bps * risk_penalty_multiplier_bps / 10**8)
            - cost
            - o.p95_latency_ms * latency_penalty_microcents_per_ms

Each of the five money terms (the two cost parts, the value term, the risk term and the
latency term) is computed exactly and saturated to the int64 range on its own; the cost is
the saturated sum of its parts; the utility is the exact sum of its four saturated terms,
saturated once. So nothing overflows for any inputs, and a term that really is beyond int64
pins at the bound. ``risk_penalty_multiplier_bps`` may reach 100000 (a 10x penalty).

Digest encoding (version 1). :func:`decision_digest` is BLAKE3-256 over the concatenation
below, all integers little-endian and fixed-width (u8/u16/u32/u64 unsigned, i64 signed)::

    tag       b"syntra.kernel.decision\\x00", then version u16
    policy    hard_risk_limit_bps u32, minimum_confidence_bps u32,
              risk_penalty_multiplier_bps u32, latency_penalty_microcents_per_ms i64,
              option count u32, then per option in catalog order:
                option_id u32, enabled u8, quality_bps u32, risk_ceiling_bps u32,
                p95_latency_ms u32, capabilities u64, provider_id u8, region_mask u64,
                input_cost_per_million i64, output_cost_per_million i64
    request   sequence u64, requested_option u32, input_units u32, output_units u32,
              business_value_microcents i64, budget_limit_microcents i64, risk_bps u32,
              confidence_bps u32, minimum_quality_bps u32, max_p95_latency_ms u32,
              required_capabilities u64, allowed_provider_mask u64, required_region_mask u64
    decision  sequence u64, action u8 (index in ACTIONS), reason u8 (index in REASONS),
              winner_id u32, winner_utility i64, winner_cost i64, has_runner_up u8,
              runner_up_id u32, runner_up_utility i64, options_evaluated u32,
              options_eligible u32, histogram 11 x u32 in GATES order

A missing winner or runner-up encodes its id and amounts as 0.

Example:

>>> from syntra_core.kernel import Option, PolicySnapshot, Request, prescribe, verify
>>> policy = PolicySnapshot(
...     [Option(1, quality_bps=9500, risk_ceiling_bps=3000, p95_latency_ms=900,
...             input_cost_per_million=3_000_000, output_cost_per_million=15_000_000),
...      Option(2, quality_bps=8000, risk_ceiling_bps=3000, p95_latency_ms=300,
...             input_cost_per_million=250_000, output_cost_per_million=1_250_000)],
...     hard_risk_limit_bps=5000, minimum_confidence_bps=6000,
...     risk_penalty_multiplier_bps=20000, latency_penalty_microcents_per_ms=20)
>>> request = Request(sequence=1, requested_option=1, input_units=2000,
...                   output_units=500, business_value_microcents=100_000,
...                   budget_limit_microcents=50_000, risk_bps=1000, confidence_bps=9000,
...                   minimum_quality_bps=7000, max_p95_latency_ms=1000)
>>> decision = prescribe(policy, request)
>>> decision.action, decision.winner_id, decision.winner_utility, decision.winner_cost
('substitute', 2, 44875, 1125)
>>> decision.runner_up_id, decision.runner_up_utility
(1, 34000)
>>> verify(policy, request, decision)
True
"""

cimport cython
from libc.stdint cimport INT64_MAX, INT64_MIN, UINT32_MAX, UINT64_MAX
from libc.string cimport memset

import operator
import struct

import blake3
import numpy as np

cdef extern from "kernel_math.h":
    int64_t syntra_mul_div_floor(int64_t a, int64_t b, int64_t d) noexcept nogil
    int64_t syntra_mul_div_ceil(uint64_t a, uint64_t b, uint64_t d) noexcept nogil
    int64_t syntra_mul_sat(int64_t a, int64_t b) noexcept nogil
    int64_t syntra_add_sat(int64_t a, int64_t b) noexcept nogil
    int64_t syntra_net_sat(int64_t gain, int64_t c1, int64_t c2, int64_t c3) noexcept nogil

# Enum constants so the divisors are literals in C and the compiler can strength-reduce
# the 64-bit divisions in kernel_math.h.
cdef enum:
    BPS_C = 10_000
    BPS_SQUARED = 100_000_000
    PER_MILLION = 1_000_000
    MAX_PROVIDER_ID = 63

MAX_OPTIONS = MAX_OPTIONS_C
BPS = BPS_C
MAX_RISK_PENALTY_MULTIPLIER_BPS = 10 * BPS_C

GATES = (
    "hard_risk_limit",
    "minimum_confidence",
    "disabled",
    "quality_floor",
    "latency",
    "capability",
    "provider",
    "region",
    "risk_ceiling",
    "budget",
    "non_positive_utility",
)
REASONS = GATES + ("ok",)
ACTIONS = ("execute_requested", "substitute", "reject")

# Native byte order and C alignment, so a row is exactly a RequestC (DecisionC below);
# the typed memoryviews in prescribe_batch check the layout field by field.
REQUEST_DTYPE = np.dtype(
    [
        ("sequence", "u8"),
        ("business_value_microcents", "i8"),
        ("budget_limit_microcents", "i8"),
        ("required_capabilities", "u8"),
        ("allowed_provider_mask", "u8"),
        ("required_region_mask", "u8"),
        ("requested_option", "u4"),
        ("input_units", "u4"),
        ("output_units", "u4"),
        ("risk_bps", "u4"),
        ("confidence_bps", "u4"),
        ("minimum_quality_bps", "u4"),
        ("max_p95_latency_ms", "u4"),
    ],
    align=True,
)

DECISION_DTYPE = np.dtype(
    [
        ("sequence", "u8"),
        ("winner_utility", "i8"),
        ("winner_cost", "i8"),
        ("runner_up_utility", "i8"),
        ("winner_id", "u4"),
        ("runner_up_id", "u4"),
        ("options_evaluated", "u4"),
        ("options_eligible", "u4"),
        ("histogram", "u4", (len(GATES),)),
        ("action", "u1"),
        ("reason", "u1"),
        ("has_runner_up", "u1"),
    ],
    align=True,
)

DIGEST_VERSION = 1
_DIGEST_TAG = b"syntra.kernel.decision\x00" + struct.pack("<H", DIGEST_VERSION)
_POLICY_LAYOUT = struct.Struct("<IIIqI")
_OPTION_LAYOUT = struct.Struct("<IBIIIQBQqq")
_REQUEST_LAYOUT = struct.Struct("<QIIIqqIIIIQQQ")
_DECISION_LAYOUT = struct.Struct(f"<QBBIqqBIqII{len(GATES)}I")


class PolicyError(ValueError):
    """A policy or option field is out of range, or the catalog is malformed."""


class RequestError(ValueError):
    """A request field is out of range, or names an option outside the catalog."""


# ---------------------------------------------------------------------------------------
# The kernel proper: C over structs, no GIL, no allocation, no errors.

ctypedef struct Candidate:
    int64_t utility
    int64_t cost
    uint32_t quality_bps
    uint32_t option_id


cdef inline bint _ranks_before(const Candidate* a, const Candidate* b) noexcept nogil:
    if a.utility != b.utility:
        return a.utility > b.utility
    if a.cost != b.cost:
        return a.cost < b.cost
    if a.quality_bps != b.quality_bps:
        return a.quality_bps > b.quality_bps
    return a.option_id < b.option_id


cdef inline int _first_failing_gate(const RequestC* request, const OptionC* option,
                                    int64_t risk_term, int64_t latency_term,
                                    Candidate* out) noexcept nogil:
    """The first gate that rejects ``option``, or GATE_COUNT after filling ``out``."""
    if not option.enabled:
        return GATE_DISABLED
    if option.quality_bps < request.minimum_quality_bps:
        return GATE_QUALITY_FLOOR
    if option.p95_latency_ms > request.max_p95_latency_ms:
        return GATE_LATENCY
    cdef uint64_t required = request.required_capabilities
    if (option.capabilities & required) != required:
        return GATE_CAPABILITY
    if not (request.allowed_provider_mask >> option.provider_id) & 1:
        return GATE_PROVIDER
    required = request.required_region_mask
    if (option.region_mask & required) != required:
        return GATE_REGION
    if request.risk_bps > option.risk_ceiling_bps:
        return GATE_RISK_CEILING

    # Money is only computed for options that survive the cheap gates.
    cdef int64_t cost = syntra_add_sat(
        syntra_mul_div_ceil(request.input_units, option.input_cost_per_million,
                            PER_MILLION),
        syntra_mul_div_ceil(request.output_units, option.output_cost_per_million,
                            PER_MILLION),
    )
    if cost > request.budget_limit_microcents:
        return GATE_BUDGET
    cdef int64_t value_term = syntra_mul_div_floor(
        request.business_value_microcents,
        <int64_t>request.confidence_bps * option.quality_bps,
        BPS_SQUARED,
    )
    cdef int64_t utility = syntra_net_sat(value_term, risk_term, cost, latency_term)
    if utility <= 0:
        return GATE_NON_POSITIVE_UTILITY

    out.utility = utility
    out.cost = cost
    out.quality_bps = option.quality_bps
    out.option_id = option.option_id
    return GATE_COUNT


cdef inline uint8_t _dominant_gate(const uint32_t* histogram) noexcept nogil:
    # Strictly greater, so a tie goes to the gate evaluated first.
    cdef uint8_t gate, best = 0
    for gate in range(1, GATE_COUNT):
        if histogram[gate] > histogram[best]:
            best = gate
    return best


cdef void prescribe_c(const PolicyC* policy, const RequestC* request,
                      DecisionC* out) noexcept nogil:
    memset(out, 0, sizeof(DecisionC))  # also zeroes padding, so output bytes are stable
    out.sequence = request.sequence
    out.action = ACTION_REJECT

    if request.risk_bps >= policy.hard_risk_limit_bps:
        out.histogram[GATE_HARD_RISK_LIMIT] = 1
        out.reason = GATE_HARD_RISK_LIMIT
        return
    if request.confidence_bps < policy.minimum_confidence_bps:
        out.histogram[GATE_MINIMUM_CONFIDENCE] = 1
        out.reason = GATE_MINIMUM_CONFIDENCE
        return

    # The risk term depends on the request alone, so it is paid for once.
    cdef int64_t risk_term = syntra_mul_div_floor(
        request.business_value_microcents,
        <int64_t>request.risk_bps * policy.risk_penalty_multiplier_bps,
        BPS_SQUARED,
    )
    # Only the top two are kept: the ranking is a total order, so that is all we need.
    # Eligible options have utility > 0, so this all-zero sentinel ranks below every one.
    cdef Candidate candidate
    cdef Candidate best = Candidate(0, 0, 0, 0)
    cdef Candidate runner_up = best
    cdef uint32_t i, eligible = 0
    cdef int gate
    for i in range(policy.n_options):
        gate = _first_failing_gate(request, &policy.options[i], risk_term,
                                   policy.latency_terms[i], &candidate)
        if gate != GATE_COUNT:
            out.histogram[gate] += 1
            continue
        eligible += 1
        if _ranks_before(&candidate, &best):
            runner_up = best
            best = candidate
        elif _ranks_before(&candidate, &runner_up):
            runner_up = candidate

    out.options_evaluated = policy.n_options
    out.options_eligible = eligible
    if eligible == 0:
        out.reason = _dominant_gate(out.histogram)
        return
    out.reason = GATE_COUNT
    out.action = (ACTION_EXECUTE_REQUESTED if best.option_id == request.requested_option
                  else ACTION_SUBSTITUTE)
    out.winner_id = best.option_id
    out.winner_utility = best.utility
    out.winner_cost = best.cost
    if eligible > 1:
        out.has_runner_up = True
        out.runner_up_id = runner_up.option_id
        out.runner_up_utility = runner_up.utility


# ---------------------------------------------------------------------------------------
# Python boundary: every value is checked here so the C side can trust its structs.

cdef object _integer(type error, str field, object value, object low, object high):
    """``value`` as an int in [low, high], or ``error`` naming ``field``.

    Floats are refused even when integral (and so are NaN and inf): money and ids are
    exact. Bools are refused too, since ``True`` where a number belongs is a bug.
    """
    if isinstance(value, (bool, np.bool_)):
        raise error(f"{field} must be an integer, got {value!r}")
    try:
        number = operator.index(value)
    except TypeError:
        raise error(f"{field} must be an integer, got {value!r}") from None
    if not low <= number <= high:
        raise error(f"{field} must be in [{low}, {high}], got {number}")
    return number


cdef object _flag(type error, str field, object value):
    if not isinstance(value, (bool, np.bool_)):
        raise error(f"{field} must be a bool, got {value!r}")
    return bool(value)


cdef str _fields_repr(object obj, tuple fields):
    args = ", ".join(f"{name}={getattr(obj, name)!r}" for name in fields)
    return f"{type(obj).__name__}({args})"


_OPTION_FIELDS = (
    "option_id", "enabled", "quality_bps", "risk_ceiling_bps", "p95_latency_ms",
    "capabilities", "provider_id", "region_mask", "input_cost_per_million",
    "output_cost_per_million",
)
_REQUEST_FIELDS = (
    "sequence", "requested_option", "input_units", "output_units",
    "business_value_microcents", "budget_limit_microcents", "risk_bps", "confidence_bps",
    "minimum_quality_bps", "max_p95_latency_ms", "required_capabilities",
    "allowed_provider_mask", "required_region_mask",
)
_DECISION_FIELDS = (
    "sequence", "action", "reason", "winner_id", "winner_utility", "winner_cost",
    "runner_up_id", "runner_up_utility", "options_evaluated", "options_eligible",
    "histogram",
)


@cython.auto_pickle(False)
cdef class Option:
    """One catalog entry: an executable option with its quality, risk ceiling and prices.

    Prices are microcents per million units (say, tokens). ``provider_id`` is a bit
    position (0..63) tested against the request's ``allowed_provider_mask``.
    """

    cdef OptionC _c

    def __cinit__(self, option_id, *, enabled=True, quality_bps, risk_ceiling_bps,
                 p95_latency_ms, capabilities=0, provider_id=0, region_mask=0,
                 input_cost_per_million=0, output_cost_per_million=0):
        self._c.option_id = _integer(PolicyError, "option_id", option_id, 0, UINT32_MAX)
        self._c.enabled = _flag(PolicyError, "enabled", enabled)
        self._c.quality_bps = _integer(PolicyError, "quality_bps", quality_bps, 0, BPS)
        self._c.risk_ceiling_bps = _integer(
            PolicyError, "risk_ceiling_bps", risk_ceiling_bps, 0, BPS)
        self._c.p95_latency_ms = _integer(
            PolicyError, "p95_latency_ms", p95_latency_ms, 0, UINT32_MAX)
        self._c.capabilities = _integer(
            PolicyError, "capabilities", capabilities, 0, UINT64_MAX)
        self._c.provider_id = _integer(
            PolicyError, "provider_id", provider_id, 0, MAX_PROVIDER_ID)
        self._c.region_mask = _integer(
            PolicyError, "region_mask", region_mask, 0, UINT64_MAX)
        self._c.input_cost_per_million = _integer(
            PolicyError, "input_cost_per_million", input_cost_per_million, 0, INT64_MAX)
        self._c.output_cost_per_million = _integer(
            PolicyError, "output_cost_per_million", output_cost_per_million, 0, INT64_MAX)

    @property
    def option_id(self):
        return self._c.option_id

    @property
    def enabled(self):
        return bool(self._c.enabled)

    @property
    def quality_bps(self):
        return self._c.quality_bps

    @property
    def risk_ceiling_bps(self):
        return self._c.risk_ceiling_bps

    @property
    def p95_latency_ms(self):
        return self._c.p95_latency_ms

    @property
    def capabilities(self):
        return self._c.capabilities

    @property
    def provider_id(self):
        return self._c.provider_id

    @property
    def region_mask(self):
        return self._c.region_mask

    @property
    def input_cost_per_million(self):
        return self._c.input_cost_per_million

    @property
    def output_cost_per_million(self):
        return self._c.output_cost_per_million

    cdef tuple _key(self):
        return tuple(getattr(self, name) for name in _OPTION_FIELDS)

    def __eq__(self, other):
        if not isinstance(other, Option):
            return NotImplemented
        return self._key() == (<Option>other)._key()

    def __hash__(self):
        return hash(self._key())

    def __repr__(self):
        return _fields_repr(self, _OPTION_FIELDS)


@cython.auto_pickle(False)
cdef class PolicySnapshot:
    """An immutable catalog of options plus the global governance settings.

    ``risk_penalty_multiplier_bps`` scales the risk penalty and may go up to 100000 (10x);
    ``latency_penalty_microcents_per_ms`` is charged per millisecond of an option's p95.
    The catalog is copied into a fixed C array, so prescribing never allocates; built once
    in ``__cinit__``, it cannot change under a batch running without the GIL.
    """

    cdef PolicyC _c
    cdef readonly tuple options
    cdef frozenset _ids
    cdef object _id_array    # sorted uint32 ids, for vectorised batch checks
    cdef bytes _encoding     # this policy's part of the digest input

    def __cinit__(self, options, *, hard_risk_limit_bps, minimum_confidence_bps,
                 risk_penalty_multiplier_bps, latency_penalty_microcents_per_ms):
        try:
            options = tuple(options)
        except TypeError:
            raise PolicyError(
                f"options must be a sequence of Option, got {options!r}") from None
        if not options:
            raise PolicyError("options must not be empty")
        if len(options) > MAX_OPTIONS:
            raise PolicyError(f"options must hold at most {MAX_OPTIONS} options, "
                              f"got {len(options)}")
        seen = set()
        for index, option in enumerate(options):
            if not isinstance(option, Option):
                raise PolicyError(f"options[{index}] must be an Option, got {option!r}")
            if option.option_id in seen:
                raise PolicyError(f"options[{index}] repeats option_id {option.option_id}")
            seen.add(option.option_id)
        if not any(option.enabled for option in options):
            raise PolicyError("options must include at least one enabled option")

        self._c.hard_risk_limit_bps = _integer(
            PolicyError, "hard_risk_limit_bps", hard_risk_limit_bps, 0, BPS)
        self._c.minimum_confidence_bps = _integer(
            PolicyError, "minimum_confidence_bps", minimum_confidence_bps, 0, BPS)
        self._c.risk_penalty_multiplier_bps = _integer(
            PolicyError, "risk_penalty_multiplier_bps", risk_penalty_multiplier_bps,
            0, MAX_RISK_PENALTY_MULTIPLIER_BPS)
        self._c.latency_penalty_microcents_per_ms = _integer(
            PolicyError, "latency_penalty_microcents_per_ms",
            latency_penalty_microcents_per_ms, 0, INT64_MAX)
        self._c.n_options = len(options)
        for index, option in enumerate(options):
            self._c.options[index] = (<Option>option)._c
            self._c.latency_terms[index] = syntra_mul_sat(
                self._c.options[index].p95_latency_ms,
                self._c.latency_penalty_microcents_per_ms)

        self.options = options
        self._ids = frozenset(seen)
        self._id_array = np.array(sorted(seen), dtype=np.uint32)
        self._encoding = b"".join([
            _DIGEST_TAG,
            _POLICY_LAYOUT.pack(
                self._c.hard_risk_limit_bps, self._c.minimum_confidence_bps,
                self._c.risk_penalty_multiplier_bps,
                self._c.latency_penalty_microcents_per_ms, self._c.n_options),
            *[_OPTION_LAYOUT.pack(*(<Option>option)._key()) for option in options],
        ])

    @property
    def hard_risk_limit_bps(self):
        return self._c.hard_risk_limit_bps

    @property
    def minimum_confidence_bps(self):
        return self._c.minimum_confidence_bps

    @property
    def risk_penalty_multiplier_bps(self):
        return self._c.risk_penalty_multiplier_bps

    @property
    def latency_penalty_microcents_per_ms(self):
        return self._c.latency_penalty_microcents_per_ms

    def __len__(self):
        return self._c.n_options

    def __repr__(self):
        settings = ", ".join(f"{name}={getattr(self, name)}" for name in (
            "hard_risk_limit_bps", "minimum_confidence_bps", "risk_penalty_multiplier_bps",
            "latency_penalty_microcents_per_ms"))
        return f"PolicySnapshot(<{len(self)} options>, {settings})"

    cdef _require_in_catalog(self, object option_id, str field):
        if option_id not in self._ids:
            raise RequestError(
                f"{field} must name an option in the catalog, got {option_id}")


@cython.auto_pickle(False)
cdef class Request:
    """One decision request. ``business_value_microcents`` may be negative (a loss)."""

    cdef RequestC _c

    def __cinit__(self, *, sequence, requested_option, input_units, output_units,
                 business_value_microcents, budget_limit_microcents, risk_bps,
                 confidence_bps, minimum_quality_bps, max_p95_latency_ms,
                 required_capabilities=0, allowed_provider_mask=UINT64_MAX,
                 required_region_mask=0):
        self._c.sequence = _integer(RequestError, "sequence", sequence, 0, UINT64_MAX)
        self._c.requested_option = _integer(
            RequestError, "requested_option", requested_option, 0, UINT32_MAX)
        self._c.input_units = _integer(
            RequestError, "input_units", input_units, 0, UINT32_MAX)
        self._c.output_units = _integer(
            RequestError, "output_units", output_units, 0, UINT32_MAX)
        self._c.business_value_microcents = _integer(
            RequestError, "business_value_microcents", business_value_microcents,
            INT64_MIN, INT64_MAX)
        self._c.budget_limit_microcents = _integer(
            RequestError, "budget_limit_microcents", budget_limit_microcents, 0, INT64_MAX)
        self._c.risk_bps = _integer(RequestError, "risk_bps", risk_bps, 0, BPS)
        self._c.confidence_bps = _integer(
            RequestError, "confidence_bps", confidence_bps, 0, BPS)
        self._c.minimum_quality_bps = _integer(
            RequestError, "minimum_quality_bps", minimum_quality_bps, 0, BPS)
        self._c.max_p95_latency_ms = _integer(
            RequestError, "max_p95_latency_ms", max_p95_latency_ms, 0, UINT32_MAX)
        self._c.required_capabilities = _integer(
            RequestError, "required_capabilities", required_capabilities, 0, UINT64_MAX)
        self._c.allowed_provider_mask = _integer(
            RequestError, "allowed_provider_mask", allowed_provider_mask, 0, UINT64_MAX)
        self._c.required_region_mask = _integer(
            RequestError, "required_region_mask", required_region_mask, 0, UINT64_MAX)

    @property
    def sequence(self):
        return self._c.sequence

    @property
    def requested_option(self):
        return self._c.requested_option

    @property
    def input_units(self):
        return self._c.input_units

    @property
    def output_units(self):
        return self._c.output_units

    @property
    def business_value_microcents(self):
        return self._c.business_value_microcents

    @property
    def budget_limit_microcents(self):
        return self._c.budget_limit_microcents

    @property
    def risk_bps(self):
        return self._c.risk_bps

    @property
    def confidence_bps(self):
        return self._c.confidence_bps

    @property
    def minimum_quality_bps(self):
        return self._c.minimum_quality_bps

    @property
    def max_p95_latency_ms(self):
        return self._c.max_p95_latency_ms

    @property
    def required_capabilities(self):
        return self._c.required_capabilities

    @property
    def allowed_provider_mask(self):
        return self._c.allowed_provider_mask

    @property
    def required_region_mask(self):
        return self._c.required_region_mask

    cdef tuple _key(self):
        return tuple(getattr(self, name) for name in _REQUEST_FIELDS)

    def __eq__(self, other):
        if not isinstance(other, Request):
            return NotImplemented
        return self._key() == (<Request>other)._key()

    def __hash__(self):
        return hash(self._key())

    def __repr__(self):
        return _fields_repr(self, _REQUEST_FIELDS)


@cython.auto_pickle(False)
cdef class Decision:
    """The kernel's answer to one request; read-only.

    ``winner_id``, ``winner_utility`` and ``winner_cost`` are None on a reject;
    ``runner_up_id`` and ``runner_up_utility`` are None when fewer than two options were
    eligible. ``histogram`` counts rejections per gate, in :data:`GATES` order.

    Built by :func:`prescribe`, :meth:`from_record` or :func:`decisions_from_batch`; the
    keyword constructor and :meth:`replace` exist for tools and tests.
    """

    cdef DecisionC _c

    def __init__(self, *, sequence, action, reason, winner_id, winner_utility,
                 winner_cost, runner_up_id, runner_up_utility, options_evaluated,
                 options_eligible, histogram):
        if action not in ACTIONS:
            raise ValueError(f"action must be one of {ACTIONS}, got {action!r}")
        if reason not in REASONS:
            raise ValueError(f"reason must be one of {REASONS}, got {reason!r}")
        rejected = action == "reject"
        winner = (winner_id, winner_utility, winner_cost)
        if any(rejected != (field is None) for field in winner):
            raise ValueError("winner_id, winner_utility and winner_cost must be None "
                             "exactly when action is 'reject'")
        if (runner_up_id is None) != (runner_up_utility is None):
            raise ValueError("runner_up_id and runner_up_utility must be None together")
        histogram = tuple(histogram)
        if len(histogram) != len(GATES):
            raise ValueError(
                f"histogram must have {len(GATES)} counts, got {len(histogram)}")

        memset(&self._c, 0, sizeof(DecisionC))
        self._c.sequence = _integer(ValueError, "sequence", sequence, 0, UINT64_MAX)
        self._c.action = ACTIONS.index(action)
        self._c.reason = REASONS.index(reason)
        if not rejected:
            self._c.winner_id = _integer(ValueError, "winner_id", winner_id, 0, UINT32_MAX)
            self._c.winner_utility = _integer(
                ValueError, "winner_utility", winner_utility, INT64_MIN, INT64_MAX)
            self._c.winner_cost = _integer(
                ValueError, "winner_cost", winner_cost, INT64_MIN, INT64_MAX)
        if runner_up_id is not None:
            self._c.has_runner_up = True
            self._c.runner_up_id = _integer(
                ValueError, "runner_up_id", runner_up_id, 0, UINT32_MAX)
            self._c.runner_up_utility = _integer(
                ValueError, "runner_up_utility", runner_up_utility, INT64_MIN, INT64_MAX)
        self._c.options_evaluated = _integer(
            ValueError, "options_evaluated", options_evaluated, 0, UINT32_MAX)
        self._c.options_eligible = _integer(
            ValueError, "options_eligible", options_eligible, 0, UINT32_MAX)
        for gate, count in enumerate(histogram):
            self._c.histogram[gate] = _integer(
                ValueError, f"histogram[{gate}]", count, 0, UINT32_MAX)
        _check_decision(&self._c)

    @staticmethod
    cdef Decision _wrap(const DecisionC* c):
        cdef Decision decision = Decision.__new__(Decision)
        decision._c = c[0]
        return decision

    @classmethod
    def from_record(cls, record):
        """The Decision held in one row of a :data:`DECISION_DTYPE` array."""
        row = np.asarray(record)
        if row.dtype != DECISION_DTYPE or row.size != 1:
            raise ValueError(f"record must be one DECISION_DTYPE row, got {row.dtype}")
        return decisions_from_batch(row.reshape(1))[0]

    @property
    def sequence(self):
        return self._c.sequence

    @property
    def action(self):
        return ACTIONS[self._c.action]

    @property
    def reason(self):
        return REASONS[self._c.reason]

    @property
    def winner_id(self):
        return None if self._c.action == ACTION_REJECT else self._c.winner_id

    @property
    def winner_utility(self):
        return None if self._c.action == ACTION_REJECT else self._c.winner_utility

    @property
    def winner_cost(self):
        return None if self._c.action == ACTION_REJECT else self._c.winner_cost

    @property
    def runner_up_id(self):
        return self._c.runner_up_id if self._c.has_runner_up else None

    @property
    def runner_up_utility(self):
        return self._c.runner_up_utility if self._c.has_runner_up else None

    @property
    def options_evaluated(self):
        return self._c.options_evaluated

    @property
    def options_eligible(self):
        return self._c.options_eligible

    @property
    def histogram(self):
        return tuple(self._c.histogram[gate] for gate in range(GATE_COUNT))

    def to_dict(self):
        return {name: getattr(self, name) for name in _DECISION_FIELDS}

    def replace(self, **changes):
        """A copy with some fields changed (checked like the constructor)."""
        fields = self.to_dict()
        fields.update(changes)
        return Decision(**fields)

    cdef tuple _key(self):
        return tuple(getattr(self, name) for name in _DECISION_FIELDS)

    def __eq__(self, other):
        if not isinstance(other, Decision):
            return NotImplemented
        return self._key() == (<Decision>other)._key()

    def __hash__(self):
        return hash(self._key())

    def __repr__(self):
        return _fields_repr(self, _DECISION_FIELDS)


cdef _check_decision(const DecisionC* c):
    """Refuse codes and combinations that prescribe_c never writes."""
    if c.action > ACTION_REJECT or c.reason > GATE_COUNT or c.has_runner_up > 1:
        raise ValueError(f"decision record has invalid codes: action={c.action}, "
                         f"reason={c.reason}, has_runner_up={c.has_runner_up}")
    rejected = c.action == ACTION_REJECT
    if rejected != (c.reason != GATE_COUNT):
        raise ValueError(f"reason {REASONS[c.reason]!r} does not fit action "
                         f"{ACTIONS[c.action]!r}")
    if rejected and (c.winner_id or c.winner_utility or c.winner_cost or c.has_runner_up):
        raise ValueError("a rejected decision has no winner and no runner-up")
    if not c.has_runner_up and (c.runner_up_id or c.runner_up_utility):
        raise ValueError("runner_up fields must be 0 when has_runner_up is 0")


def prescribe(PolicySnapshot policy not None, Request request not None):
    """Decide one request under ``policy``; see the module docstring for the rules."""
    policy._require_in_catalog(request.requested_option, "requested_option")
    cdef DecisionC result
    prescribe_c(&policy._c, &request._c, &result)
    return Decision._wrap(&result)


@cython.boundscheck(False)
@cython.wraparound(False)
def request_array(requests):
    """Pack a sequence of :class:`Request` into a :data:`REQUEST_DTYPE` array."""
    items = tuple(requests)
    rows = np.zeros(len(items), dtype=REQUEST_DTYPE)
    cdef RequestC[::1] view = rows
    cdef Py_ssize_t index
    for index, item in enumerate(items):
        if not isinstance(item, Request):
            raise RequestError(f"requests[{index}] must be a Request, got {item!r}")
        view[index] = (<Request>item)._c
    return rows


cdef _reject_rows(object bad, object rows, str field, str rule):
    if bad.any():
        row = int(np.argmax(bad))  # the first True
        raise RequestError(f"requests[{row}].{field} {rule}, got {rows[field][row]}")


cdef object _validated_rows(PolicySnapshot policy, object requests):
    """``requests`` as a checked, contiguous REQUEST_DTYPE array.

    The dtype already bounds ids, units, latencies and masks; what is left is checked
    column by column, naming the first bad row.
    """
    if isinstance(requests, np.ndarray):
        if requests.dtype != REQUEST_DTYPE:
            raise RequestError(
                f"requests must have dtype REQUEST_DTYPE, got {requests.dtype}")
        if requests.ndim != 1:
            raise RequestError(
                f"requests must be one-dimensional, got shape {requests.shape}")
        rows = np.require(requests, requirements=["C_CONTIGUOUS", "ALIGNED"])
    else:
        rows = request_array(requests)
    for field in ("risk_bps", "confidence_bps", "minimum_quality_bps"):
        _reject_rows(rows[field] > BPS, rows, field, f"must be in [0, {BPS}]")
    _reject_rows(rows["budget_limit_microcents"] < 0, rows, "budget_limit_microcents",
                 f"must be in [0, {INT64_MAX}]")
    _reject_rows(~np.isin(rows["requested_option"], policy._id_array), rows,
                 "requested_option", "must name an option in the catalog")
    return rows


@cython.boundscheck(False)  # i < shape[0] by construction
@cython.wraparound(False)
def prescribe_batch(PolicySnapshot policy not None, requests):
    """Decide every row of ``requests`` (a :data:`REQUEST_DTYPE` array or a sequence of
    :class:`Request`) and return a :data:`DECISION_DTYPE` array, row for row.

    The whole batch is validated first; then one C loop runs without the GIL.
    """
    rows = _validated_rows(policy, requests)
    out = np.zeros(len(rows), dtype=DECISION_DTYPE)
    cdef const RequestC[::1] inputs = rows
    cdef DecisionC[::1] results = out
    cdef const PolicyC* c_policy = &policy._c
    cdef Py_ssize_t i
    with nogil:
        for i in range(inputs.shape[0]):
            prescribe_c(c_policy, &inputs[i], &results[i])
    return out


@cython.boundscheck(False)
@cython.wraparound(False)
def decisions_from_batch(records):
    """The rows of a :data:`DECISION_DTYPE` array as a list of :class:`Decision`."""
    records = np.asarray(records)
    if records.dtype != DECISION_DTYPE or records.ndim != 1:
        raise ValueError(f"records must be a 1-d DECISION_DTYPE array, got "
                         f"{records.dtype} with shape {records.shape}")
    cdef const DecisionC[::1] view = np.require(
        records, requirements=["C_CONTIGUOUS", "ALIGNED"])
    cdef Py_ssize_t i
    decisions = []
    for i in range(view.shape[0]):
        _check_decision(&view[i])
        decisions.append(Decision._wrap(&view[i]))
    return decisions


cdef bytes _encode_request(const RequestC* r):
    return _REQUEST_LAYOUT.pack(
        r.sequence, r.requested_option, r.input_units, r.output_units,
        r.business_value_microcents, r.budget_limit_microcents, r.risk_bps,
        r.confidence_bps, r.minimum_quality_bps, r.max_p95_latency_ms,
        r.required_capabilities, r.allowed_provider_mask, r.required_region_mask,
    )


cdef bytes _encode_decision(const DecisionC* d):
    return _DECISION_LAYOUT.pack(
        d.sequence, d.action, d.reason, d.winner_id, d.winner_utility, d.winner_cost,
        d.has_runner_up, d.runner_up_id, d.runner_up_utility, d.options_evaluated,
        d.options_eligible, *[d.histogram[gate] for gate in range(GATE_COUNT)],
    )


def decision_digest(PolicySnapshot policy not None, Request request not None,
                    Decision decision not None):
    """BLAKE3-256 of the canonical encoding of (policy, request, decision); 32 bytes."""
    hasher = blake3.blake3(policy._encoding)
    hasher.update(_encode_request(&request._c))
    hasher.update(_encode_decision(&decision._c))
    return hasher.digest()


def verify(PolicySnapshot policy not None, Request request not None,
           Decision decision not None):
    """True if replaying ``request`` under ``policy`` yields exactly ``decision``."""
    replayed = prescribe(policy, request)
    return decision_digest(policy, request, replayed) == decision_digest(
        policy, request, decision)
