"""Small POMDPs with state access and exact Bayes filters, as Gymnasium environments.

A finite POMDP ``(S, A, Ω, T, O, R, b_I)`` has a transition kernel ``T[a, s, s'] = P(s' | s, a)``,
an observation kernel ``O[s', o] = P(o | s')`` (the observation is emitted by the state entered),
a reward table ``R[s, a]`` and an initial distribution ``b_I``. Its belief, the posterior over the
hidden state given the history ``h_t = (o_0, a_0, o_1, ..., a_{t-1}, o_t)``, is a sufficient
statistic and obeys the Bayes filter

    b_0(s)      ∝ O[s, o_0] · b_I(s)
    b_{t+1}(s') ∝ O[s', o_{t+1}] · Σ_s T[a_t, s, s'] · b_t(s).                      (belief update)

:class:`TabularPOMDP` is a ``gymnasium.Env`` over such a model that also exposes the hidden state
(``env.state``, ``info["state"]``), so that a learner may use the state at training time (as the
WAE-MDP of the Wasserstein Belief Updater does) and an evaluator may compare a learned belief with the
exact one (:func:`bayes_filter`). :func:`noisy_corridor` builds the small known-model POMDP used by the
papers (a corridor with walls the agent only sees noisily); :func:`brute_force_posterior` enumerates
every hidden path, the reference the filter is tested against.
"""

from __future__ import annotations

import itertools

import gymnasium as gym
import numpy as np
from gymnasium import spaces

__all__ = ["TabularPOMDP", "noisy_corridor", "bayes_filter", "belief_update", "predictive_prior",
           "brute_force_posterior", "total_variation", "rollout"]


def _check_stochastic(name: str, array: np.ndarray, axis: int = -1) -> None:
    if np.any(array < 0) or not np.allclose(array.sum(axis=axis), 1.0, atol=1e-9):
        raise ValueError(f"{name} must be non-negative and sum to 1 along axis {axis}")


class TabularPOMDP(gym.Env):
    """A finite POMDP as a Gymnasium environment, with the hidden state exposed.

    Parameters
    ----------
    transition: array ``(A, S, S)``, ``T[a, s, s'] = P(s' | s, a)``.
    observation: array ``(S, Ω)``, ``O[s, o] = P(o | s)``.
    reward: array ``(S, A)``, the reward for taking ``a`` in ``s``.
    initial: array ``(S,)``, the initial state distribution ``b_I``.
    horizon: episode length (the episode is truncated after ``horizon`` steps).

    Observations are integers in ``Discrete(Ω)``; ``info["state"]`` carries the hidden state after
    ``reset`` and every ``step``.
    """

    metadata = {"render_modes": []}

    def __init__(self, transition, observation, reward, initial, *, horizon: int = 10):
        self.T = np.asarray(transition, dtype=float)
        self.O = np.asarray(observation, dtype=float)
        self.R = np.asarray(reward, dtype=float)
        self.b_init = np.asarray(initial, dtype=float)
        if self.T.ndim != 3 or self.T.shape[1] != self.T.shape[2]:
            raise ValueError(f"transition must have shape (A, S, S), got {self.T.shape}")
        n_actions, n_states, _ = self.T.shape
        if self.O.ndim != 2 or self.O.shape[0] != n_states:
            raise ValueError(f"observation must have shape (S, Ω) with S={n_states}, got {self.O.shape}")
        if self.R.shape != (n_states, n_actions):
            raise ValueError(f"reward must have shape (S, A)=({n_states}, {n_actions}), got {self.R.shape}")
        if self.b_init.shape != (n_states,):
            raise ValueError(f"initial must have shape ({n_states},), got {self.b_init.shape}")
        _check_stochastic("transition", self.T)
        _check_stochastic("observation", self.O)
        _check_stochastic("initial", self.b_init)
        if int(horizon) < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        self.horizon = int(horizon)
        self.n_states, self.n_actions, self.n_observations = n_states, n_actions, self.O.shape[1]
        self.observation_space = spaces.Discrete(self.n_observations)
        self.action_space = spaces.Discrete(self.n_actions)
        self.state_space = spaces.Discrete(self.n_states)
        self.state: int | None = None
        self._t = 0

    def get_state(self) -> int:
        """The hidden state (the hook the WBU's popgym fork adds)."""
        if self.state is None:
            raise RuntimeError("call reset() before get_state()")
        return int(self.state)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.state = int(self.np_random.choice(self.n_states, p=self.b_init))
        self._t = 0
        obs = int(self.np_random.choice(self.n_observations, p=self.O[self.state]))
        return obs, {"state": self.state}

    def step(self, action):
        if self.state is None:
            raise RuntimeError("call reset() before step()")
        if not self.action_space.contains(action):
            raise ValueError(f"action {action!r} is not in {self.action_space}")
        action = int(action)
        reward = float(self.R[self.state, action])
        self.state = int(self.np_random.choice(self.n_states, p=self.T[action, self.state]))
        self._t += 1
        obs = int(self.np_random.choice(self.n_observations, p=self.O[self.state]))
        return obs, reward, False, self._t >= self.horizon, {"state": self.state}


