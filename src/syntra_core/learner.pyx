"""One capsule's decide/feedback loop.

A :class:`Learner` owns a rule (which reads an :class:`~syntra_core.bandits.ArmTable`) and
the ledger of every decision it has made. Decision ids are
``"<sequence: 16 hex digits>-<capsule tag: 16 hex digits>"``: the sequence locates the
decision in the ledger without a hash lookup, and the tag (derived from the engine's random
nonce, the capsule name and its install count) makes an id from another engine, another
capsule or an earlier install of this one unknown here instead of silently applied.

The ledger keeps a dense window of entries from the oldest pending decision on. A decision
below the window, or inside it and marked done, has had its feedback; one at or above
``next_sequence`` was never made. So duplicates are detected at any age while completed
decisions cost no memory once every older one is complete too.

Example:

>>> from syntra_core.bandits import ArmTable, BetaThompson
>>> from syntra_core.learner import Learner, FeedbackStatus
>>> learner = Learner("demo", ("a", "b"), BetaThompson(ArmTable(2)), seed=7, tag="0badcafe0badcafe")
>>> d = learner.decide("eu")
>>> d.option in ("a", "b") and d.decision_id.endswith("-0badcafe0badcafe")
True
>>> learner.feedback(d.decision_id, 1.0) == FeedbackStatus.FEEDBACK_OK
True
>>> learner.feedback(d.decision_id, 1.0) == FeedbackStatus.FEEDBACK_DUPLICATE
True
"""

from cpython.mem cimport PyMem_Free, PyMem_Realloc
from cpython.unicode cimport PyUnicode_DecodeASCII
from libc.stdint cimport uint64_t
from libc.string cimport memcpy, memmove

from syntra_core.bandits cimport ArmTable, Rule, UpdateStatus
from syntra_core.rng cimport Stream, stream_init

cdef enum:
    ENTRY_PENDING = 0
    ENTRY_DONE = 1
    TAG_LENGTH = 16
    ID_LENGTH = 33  # 16 hex digits, '-', TAG_LENGTH hex digits

cdef const char* HEX = b"0123456789abcdef"


cdef inline int _hex_value(Py_UCS4 c) noexcept:
    cdef int code = <int>c
    if 48 <= code <= 57:     # '0'..'9'
        return code - 48
    if 97 <= code <= 102:    # 'a'..'f'
        return code - 87
    return -1


def format_decision_id(uint64_t sequence, str tag not None):
    """The decision id of ``sequence`` in the capsule install with ``tag`` (16 hex digits)."""
    if len(tag) != TAG_LENGTH or any(_hex_value(c) < 0 for c in tag):
        raise ValueError(f"tag must be {TAG_LENGTH} lowercase hex digits, got {tag!r}")
    return f"{sequence:016x}-{tag}"


cdef Decision _copy_decision(Decision d):
    cdef Decision out = Decision.__new__(Decision)
    out.decision_id = d.decision_id
    out.capsule = d.capsule
    out.option = d.option
    out.option_index = d.option_index
    out.propensity = d.propensity
    out.sequence = d.sequence
    out.context_key = d.context_key
    out.refused = d.refused
    out.refusal = d.refusal
    out.substituted_for = d.substituted_for
    out.cost = d.cost
    out.value = d.value
    out.published = d.published
    out.stdout = d.stdout
    out.result_json = d.result_json
    out.confidence = d.confidence
    return out


def with_output(Decision d not None, value, dict published not None, str stdout not None,
                str result_json not None):
    """``d`` with the result, published values and stdout of the program that made it."""
    cdef Decision out = _copy_decision(d)
    out.value = value
    out.published = published
    out.stdout = stdout
    out.result_json = result_json
    return out


def with_assessment(Decision d not None, str refusal, dict confidence, value=None):
    """``d`` as the learning layer qualified it: ``refusal`` (a reason, or None to serve
    it), the ``confidence`` block behind that, and the action ``value`` it stands for
    (continuous actions). A refused decision keeps its id: feedback on it is recorded
    without training."""
    cdef Decision out = _copy_decision(d)
    out.refused = refusal is not None
    out.refusal = refusal
    out.confidence = confidence
    if value is not None:
        out.value = value
    return out


