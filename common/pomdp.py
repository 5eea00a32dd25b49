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

Two control POMDPs of the Wasserstein Belief Updater's evaluation (popgym's, with the ``get_state`` /
``state_space`` hooks the WBU's popgym fork adds), written here from popgym's definitions:

- :class:`RepeatPrevious` (popgym): cards are dealt one by one from ``num_decks`` shuffled decks; the agent
  sees each card's suit and must name the suit of the card dealt ``k − 1`` steps before the current one
  (``k = 1``: the current card). Reward ``+1/(N − k)`` for a right answer, ``−1/(N − k)`` for a wrong one
  (``N = 52 · num_decks``), from the ``k``-th card on, so the best return is 1 and the uniform random
  policy's expectation is −0.5. The fork's state (the last ``k`` suits, the fraction of each suit still in
  the deck) is a function of the observed history: :func:`repeat_previous_state` is its exact filter (a
  point mass), and the next suit's predictive law is the deck's remaining composition.
- :class:`StatelessCartPole` (popgym): Gymnasium's ``CartPole`` with the two velocities removed from the
  observation, reward ``1/max_episode_length`` per step, truncated at ``max_episode_length`` (200). The
  dynamics are deterministic and Euler-integrated (``x_{t+1} = x_t + τ ẋ_t``), so the previous and the
  current observation and the previous action determine the state: :func:`stateless_cartpole_filter`
  recovers it, exact up to the float32 rounding of the observations, which the division by τ multiplies by
  50 in the velocities (errors of order 1e-6 to 1e-5); at ``t = 0`` the velocities are only known to lie
  in [−0.05, 0.05].

Both put the hidden state in ``info["state"]`` for evaluators and for learners allowed to see it at
training time (the WAE-MDP); a policy must not read ``info``. Seeded episodes are reproducible, but the
card order of a seed differs from popgym's (same distribution).
"""

from __future__ import annotations

import itertools

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.envs.classic_control.cartpole import CartPoleEnv

__all__ = ["TabularPOMDP", "noisy_corridor", "bayes_filter", "belief_update", "predictive_prior",
           "brute_force_posterior", "total_variation", "rollout", "RepeatPrevious", "repeat_previous_state",
           "StatelessCartPole", "cartpole_step", "stateless_cartpole_filter"]


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


class RepeatPrevious(gym.Env):
    """popgym's RepeatPrevious with the WBU fork's state hooks (see the module docstring).

    Parameters
    ----------
    num_decks: number of 52-card decks shuffled together (``N = 52 · num_decks`` cards; the episode lasts
        ``N − 1`` steps and is truncated at the last one).
    k: the card to repeat is ``k − 1`` deals before the current one (``1 <= k < N``); WBU's
        ``RepeatPreviousEasyPlus`` is ``num_decks=2, k=8``.

    Observations and actions are suits in ``Discrete(4)``. ``get_state()`` returns the fork's state: the
    last ``k`` suits dealt (oldest first, zero-padded before the ``k``-th deal) and, per suit, the fraction
    of its cards still in the deck.
    """

    metadata = {"render_modes": []}

    def __init__(self, num_decks: int = 1, k: int = 4):
        if int(num_decks) < 1:
            raise ValueError(f"num_decks must be >= 1, got {num_decks}")
        self.num_decks, self.n_cards = int(num_decks), 52 * int(num_decks)
        if not 1 <= int(k) < self.n_cards:
            raise ValueError(f"k must be in [1, {self.n_cards}), got {k}")
        self.k = int(k)
        self.max_episode_length = self.n_cards - 1
        self.reward_scale = 1.0 / (self.n_cards - self.k)
        self.action_space = spaces.Discrete(4)
        self.observation_space = spaces.Discrete(4)
        self.state_space = spaces.Tuple((spaces.MultiDiscrete([4] * self.k), spaces.Box(0.0, 1.0, (4,))))
        self._deck: np.ndarray | None = None
        self._dealt = 0

    def _state(self):
        return repeat_previous_state(self._deck[:self._dealt], self.k, self.num_decks)

    def get_state(self):
        """``(last k suits, remaining fraction per suit)``, the fork's ``get_state``."""
        if self._deck is None:
            raise RuntimeError("call reset() before get_state()")
        return self._state()

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._deck = self.np_random.permutation(np.repeat(np.arange(4), 13 * self.num_decks))
        self._dealt = 1
        return int(self._deck[0]), {"state": self._state()}

    def step(self, action):
        if self._deck is None:
            raise RuntimeError("call reset() before step()")
        if not self.action_space.contains(action):
            raise ValueError(f"action {action!r} is not in {self.action_space}")
        if self._dealt >= self.n_cards:
            raise RuntimeError("the episode is over (truncated); call reset()")
        reward = 0.0
        if self._dealt >= self.k:
            right = int(action) == int(self._deck[self._dealt - self.k])
            reward = self.reward_scale if right else -self.reward_scale
        self._dealt += 1
        truncated = self._dealt == self.n_cards
        return int(self._deck[self._dealt - 1]), reward, False, truncated, {"state": self._state()}


def repeat_previous_state(suits, k: int, num_decks: int = 1):
    """The exact filter of :class:`RepeatPrevious`: its state after the observed ``suits`` (``o_0..o_t``),
    ``(last k suits, zero-padded; remaining fraction per suit)``; a deterministic function of the history."""
    if int(k) < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    suits = np.asarray(suits, dtype=int)
    if suits.ndim != 1 or len(suits) < 1 or np.any((suits < 0) | (suits > 3)):
        raise ValueError("suits must be a non-empty 1-D sequence of integers in 0..3")
    last = np.zeros(k, dtype=int)
    tail = suits[-k:]
    last[k - len(tail):] = tail
    per_suit = 13 * num_decks
    remaining = 1.0 - np.bincount(suits, minlength=4) / per_suit
    if np.any(remaining < 0):
        raise ValueError(f"more than {per_suit} cards of one suit in {num_decks} deck(s)")
    return last, remaining.astype(np.float32)