def noisy_corridor(n_states: int = 5, *, slip: float = 0.2, obs_noise: float = 0.2,
                   horizon: int = 10) -> TabularPOMDP:
    """A corridor of ``n_states`` cells; actions 0 (left) and 1 (right); reward 1 for stepping right
    in the rightmost cell.

    A move succeeds with probability ``1 - slip`` (else the agent stays; walls clamp). The agent
    observes 0 ("left wall"), 1 ("corridor") or 2 ("right wall"): the true one with probability
    ``1 - obs_noise``, each other with ``obs_noise / 2``. The middle cells alias one another, so the
    belief must count steps. The initial state is uniform.
    """
    if n_states < 3:
        raise ValueError(f"n_states must be >= 3, got {n_states}")
    for name, p in (("slip", slip), ("obs_noise", obs_noise)):
        if not 0.0 <= p < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {p}")
    T = np.zeros((2, n_states, n_states))
    for s in range(n_states):
        for a, move in ((0, -1), (1, 1)):
            T[a, s, min(max(s + move, 0), n_states - 1)] += 1 - slip
            T[a, s, s] += slip
    true_obs = np.ones(n_states, dtype=int)
    true_obs[0], true_obs[-1] = 0, 2
    emission = np.full((n_states, 3), obs_noise / 2)
    emission[np.arange(n_states), true_obs] = 1 - obs_noise
    R = np.zeros((n_states, 2))
    R[-1, 1] = 1.0
    return TabularPOMDP(T, emission, R, np.full(n_states, 1.0 / n_states), horizon=horizon)


def belief_update(belief: np.ndarray, action: int, obs: int, transition: np.ndarray,
                  observation: np.ndarray) -> np.ndarray:
    """One Bayes-filter step, ``b'(s') ∝ O[s', o'] Σ_s T[a, s, s'] b(s)``. Raises if ``o'`` is impossible."""
    unnorm = observation[:, obs] * (belief @ transition[action])
    z = unnorm.sum()
    if z <= 0:
        raise ValueError(f"observation {obs} has probability 0 under the belief and action {action}")
    return unnorm / z


def bayes_filter(env: TabularPOMDP, actions, observations) -> np.ndarray:
    """Exact beliefs ``b_0 .. b_H`` (array ``(H+1, S)``) for ``observations = (o_0..o_H)`` and
    ``actions = (a_0..a_{H-1})``."""
    actions, observations = np.asarray(actions, dtype=int), np.asarray(observations, dtype=int)
    if observations.shape != (actions.shape[0] + 1,):
        raise ValueError("need one more observation than actions (o_0 comes from reset)")
    b = env.O[:, observations[0]] * env.b_init
    if b.sum() <= 0:
        raise ValueError("o_0 has probability 0 under the initial distribution")
    beliefs = [b / b.sum()]
    for a, o in zip(actions, observations[1:], strict=True):
        beliefs.append(belief_update(beliefs[-1], a, o, env.T, env.O))
    return np.stack(beliefs)


def predictive_prior(env: TabularPOMDP, actions) -> np.ndarray:
    """The observation-free state marginals ``p(s_t | a_{0:t-1})`` (array ``(H+1, S)``): the filter's
    prediction with every observation ignored, the uninformed baseline a belief must beat."""
    p = [env.b_init.copy()]
    for a in np.asarray(actions, dtype=int):
        p.append(p[-1] @ env.T[a])
    return np.stack(p)


def brute_force_posterior(env: TabularPOMDP, actions, observations) -> np.ndarray:
    """``P(s_H | h_H)`` by enumerating every hidden path ``s_0..s_H`` (``S^(H+1)`` terms; tiny cases)."""
    actions, observations = np.asarray(actions, dtype=int), np.asarray(observations, dtype=int)
    H = actions.shape[0]
    if env.n_states ** (H + 1) > 2_000_000:
        raise ValueError("too many paths to enumerate")
    post = np.zeros(env.n_states)
    for path in itertools.product(range(env.n_states), repeat=H + 1):
        p = env.b_init[path[0]] * env.O[path[0], observations[0]]
        for t in range(H):
            p *= env.T[actions[t], path[t], path[t + 1]] * env.O[path[t + 1], observations[t + 1]]
        post[path[-1]] += p
    return post / post.sum()


def total_variation(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """``TV(p, q) = ½ Σ |p - q|`` along the last axis."""
    return 0.5 * np.abs(np.asarray(p) - np.asarray(q)).sum(axis=-1)


def rollout(env: TabularPOMDP, n_episodes: int, *, random_state: int | None = None) -> dict:
    """Episodes of the uniform random policy: arrays ``states (N, H+1)``, ``observations (N, H+1)``,
    ``actions (N, H)``, ``rewards (N, H)``; each episode is seeded from ``random_state``."""
    if n_episodes < 1:
        raise ValueError(f"n_episodes must be >= 1, got {n_episodes}")
    rng = np.random.default_rng(random_state)
    H = env.horizon
    out = {"states": np.zeros((n_episodes, H + 1), int), "observations": np.zeros((n_episodes, H + 1), int),
           "actions": np.zeros((n_episodes, H), int), "rewards": np.zeros((n_episodes, H))}
    for i in range(n_episodes):
        obs, info = env.reset(seed=int(rng.integers(2**31)))
        out["states"][i, 0], out["observations"][i, 0] = info["state"], obs
        for t in range(H):
            a = int(rng.integers(env.n_actions))
            obs, r, _, _, info = env.step(a)
            out["actions"][i, t], out["rewards"][i, t] = a, r
            out["states"][i, t + 1], out["observations"][i, t + 1] = info["state"], obs
    return out