def with_cost(Decision d not None, int64_t cost):
    """``d`` with ``cost`` (microcents held for it) recorded."""
    cdef Decision out = _copy_decision(d)
    out.cost = cost
    return out


cdef class Decision:
    """What a capsule decided: read-only.

    ``propensity`` is the probability the rule had of choosing this option, which
    off-policy evaluation needs; ``sequence`` orders the capsule's decisions. A budgeted
    capsule fills ``cost`` (microcents held), ``substituted_for`` (the option the rule
    preferred, when it did not fit the budget) and, when nothing fits, returns a decision
    with ``refused`` True, a ``refusal`` reason, and no option or id.
    """

    def __repr__(self):
        if self.refused and self.decision_id is None:
            return f"Decision(refused={self.refusal!r}, context_key={self.context_key!r})"
        if self.refused:   # the learning layer's refusal: it keeps its id for the outcome
            return (f"Decision(decision_id={self.decision_id!r}, refused={self.refusal!r},"
                    f" suggested={self.option!r}, context_key={self.context_key!r})")
        extra = f", substituted_for={self.substituted_for!r}" if self.substituted_for else ""
        extra += f", cost={self.cost}" if self.cost else ""
        return (
            f"Decision(decision_id={self.decision_id!r}, option={self.option!r}, "
            f"option_index={self.option_index}, propensity={self.propensity:.6g}, "
            f"context_key={self.context_key!r}{extra})"
        )

    def __eq__(self, other):
        if not isinstance(other, Decision):
            return NotImplemented
        cdef Decision o = other
        return (self.decision_id == o.decision_id and self.capsule == o.capsule
                and self.option_index == o.option_index and self.propensity == o.propensity
                and self.context_key == o.context_key and self.refused == o.refused
                and self.substituted_for == o.substituted_for and self.cost == o.cost
                and self.result_json == o.result_json)

    def __hash__(self):
        return hash((self.capsule, self.decision_id))