class StatelessCartPole(CartPoleEnv):
    """popgym's StatelessCartPole: Gymnasium's CartPole observed without its velocities.

    Observation ``(x, θ)`` (float32), actions push left (0) or right (1), reward ``1/max_episode_length``
    per step (the step on which the pole falls included, as in Gymnasium), terminated when the pole falls
    or the cart leaves the track, truncated after ``max_episode_length`` steps, so the best return is 1.
    ``get_state()`` returns the full ``(x, ẋ, θ, θ̇)`` in float64 with an unbounded ``state_space`` (the
    WBU fork returns CartPole's float32 observation and space: cast if a learner needs that). Only
    ``max_episode_length`` is configurable (Gymnasium's default reward, no rendering). ``reset``'s
    ``options`` (``low``/``high``) change the reset bounds that :func:`stateless_cartpole_filter`'s
    ``t = 0`` estimate assumes.
    """

    def __init__(self, max_episode_length: int = 200):
        super().__init__()
        if int(max_episode_length) < 1:
            raise ValueError(f"max_episode_length must be >= 1, got {max_episode_length}")
        self.max_episode_length = int(max_episode_length)
        high = np.array([self.x_threshold * 2, self.theta_threshold_radians * 2], dtype=np.float32)
        self.observation_space = spaces.Box(-high, high, dtype=np.float32)
        self.state_space = spaces.Box(-np.inf, np.inf, (4,), dtype=np.float64)
        self._t = 0

    def get_state(self) -> np.ndarray:
        if self.state is None:
            raise RuntimeError("call reset() before get_state()")
        return np.array(self.state, dtype=np.float64)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        obs, _ = super().reset(seed=seed, options=options)
        self._t = 0
        return obs[[0, 2]], {"state": self.get_state()}

    def step(self, action):
        obs, reward, terminated, _, _ = super().step(action)
        self._t += 1
        reward = reward / self.max_episode_length if reward > 0 else -1.0
        truncated = self._t >= self.max_episode_length
        return obs[[0, 2]], reward, terminated, truncated, {"state": self.get_state()}


def cartpole_step(state, action: int, env: CartPoleEnv | None = None) -> np.ndarray:
    """CartPole's Euler step (Barto, Sutton and Anderson 1983, as Florian 2005 corrects it; Gymnasium's
    constants): ``F = ±force_mag``, ``tmp = (F + m_p l θ̇² sin θ) / M``,
    ``θ̈ = (g sin θ − cos θ · tmp) / (l (4/3 − m_p cos²θ / M))``, ``ẍ = tmp − m_p l θ̈ cos θ / M``, then
    ``x += τ ẋ``, ``ẋ += τ ẍ``, ``θ += τ θ̇``, ``θ̇ += τ θ̈``. ``state`` may be batched ``(..., 4)``."""
    e = env or CartPoleEnv()
    s = np.asarray(state, dtype=np.float64)
    x, x_dot, theta, theta_dot = np.moveaxis(s, -1, 0)
    force = np.where(np.asarray(action) == 1, e.force_mag, -e.force_mag)
    cos, sin = np.cos(theta), np.sin(theta)
    tmp = (force + e.polemass_length * theta_dot ** 2 * sin) / e.total_mass
    theta_acc = (e.gravity * sin - cos * tmp) / (e.length * (4.0 / 3.0 - e.masspole * cos ** 2 / e.total_mass))
    x_acc = tmp - e.polemass_length * theta_acc * cos / e.total_mass
    return np.stack([x + e.tau * x_dot, x_dot + e.tau * x_acc, theta + e.tau * theta_dot,
                     theta_dot + e.tau * theta_acc], axis=-1)


def stateless_cartpole_filter(observations, actions, env: CartPoleEnv | None = None) -> np.ndarray:
    """The state estimates ``s_0..s_T`` (array ``(T+1, 4)``) of :class:`StatelessCartPole` from
    ``observations = ((x_0, θ_0), .., (x_T, θ_T))`` and ``actions = (a_0..a_{T-1})``.

    For ``t >= 1`` the Euler step gives the previous velocities, ``ẋ_{t-1} = (x_t − x_{t-1}) / τ`` (same for
    θ), and :func:`cartpole_step` from ``s_{t-1}`` gives the current ones: the posterior is a point mass,
    exact up to the observations' float32 rounding. At ``t = 0`` the velocities are uniform on
    [−0.05, 0.05] (Gymnasium's reset); the estimate is their mean, 0.
    """
    e = env or CartPoleEnv()
    obs = np.asarray(observations, dtype=np.float64)
    actions = np.asarray(actions, dtype=int)
    if obs.ndim != 2 or obs.shape[1] != 2 or obs.shape[0] != actions.shape[0] + 1:
        raise ValueError("need observations (T+1, 2) and actions (T,)")
    est = np.zeros((len(obs), 4))
    est[:, 0], est[:, 2] = obs[:, 0], obs[:, 1]
    for t in range(1, len(obs)):
        prev = np.array([obs[t - 1, 0], (obs[t, 0] - obs[t - 1, 0]) / e.tau,
                         obs[t - 1, 1], (obs[t, 1] - obs[t - 1, 1]) / e.tau])
        est[t, [1, 3]] = cartpole_step(prev, actions[t - 1], e)[[1, 3]]
    return est
