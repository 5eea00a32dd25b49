import numpy as np
import pytest
import torch

from common.pomdp import belief_update, noisy_corridor, rollout
from papers.wasserstein_believer.wasserstein_believer import (
    BeliefUpdater,
    WBUConfig,
    evaluate_beliefs,
    latent_belief_update,
    train_wbu,
)


def test_latent_update_equals_the_bayes_filter_on_a_model_given_as_tables():
    env = noisy_corridor(5)
    P, Om = torch.tensor(env.T), torch.tensor(env.O)
    b = torch.tensor(np.random.default_rng(0).dirichlet(np.ones(5), size=3))
    actions, obs = torch.tensor([0, 1, 1]), torch.tensor([2, 1, 0])
    out = latent_belief_update(b, actions, obs, P, Om).numpy()
    for i in range(3):
        np.testing.assert_allclose(out[i], belief_update(b[i].numpy(), int(actions[i]), int(obs[i]), env.T, env.O),
                                   atol=1e-12)


def test_belief_updater_outputs_distributions():
    upd = BeliefUpdater(8, 2, 3, 16)
    b = torch.full((4, 8), 1 / 8)
    logp = upd(b, torch.tensor([0, 1, 0, 1]), torch.tensor([0, 1, 2, 0]))
    assert logp.shape == (4, 8)
    np.testing.assert_allclose(logp.exp().sum(-1).detach().numpy(), 1.0, rtol=1e-6)


def test_config_validation():
    with pytest.raises(ValueError):
        WBUConfig(n_latent=1)
    with pytest.raises(ValueError):
        WBUConfig(regularizer="kl")
    with pytest.raises(ValueError):
        WBUConfig(temperature=0.0)


@pytest.mark.parametrize("regularizer", ["exact", "critic"])
def test_short_training_is_deterministic_and_evaluates(regularizer):
    env = noisy_corridor(4, horizon=4)
    data, test = rollout(env, 32, random_state=0), rollout(env, 16, random_state=1)
    cfg = WBUConfig(n_latent=4, hidden=8, warmup_steps=3, steps=4, batch_size=16, history_batch=4,
                    regularizer=regularizer)
    r1 = train_wbu(env, data, cfg, random_state=5, progress=False)
    r2 = train_wbu(env, data, cfg, random_state=5, progress=False)
    assert len(r1.belief_loss) == 4 and len(r1.model_loss) == 7
    assert r1.belief_loss == r2.belief_loss
    ev = evaluate_beliefs(env, r1, test)
    for key in ("wbu", "latent_exact", "prior"):
        assert 0.0 <= ev[key] <= 1.0
    assert ev["per_step_wbu"].shape == (5,)


def test_belief_loss_is_zero_when_the_updater_is_the_latent_update():
    """KL(τ̄ ‖ τ̄) = 0: the loss's minimum is reached by the exact latent update."""
    env = noisy_corridor(5)
    P, Om = torch.tensor(env.T), torch.tensor(env.O)
    b = torch.full((2, 5), 0.2, dtype=torch.float64)
    t = latent_belief_update(b, torch.tensor([0, 1]), torch.tensor([1, 1]), P, Om)
    assert float((t * (t.log() - t.log())).sum()) == 0.0


def test_train_rejects_incomplete_data():
    with pytest.raises(ValueError):
        train_wbu(noisy_corridor(), {"states": np.zeros((1, 2), int)}, WBUConfig())
