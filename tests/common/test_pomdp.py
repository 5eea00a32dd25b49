import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from common.pomdp import (
    RepeatPrevious,
    StatelessCartPole,
    TabularPOMDP,
    bayes_filter,
    brute_force_posterior,
    cartpole_step,
    noisy_corridor,
    predictive_prior,
    repeat_previous_state,
    rollout,
    stateless_cartpole_filter,
    total_variation,
)


def test_gymnasium_env_checker_accepts_the_corridor():
    env = noisy_corridor(5, horizon=4)
    check_env(env, skip_render_check=True)


def test_corridor_kernels_are_stochastic_and_walls_clamp():
    env = noisy_corridor(5)
    assert np.allclose(env.T.sum(-1), 1) and np.allclose(env.O.sum(-1), 1)
    assert env.T[0, 0, 0] == pytest.approx(1.0)            # pushing into the left wall stays
    assert env.T[1, 2, 3] == pytest.approx(0.8) and env.T[1, 2, 2] == pytest.approx(0.2)


def test_filter_matches_brute_force_enumeration():
    env = noisy_corridor(4, slip=0.3, obs_noise=0.25, horizon=4)
    rng = np.random.default_rng(3)
    for _ in range(5):
        actions = rng.integers(2, size=4)
        observations = rng.integers(3, size=5)
        beliefs = bayes_filter(env, actions, observations)
        for t in range(5):
            ref = brute_force_posterior(env, actions[:t], observations[:t + 1])
            np.testing.assert_allclose(beliefs[t], ref, atol=1e-12)


def test_noiseless_observation_gives_point_mass_at_the_walls():
    env = noisy_corridor(5, slip=0.0, obs_noise=0.0)
    b = bayes_filter(env, [], [0])
    np.testing.assert_allclose(b[0], [1, 0, 0, 0, 0])
    b = bayes_filter(env, [1, 1], [0, 1, 1])                # deterministic moves: two steps right
    np.testing.assert_allclose(b[-1], [0, 0, 1, 0, 0])


def test_prior_ignores_observations_and_tv():
    env = noisy_corridor(5)
    p = predictive_prior(env, [1, 1, 1])
    assert p.shape == (4, 5) and np.allclose(p.sum(-1), 1)
    assert total_variation(p[0], p[0]) == 0 and total_variation([1, 0], [0, 1]) == 1


def test_rollout_is_deterministic_and_exposes_state():
    env = noisy_corridor(5, horizon=6)
    a, b = rollout(env, 4, random_state=1), rollout(env, 4, random_state=1)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert a["states"].shape == (4, 7) and a["actions"].shape == (4, 6)
    env.reset(seed=0)
    assert 0 <= env.get_state() < 5


def test_validation_errors():
    with pytest.raises(ValueError):
        TabularPOMDP(np.ones((2, 3, 3)), np.ones((3, 2)) / 2, np.zeros((3, 2)), np.ones(3) / 3)
    with pytest.raises(ValueError):
        noisy_corridor(2)
    with pytest.raises(ValueError):
        bayes_filter(noisy_corridor(), [0, 1], [0])
    env = noisy_corridor(5, obs_noise=0.0)
    with pytest.raises(ValueError):
        bayes_filter(env, [0], [0, 2])                      # left wall, step left: the right wall is impossible


# --- RepeatPrevious and StatelessCartPole (popgym's, with state hooks) ----------------------------------

def test_gymnasium_env_checker_accepts_the_control_pomdps():
    check_env(RepeatPrevious(1, 4), skip_render_check=True)
    check_env(StatelessCartPole(), skip_render_check=True)


@pytest.mark.parametrize(("num_decks", "k"), [(1, 1), (1, 4), (2, 8)])
def test_repeat_previous_rewards_length_and_state(num_decks, k):
    env = RepeatPrevious(num_decks, k)
    n = 52 * num_decks
    obs, info = env.reset(seed=0)
    suits, total, steps, done = [obs], 0.0, 0, False
    while not done:
        target = suits[-k] if len(suits) >= k else 0
        obs, r, terminated, truncated, info = env.step(target)  # the optimal policy
        assert not terminated
        total, steps, done = total + r, steps + 1, truncated
        suits.append(obs)
        last, remaining = info["state"]
        ref_last, ref_remaining = repeat_previous_state(suits, k, num_decks)
        assert np.array_equal(last, ref_last) and np.array_equal(remaining, ref_remaining)
    assert steps == n - 1 and total == pytest.approx(1.0)            # best return 1, episode N - 1 steps
    assert np.bincount(suits, minlength=4).tolist() == [13 * num_decks] * 4  # the whole deck is dealt
    assert np.all(env.get_state()[1] == 0)
    with pytest.raises(RuntimeError, match="over"):
        env.step(0)


