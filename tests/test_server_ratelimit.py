"""The per-key token bucket (syntra.server.ratelimit), with an injected clock."""

import threading
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from syntra.errors import InvalidConfig
from syntra.server.ratelimit import RateLimiter

# Grants may exceed the ideal bucket by the limiter's rounding slack, never by more.
TOLERANCE = 1e-6


class Clock:
    def __init__(self, now=1000.0):
        self.now = now

    def __call__(self):
        return self.now


def test_burst_then_the_rate():
    clock = Clock()
    limiter = RateLimiter(rate_per_second=4, burst=3, clock=clock)
    assert [limiter.take("k") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("k") == pytest.approx(0.25)
    clock.now += 0.1
    assert limiter.take("k") == pytest.approx(0.15)  # a refusal took nothing
    clock.now += 0.15
    assert limiter.take("k") == 0.0
    assert limiter.take("k", 2) == pytest.approx(0.5)
    clock.now += 10
    assert limiter.take("k", 3) == 0.0  # refilled to burst, no further


def test_keys_are_independent():
    clock = Clock()
    limiter = RateLimiter(1, 1, clock=clock)
    assert limiter.take("a") == 0.0
    assert limiter.take("a") == pytest.approx(1.0)
    assert limiter.take("b") == 0.0


def test_rate_zero_is_off():
    limiter = RateLimiter(0, 0)
    assert not limiter.enabled
    assert all(limiter.take("k", 1000) == 0.0 for _ in range(100))
    assert len(limiter) == 0


@pytest.mark.parametrize(
    "rate, burst",
    [(-1, 5), (float("nan"), 5), (float("inf"), 5), ("10", 5), (True, 5), (10, 0), (10, 0.5), (10, float("inf")),
     (10, None)],
)
def test_bad_settings(rate, burst):
    with pytest.raises(InvalidConfig):
        RateLimiter(rate, burst)


@pytest.mark.parametrize("n", [0, -1, 6])
def test_n_must_fit_in_a_burst(n):
    limiter = RateLimiter(10, 5)
    with pytest.raises(ValueError, match="burst=5"):
        limiter.take("k", n)


def test_full_buckets_are_evicted_first():
    clock = Clock()
    limiter = RateLimiter(rate_per_second=1, burst=10, clock=clock, max_keys=8)
    assert limiter.take("busy", 10) == 0.0
    for i in range(7):
        assert limiter.take(f"light{i}") == 0.0
    clock.now += 2  # the light buckets are full again; busy holds 2 tokens
    assert limiter.take("newcomer") == 0.0
    assert len(limiter) == 2
    assert limiter.take("busy", 10) == pytest.approx(8.0)


def test_memory_stays_bounded_when_every_bucket_is_busy():
    clock = Clock()
    limiter = RateLimiter(rate_per_second=1, burst=1, clock=clock, max_keys=100)
    for i in range(1000):
        limiter.take(f"k{i}")
        assert len(limiter) <= 100
    assert limiter.take("k999") == pytest.approx(1.0)  # the newest are kept


def test_concurrent_takes_never_exceed_the_burst():
    clock = Clock()  # frozen: nothing refills
    limiter = RateLimiter(rate_per_second=1, burst=500, clock=clock)
    granted = []

    def hammer():
        granted.append(sum(1 for _ in range(400) if limiter.take("shared") == 0.0))

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(granted) == 500


def test_take_is_cheap():
    limiter = RateLimiter(rate_per_second=1e9, burst=1e9)
    rounds = 20000
    started = time.perf_counter()
    for _ in range(rounds):
        limiter.take("tenants/acme")
    per_call = (time.perf_counter() - started) / rounds
    assert per_call < 10e-6, f"{per_call * 1e6:.2f} us per take"


operations = st.lists(
    st.tuples(
        st.sampled_from([0.0, 0.001, 0.01, 0.1, 0.25, 0.5, 1.0, 3.0]),  # clock advance
        st.sampled_from(["a", "b"]),
        st.integers(min_value=1, max_value=4),
    ),
    min_size=1,
    max_size=60,
)


@given(
    rate=st.sampled_from([0.5, 1.0, 3.0, 10.0, 250.0]),
    burst=st.sampled_from([4, 5, 16]),
    ops=operations,
)
def test_never_more_than_burst_plus_rate_times_t_and_delays_are_exact(rate, burst, ops):
    clock = Clock()
    limiter = RateLimiter(rate, burst, clock=clock)
    grants = {"a": [], "b": []}
    for advance, key, n in ops:
        clock.now += advance
        delay = limiter.take(key, n)
        if delay == 0.0:
            grants[key].append((clock.now, n))
            continue
        assert delay > 0
        start = clock.now
        deficit = delay * rate
        if deficit > 1e-6:
            # Tight: a little before the delay, the tokens are still not there...
            clock.now = start + delay * (1 - 1e-4)
            early = limiter.take(key, n)
            assert early > 0
            assert early == pytest.approx(delay * 1e-4, rel=1e-3, abs=1e-9)
        # ...and sufficient: at the delay they are.
        clock.now = start + delay
        assert limiter.take(key, n) == 0.0
        grants[key].append((clock.now, n))

    for key, granted in grants.items():
        # In every window [t_i, t_j]: at most burst + rate * (t_j - t_i) tokens granted.
        for i in range(len(granted)):
            total = 0
            for j in range(i, len(granted)):
                total += granted[j][1]
                allowed = burst + rate * (granted[j][0] - granted[i][0])
                assert total <= allowed + TOLERANCE, (key, i, j, total, allowed)
