import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from common.pomdp import (
    TabularPOMDP,
    bayes_filter,
    brute_force_posterior,
    noisy_corridor,
    predictive_prior,
    rollout,
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