def test_repeat_previous_random_policy_expects_minus_half_and_k_counts_back():
    env = RepeatPrevious(1, 3)
    returns = []
    for seed in range(200):
        obs, _ = env.reset(seed=seed)
        rng, total, done = np.random.default_rng(seed), 0.0, False
        while not done:
            _, r, _, done, _ = env.step(int(rng.integers(4)))
            total += r
        returns.append(total)
    m, se = np.mean(returns), np.std(returns) / np.sqrt(len(returns))
    assert abs(m + 0.5) < 4 * se                                         # E = (1/4 - 3/4) per rewarded step
    env.reset(seed=1)
    suits = [int(env._deck[0])]
    rewards = []
    for _ in range(5):  # k = 3: from the 3rd card on, the answer is the suit dealt 2 steps before the current
        answer = suits[-3] if len(suits) >= 3 else 0
        obs, r, *_ = env.step(answer)
        suits.append(obs)
        rewards.append(r)
    assert rewards[:2] == [0.0, 0.0] and all(r > 0 for r in rewards[2:])


def test_stateless_cartpole_hides_velocities_matches_gymnasium_and_is_filtered():
    from gymnasium.envs.classic_control.cartpole import CartPoleEnv

    env, ref = StatelessCartPole(), CartPoleEnv()
    obs, info = env.reset(seed=3)
    ref_obs, _ = ref.reset(seed=3)
    assert obs.shape == (2,) and np.array_equal(obs, ref_obs[[0, 2]])
    rng = np.random.default_rng(0)
    observations, actions, states, total = [obs], [], [info["state"]], 0.0
    for _ in range(30):
        a = int(rng.integers(2))
        obs, r, terminated, truncated, info = env.step(a)
        ref_obs, *_ = ref.step(a)
        assert np.array_equal(obs, ref_obs[[0, 2]])                       # Gymnasium's dynamics, unchanged
        assert np.allclose(cartpole_step(states[-1], a), info["state"], rtol=0, atol=1e-12)  # our Euler step
        observations.append(obs)
        actions.append(a)
        states.append(info["state"])
        total += r
        if terminated:
            break
    est = stateless_cartpole_filter(observations, actions)
    states = np.array(states)
    assert np.array_equal(est[:, [0, 2]], np.array(observations, dtype=np.float64))
    # float32 observations: |error of a position| <= 2.4 * 2**-24, divided by tau = 0.02 for a velocity
    assert np.abs(est[1:] - states[1:]).max() < 2 * 2.4 * 2.0 ** -24 / 0.02 * 2
    assert np.abs(states[0, [1, 3]]).max() <= 0.05 and np.all(est[0, [1, 3]] == 0)
    assert total == pytest.approx(len(actions) / 200)                    # 1/200 per step survived


def test_stateless_cartpole_truncates_at_max_length():
    env = StatelessCartPole(max_episode_length=5)
    env.reset(seed=0)
    flags = [env.step(t % 2)[3] for t in range(5)]
    assert flags == [False] * 4 + [True]


def test_control_pomdp_validation():
    with pytest.raises(ValueError):
        RepeatPrevious(1, 52)
    with pytest.raises(ValueError):
        RepeatPrevious(0, 4)
    with pytest.raises(ValueError):
        repeat_previous_state([4], 2)
    with pytest.raises(ValueError):
        repeat_previous_state([0] * 14, 2)
    with pytest.raises(ValueError, match="k must be"):
        repeat_previous_state([0], 0)
    with pytest.raises(ValueError):
        StatelessCartPole(0)
    with pytest.raises(ValueError):
        stateless_cartpole_filter(np.zeros((3, 2)), [0])
    with pytest.raises(RuntimeError):
        RepeatPrevious().get_state()
