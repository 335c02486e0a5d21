"""LinUCB on a 10-feature 5-arm linear-logistic world, three ways.

Contexts are 9 features uniform on [0, 1) and a bias of 1; arm ``a`` pays 1 with probability
``sigmoid(theta[a] . x)``. Every variant decides and learns each round (disjoint LinUCB,
alpha = 1, ridge = 1):

* ``linucb_round``: Syntra's Cython LinUCB driven from Python, ``rule.select`` then
  ``model.update`` per round: what a capsule does per decision and feedback;
* ``linucb_c_round``: the same rule in a C loop (``syntra_core.linear.run_linear_logistic``);
* ``numpy_linucb_round``: a plain numpy LinUCB that keeps ``A^-1`` by Sherman-Morrison,
  vectorised over the arms (no Python loop over features or arms).

Each variant runs long-lived, so the numbers describe steady state. Target: Cython rounds
from Python >= 5x the numpy reference's rate.
"""

import numpy as np
from syntra_core.linear import LinearModel, LinUCB, run_linear_logistic

ARMS = 5
DIM = 10
ROUNDS = 2_000
C_ROUNDS = 100_000


def _world():
    rng = np.random.default_rng(2024)
    theta = rng.normal(0.0, 2.0, size=(ARMS, DIM))
    theta[:, -1] = -theta[:, :-1].sum(axis=1) / 2  # centred logits: each arm best somewhere
    contexts = np.concatenate([rng.random((ROUNDS, DIM - 1)), np.ones((ROUNDS, 1))], axis=1)
    success = 1.0 / (1.0 + np.exp(-contexts @ theta.T))
    rewards = (rng.random((ROUNDS, ARMS)) < success).astype(np.float64)
    return theta, contexts, rewards, success


THETA, CONTEXTS, REWARDS, SUCCESS = _world()


def _regret(picks):
    return float((SUCCESS.max(axis=1) - SUCCESS[np.arange(ROUNDS), picks]).mean())


def test_linucb_round(benchmark, record_unit_time):
    model = LinearModel(DIM, ARMS)
    rule = LinUCB(model, alpha=1.0)
    contexts = list(CONTEXTS)  # one row a round, as a capsule receives them
    rewards = REWARDS.tolist()
    picks = np.empty(ROUNDS, dtype=np.int64)
    passes = iter(range(10**9))

    def play():
        sequence = next(passes) * ROUNDS
        for t in range(ROUNDS):
            x = contexts[t]
            arm, _ = rule.select(x, 7, sequence + t)
            model.update(arm, x, rewards[t][arm])
            picks[t] = arm

    play()
    benchmark(play)
    record_unit_time("linucb_round", ROUNDS)
    assert _regret(picks) < 0.1  # long-lived: it has learnt the world


def test_linucb_c_loop(benchmark, record_unit_time):
    rule = LinUCB(LinearModel(DIM, ARMS), alpha=1.0)
    run_linear_logistic(rule, THETA, C_ROUNDS, seed=1)
    seeds = iter(range(2, 10**9))
    plays, _, regret = benchmark(lambda: run_linear_logistic(rule, THETA, C_ROUNDS, seed=next(seeds)))
    record_unit_time("linucb_c_round", C_ROUNDS)
    assert plays.sum() == C_ROUNDS and regret / C_ROUNDS < 0.02


def test_numpy_linucb_round(benchmark, record_unit_time):
    alpha = 1.0
    inverse = np.stack([np.eye(DIM)] * ARMS)  # A^-1 per arm, ridge 1
    b = np.zeros((ARMS, DIM))
    theta = np.zeros((ARMS, DIM))
    contexts = list(CONTEXTS)
    rewards = REWARDS.tolist()
    picks = np.empty(ROUNDS, dtype=np.int64)

    def play():
        for t in range(ROUNDS):
            x = contexts[t]
            projected = inverse @ x                      # A_a^-1 x for every arm
            variance = projected @ x
            arm = int(np.argmax(theta @ x + alpha * np.sqrt(variance)))
            u = projected[arm]
            inverse[arm] -= np.outer(u, u) / (1.0 + variance[arm])
            b[arm] += rewards[t][arm] * x
            theta[arm] = inverse[arm] @ b[arm]
            picks[t] = arm

    play()
    benchmark(play)
    record_unit_time("numpy_linucb_round", ROUNDS)
    assert _regret(picks) < 0.1