cdef class Learner:
    """Decide and learn for one capsule. See the module docs for the id scheme.

    ``options`` names the arms of ``rule.table`` in order. ``tag`` is 16 lowercase hex
    digits that identify this capsule install inside decision ids. A recovered capsule
    continues where it stopped through :meth:`import_state`.
    """

    def __cinit__(self, str capsule not None, tuple options not None, Rule rule not None,
                  uint64_t seed, str tag not None):
        if len(options) != rule.table.n_arms:
            raise ValueError(f"{len(options)} option names for {rule.table.n_arms} arms")
        if len(tag) != TAG_LENGTH or any(_hex_value(c) < 0 for c in tag):
            raise ValueError(f"tag must be {TAG_LENGTH} lowercase hex digits, got {tag!r}")
        self.capsule = capsule
        self.options = options
        self.rule = rule
        self.table = rule.table
        self.seed = seed
        self.tag = tag
        cdef int i
        for i in range(TAG_LENGTH):
            self.tag_ascii[i] = <char>ord(tag[i])
        self.next_sequence = 0
        self.base_sequence = 0
        self.pending = 0
        self.entries = NULL
        self.head = 0
        self.capacity = 0

    def __dealloc__(self):
        PyMem_Free(self.entries)

    cdef LedgerEntry* append_entry(self) except NULL:
        cdef Py_ssize_t used = <Py_ssize_t>(self.next_sequence - self.base_sequence)
        cdef LedgerEntry* grown
        if self.head + used == self.capacity:
            if self.head >= self.capacity // 2 and self.head > 0:
                # Most of the buffer is completed history: slide the window down.
                memmove(self.entries, self.entries + self.head, used * sizeof(LedgerEntry))
                self.head = 0
            else:
                grown = <LedgerEntry*>PyMem_Realloc(
                    self.entries, max(64, 2 * self.capacity) * sizeof(LedgerEntry))
                if grown == NULL:
                    raise MemoryError()
                self.entries = grown
                self.capacity = max(64, 2 * self.capacity)
        return self.entries + self.head + used

    def decide(self, context_key):
        """Choose an option for ``context_key`` and record the decision as pending."""
        cdef Py_ssize_t row = self.table.row_for(context_key)
        self.rule.prepare(row)
        cdef LedgerEntry* entry = self.append_entry()
        cdef Stream st
        cdef double propensity
        stream_init(&st, self.seed, self.next_sequence)
        cdef int arm = self.rule.select_c(row, &st, &propensity)
        return self.record(entry, row, arm, propensity, context_key)

    def decide_with(self, context_key, int arm, double propensity):
        """Record a decision that a policy outside this learner made: ``arm`` served with
        probability ``propensity`` in ``context_key``. Returns it like :meth:`decide`."""
        if not 0 <= arm < self.table.n_arms:
            raise ValueError(f"arm {arm} is out of range 0..{self.table.n_arms - 1}")
        if not 0.0 < propensity <= 1.0:
            raise ValueError(f"propensity must be in (0, 1], got {propensity!r}")
        cdef Py_ssize_t row = self.table.row_for(context_key)
        return self.record(self.append_entry(), row, arm, propensity, context_key)

    cdef Decision record(self, LedgerEntry* entry, Py_ssize_t row, int arm, double propensity,
                         object context_key):
        """Fill ``entry`` (the next ledger slot) as pending and return its decision."""
        cdef uint64_t sequence = self.next_sequence
        entry.row = <int>row
        entry.arm = <short>arm
        entry.state = ENTRY_PENDING
        entry.reserved = 0
        entry.propensity = propensity
        self.next_sequence += 1
        self.pending += 1
        cdef char buf[ID_LENGTH]
        self.format_id(sequence, buf)
        cdef Decision d = Decision.__new__(Decision)
        d.decision_id = PyUnicode_DecodeASCII(buf, ID_LENGTH, NULL)
        d.capsule = self.capsule
        d.option = self.options[arm]
        d.option_index = arm
        d.propensity = propensity
        d.sequence = sequence
        d.context_key = context_key
        return d

    def replace_rule(self, Rule rule not None):
        """Decide with ``rule`` from now on; it must read this learner's table."""
        if rule.table is not self.table:
            raise ValueError("the new rule must read this learner's table")
        self.rule = rule

    def settle_at(self, uint64_t sequence, double reward, bint train):
        """Complete pending decision ``sequence`` with ``reward``, training the table only
        if ``train`` (a frozen capsule, or a refused decision, records without learning).
        Same statuses as :meth:`feedback`; anything but FEEDBACK_OK changes nothing."""
        if train:
            return self.apply_feedback(sequence, reward)
        cdef LedgerEntry* entry
        cdef FeedbackStatus found = self.pending_entry(sequence, &entry)
        if found != FEEDBACK_OK:
            return found
        cdef UpdateStatus status = self.table.check_reward(reward)
        if status != 0:
            return <FeedbackStatus><int>status
        self.complete(entry)
        return FEEDBACK_OK

    def settle_taken(self, uint64_t sequence, int arm, double propensity, double reward, bint train):
        """Complete pending decision ``sequence`` as the action ``arm`` that the caller's own
        policy took with probability ``propensity`` (a shadow capsule's decision is only a
        suggestion): the ledger records that arm and propensity, and ``reward`` trains
        that arm if ``train``. Same statuses as :meth:`settle_at`; anything but
        FEEDBACK_OK changes nothing. ValueError for an arm or propensity out of range."""
        if not 0 <= arm < self.table.n_arms:
            raise ValueError(f"arm {arm} is out of range 0..{self.table.n_arms - 1}")
        if not 0.0 < propensity <= 1.0:
            raise ValueError(f"propensity must be in (0, 1], got {propensity!r}")
        cdef LedgerEntry* entry
        cdef FeedbackStatus found = self.pending_entry(sequence, &entry)
        if found != FEEDBACK_OK:
            return found
        cdef UpdateStatus status = self.table.check_reward(reward)
        if status != 0:
            return <FeedbackStatus><int>status
        entry.arm = <short>arm
        entry.propensity = propensity
        if train:
            self.table.update_c(entry.row, arm, reward)   # checked above: it cannot refuse
        self.complete(entry)
        return FEEDBACK_OK

    def replace_table(self, Rule rule not None):
        """Decide with ``rule`` over its own, new table from now on (a reward spec whose
        range changed starts the statistics afresh). The new table must hold the same
        contexts in the same rows, as the ledger's pending decisions name their rows."""
        cdef ArmTable table = rule.table
        if table.n_arms != self.table.n_arms or table.contexts != self.table.contexts:
            raise ValueError("the new table must have this learner's arms and contexts, in order")
        self.rule = rule
        self.table = table

    def sequence_of(self, str decision_id):
        """The sequence of ``decision_id`` if this learner issued it (pending or not), else
        raise ValueError saying why (malformed, or another capsule's or engine's id)."""
        cdef uint64_t sequence
        cdef FeedbackStatus status = self.locate(decision_id, &sequence)
        if status == FEEDBACK_MALFORMED_ID:
            raise ValueError("not a Syntra decision id")
        if status != FEEDBACK_OK or sequence >= self.next_sequence:
            raise KeyError(decision_id)
        return sequence

    def entry(self, uint64_t sequence):
        """``(row, arm, propensity, pending)`` of decision ``sequence`` while it is in the
        ledger window, else None (it completed, and so did every older one)."""
        if sequence >= self.next_sequence or sequence < self.base_sequence:
            return None
        cdef LedgerEntry* e = self.entries + self.head + (sequence - self.base_sequence)
        return e.row, e.arm, e.propensity, e.state == ENTRY_PENDING

    cdef LedgerEntry* last_pending(self, Decision d) except NULL:
        if (d is None or d.sequence + 1 != self.next_sequence or d.capsule != self.capsule
                or d.refused):
            raise ValueError("only the latest decision of this learner can be amended")
        cdef LedgerEntry* entry = self.entries + self.head + (d.sequence - self.base_sequence)
        if entry.state != ENTRY_PENDING:
            raise ValueError("only a pending decision can be amended")
        return entry

    def substitute_last(self, Decision d, int arm):
        """Serve ``arm`` instead of what ``d`` (this learner's latest decision, pending)
        chose; feedback then trains ``arm``. Returns the amended decision.

        The substitute is the deterministic choice of the caller (the budget gate), so its
        propensity is 1: ``substituted_for`` tells off-policy estimators to treat the row
        apart.
        """
        if not 0 <= arm < self.table.n_arms:
            raise ValueError(f"arm {arm} is out of range")
        cdef LedgerEntry* entry = self.last_pending(d)
        entry.arm = <short>arm
        entry.propensity = 1.0
        cdef Decision out = _copy_decision(d)
        out.option = self.options[arm]
        out.option_index = arm
        out.propensity = 1.0
        out.substituted_for = d.option
        return out

    def pending_arm(self, uint64_t sequence):
        """The arm decision ``sequence`` serves while it awaits feedback; -1 otherwise."""
        if sequence >= self.next_sequence or sequence < self.base_sequence:
            return -1
        cdef LedgerEntry* entry = self.entries + self.head + (sequence - self.base_sequence)
        return entry.arm if entry.state == ENTRY_PENDING else -1

    def refuse_last(self, Decision d, str reason not None):
        """Turn ``d`` (the latest decision, pending) into a refusal: nothing is served, it
        takes no feedback and trains nothing. Returns the refused decision."""
        cdef LedgerEntry* entry = self.last_pending(d)
        self.complete(entry)
        cdef Decision out = _copy_decision(d)
        out.decision_id = None
        out.option = None
        out.option_index = -1
        out.refused = True
        out.refusal = reason
        return out

    def decision_id(self, uint64_t sequence):
        """The id that decision ``sequence`` of this learner has (or will have)."""
        cdef char buf[ID_LENGTH]
        self.format_id(sequence, buf)
        return PyUnicode_DecodeASCII(buf, ID_LENGTH, NULL)

    def feedback_at(self, uint64_t sequence, double reward):
        """:meth:`feedback` addressed by sequence (replay knows it); same statuses."""
        return self.apply_feedback(sequence, reward)

    cdef void format_id(self, uint64_t sequence, char* out) noexcept nogil:
        cdef int i
        for i in range(16):
            out[i] = HEX[(sequence >> (60 - 4 * i)) & 0xF]
        out[16] = 45  # '-'
        for i in range(TAG_LENGTH):
            out[17 + i] = self.tag_ascii[i]

    cdef uint64_t parse_id(self, str decision_id, bint* ok):
        ok[0] = False
        if len(decision_id) != ID_LENGTH or <int>decision_id[16] != 45:
            return 0
        cdef uint64_t sequence = 0
        cdef int i, v
        for i in range(16):
            v = _hex_value(decision_id[i])
            if v < 0:
                return 0
            sequence = (sequence << 4) | <uint64_t>v
        for i in range(TAG_LENGTH):
            if <int>decision_id[17 + i] != self.tag_ascii[i]:
                return sequence  # well formed, but not one of ours
        ok[0] = True
        return sequence

    def feedback(self, str decision_id, double reward):
        """Apply ``reward`` to a pending decision. Returns a :class:`FeedbackStatus`.

        Anything but ``FEEDBACK_OK`` leaves every piece of state untouched, so a rejected
        reward can be corrected and sent again.
        """
        cdef uint64_t sequence
        cdef FeedbackStatus status = self.locate(decision_id, &sequence)
        if status != FEEDBACK_OK:
            return status
        return self.apply_feedback(sequence, reward)

    def try_feedback(self, str decision_id, double reward):
        """:meth:`feedback` answering only whether it applied (a bool is cheaper to return
        than a status): the one-call path of a caller that finds out why on its own."""
        cdef uint64_t sequence
        if self.locate(decision_id, &sequence) != FEEDBACK_OK:
            return False
        return self.apply_feedback(sequence, reward) == FEEDBACK_OK

    cdef FeedbackStatus locate(self, str decision_id, uint64_t* sequence):
        """FEEDBACK_OK with ``sequence`` set if ``decision_id`` is one of ours; else why not."""
        cdef bint ours
        sequence[0] = self.parse_id(decision_id, &ours)
        if ours:
            return FEEDBACK_OK
        if len(decision_id) == ID_LENGTH and <int>decision_id[16] == 45:
            return FEEDBACK_UNKNOWN
        return FEEDBACK_MALFORMED_ID

    def check_feedback(self, str decision_id, double reward):
        """The status :meth:`feedback` would return for these arguments, applying nothing
        (so a caller can do other work that must happen only if the feedback will land)."""
        cdef uint64_t sequence
        cdef FeedbackStatus status = self.locate(decision_id, &sequence)
        if status != FEEDBACK_OK:
            return status
        cdef LedgerEntry* entry
        status = self.pending_entry(sequence, &entry)
        if status != FEEDBACK_OK:
            return status
        return <FeedbackStatus><int>self.table.check_reward(reward)

    cdef FeedbackStatus pending_entry(self, uint64_t sequence, LedgerEntry** entry) noexcept nogil:
        """FEEDBACK_OK with ``entry`` set if decision ``sequence`` awaits feedback; else
        FEEDBACK_UNKNOWN (never made) or FEEDBACK_DUPLICATE (completed)."""
        if sequence >= self.next_sequence:
            return FEEDBACK_UNKNOWN
        if sequence < self.base_sequence:
            return FEEDBACK_DUPLICATE
        entry[0] = self.entries + self.head + (sequence - self.base_sequence)
        if entry[0].state == ENTRY_DONE:
            return FEEDBACK_DUPLICATE
        return FEEDBACK_OK

    cdef FeedbackStatus apply_feedback(self, uint64_t sequence, double reward) noexcept nogil:
        cdef LedgerEntry* entry
        cdef FeedbackStatus found = self.pending_entry(sequence, &entry)
        if found != FEEDBACK_OK:
            return found
        cdef UpdateStatus status = self.table.update_c(entry.row, entry.arm, reward)
        if status != 0:
            return <FeedbackStatus><int>status
        self.complete(entry)
        return FEEDBACK_OK

    cdef void complete(self, LedgerEntry* entry) noexcept nogil:
        entry.state = ENTRY_DONE
        self.pending -= 1
        self.retire_done()

    cdef void retire_done(self) noexcept nogil:
        # Retire the completed prefix so the window starts at the oldest pending decision.
        while self.base_sequence < self.next_sequence and self.entries[self.head].state == ENTRY_DONE:
            self.head += 1
            self.base_sequence += 1

    def export_state(self):
        """Everything this learner has learned and decided, exactly; see :meth:`import_state`."""
        cdef Py_ssize_t used = <Py_ssize_t>(self.next_sequence - self.base_sequence)
        return {
            "next_sequence": self.next_sequence,
            "base_sequence": self.base_sequence,
            "pending": self.pending,
            "ledger": (<char*>(self.entries + self.head))[:used * sizeof(LedgerEntry)],
            "table": self.table.export_state(),
            "rule": self.rule.export_state(),
        }

    def import_state(self, state):
        """Restore :meth:`export_state` output into a learner that has made no decision.

        Everything is checked before anything is loaded, so a refused state leaves the
        learner fresh.
        """
        if self.next_sequence != self.base_sequence or self.table.n_rows:
            raise ValueError("import_state needs a fresh learner")
        cdef bytes ledger = bytes(state["ledger"])
        cdef uint64_t base = state["base_sequence"]
        cdef uint64_t nxt = state["next_sequence"]
        if nxt < base or len(ledger) != (nxt - base) * sizeof(LedgerEntry):
            raise ValueError("learner state: the ledger does not match its sequence range")
        cdef Py_ssize_t rows = len(state["table"]["contexts"])
        cdef Py_ssize_t used = <Py_ssize_t>(nxt - base)
        cdef const LedgerEntry* entries = <const LedgerEntry*><const char*>ledger
        cdef Py_ssize_t i
        cdef Py_ssize_t open_entries = 0
        for i in range(used):
            if (entries[i].row < 0 or entries[i].row >= rows or entries[i].arm < 0
                    or entries[i].arm >= self.table.n_arms or entries[i].state > ENTRY_DONE
                    or entries[i].reserved != 0):
                raise ValueError(f"learner state: ledger entry {i} is out of range")
            open_entries += entries[i].state == ENTRY_PENDING
        if open_entries != state["pending"]:
            raise ValueError("learner state: pending count does not match the ledger")
        cdef LedgerEntry* buffer = NULL
        if used:
            buffer = <LedgerEntry*>PyMem_Realloc(NULL, used * sizeof(LedgerEntry))
            if buffer == NULL:
                raise MemoryError()
            memcpy(buffer, entries, len(ledger))
        try:
            self.table.import_state(state["table"])
            self.rule.import_state(state["rule"])
        except BaseException:
            PyMem_Free(buffer)
            raise
        PyMem_Free(self.entries)
        self.entries = buffer
        self.capacity = used
        self.head = 0
        self.base_sequence = base
        self.next_sequence = nxt
        self.pending = open_entries

    def is_pending(self, str decision_id):
        """True if ``decision_id`` was decided here and has had no feedback yet."""
        cdef bint ours
        cdef uint64_t sequence = self.parse_id(decision_id, &ours)
        if not ours or sequence >= self.next_sequence or sequence < self.base_sequence:
            return False
        return self.entries[self.head + (sequence - self.base_sequence)].state == ENTRY_PENDING
