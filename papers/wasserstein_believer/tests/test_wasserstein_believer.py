import numpy as np
import pytest
import torch

from common.pomdp import belief_update, noisy_corridor, rollout
from papers.wasserstein_believer.wasserstein_believer import (
    BeliefUpdater,
    WBUConfig,
    belief_loss,
    evaluate_beliefs,
    latent_belief_update,
    state_recovery,
    stationary_distribution,
    steady_state_regularizer,
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
    with pytest.raises(ValueError):
        WBUConfig(belief_kl="both")
    with pytest.raises(ValueError):
        WBUConfig(marginal_entropy=-1.0)
    with pytest.raises(ValueError):
        WBUConfig(steady_state="prior")
    with pytest.raises(ValueError):
        WBUConfig(steady_state="uniform", steady_state_scaling=-1.0)
    assert WBUConfig(steady_state="uniform").steady_state_scaling == 100.0   # the official configs' weight


@pytest.mark.parametrize("regularizer, belief_kl, marginal_entropy, steady_state",
                         [("exact", "reverse", 0.0, "off"), ("critic", "reverse", 0.0, "off"),
                          ("exact", "forward", 1.0, "off"), ("exact", "reverse", 0.0, "uniform"),
                          ("critic", "reverse", 0.0, "stationary")])
def test_short_training_is_deterministic_and_evaluates(regularizer, belief_kl, marginal_entropy, steady_state):
    env = noisy_corridor(4, horizon=4)
    data, test = rollout(env, 32, random_state=0), rollout(env, 16, random_state=1)
    cfg = WBUConfig(n_latent=4, hidden=8, warmup_steps=3, steps=4, batch_size=16, history_batch=4,
                    regularizer=regularizer, belief_kl=belief_kl, marginal_entropy=marginal_entropy,
                    steady_state=steady_state)
    r1 = train_wbu(env, data, cfg, random_state=5, progress=False)
    r2 = train_wbu(env, data, cfg, random_state=5, progress=False)
    assert len(r1.belief_loss) == 4 and len(r1.model_loss) == 7
    assert len(r1.steady_state) == (0 if steady_state == "off" else 7)
    assert all(0.0 <= v <= 1.0 for v in r1.steady_state)
    assert r1.belief_loss == r2.belief_loss and r1.steady_state == r2.steady_state
    ev = evaluate_beliefs(env, r1, test)
    for key in ("wbu", "latent_exact", "prior", "state_recovery"):
        assert 0.0 <= ev[key] <= 1.0
    assert ev["per_step_wbu"].shape == (5,)


def test_belief_loss_is_zero_when_the_updater_is_the_latent_update():
    """Both directions of Eq. 5 vanish when φ_I returns the exact latent update τ̄."""
    env = noisy_corridor(5)
    P, Om = torch.tensor(env.T), torch.tensor(env.O)
    b = torch.full((2, 5), 0.2, dtype=torch.float64)
    t = latent_belief_update(b, torch.tensor([0, 1]), torch.tensor([1, 1]), P, Om)
    for direction in ("reverse", "forward"):
        assert abs(float(belief_loss(t.log(), t, direction))) < 1e-12


def test_belief_loss_directions_on_a_hand_computed_case():
    """p = (1/2, 1/2), q = (1/4, 3/4): both KLs written out by hand."""
    p = torch.tensor([[0.5, 0.5]], dtype=torch.float64)
    q = torch.tensor([[0.25, 0.75]], dtype=torch.float64)
    kl_pq = 0.5 * np.log(0.5 / 0.25) + 0.5 * np.log(0.5 / 0.75)
    kl_qp = 0.25 * np.log(0.25 / 0.5) + 0.75 * np.log(0.75 / 0.5)
    # reverse = KL(φ_I ‖ τ̄) with φ_I = p, τ̄ = q (the paper's direction)
    assert float(belief_loss(p.log(), q, "reverse")) == pytest.approx(kl_pq, abs=1e-12)
    assert float(belief_loss(p.log(), q, "forward")) == pytest.approx(kl_qp, abs=1e-12)
    with pytest.raises(ValueError):
        belief_loss(p.log(), q, "sideways")


def test_state_recovery_is_one_for_a_bijective_latent_and_drops_when_two_states_merge():
    class Tables:
        def __init__(self, phi, psi):
            self.t = {"phi": torch.tensor(phi), "psi": torch.tensor(psi)}

        def tables(self):
            return self.t

    eye = np.eye(3)
    assert state_recovery(Tables(eye, eye)) == pytest.approx(1.0)
    merged_phi = np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 1.0, 0]])     # states 1 and 2 share latent 1
    merged_psi = np.array([[1.0, 0, 0], [0, 0.5, 0.5], [1 / 3, 1 / 3, 1 / 3]])
    assert state_recovery(Tables(merged_phi, merged_psi)) == pytest.approx((1 + 0.5 + 0.5) / 3)


def test_train_rejects_incomplete_data():
    with pytest.raises(ValueError):
        train_wbu(noisy_corridor(), {"states": np.zeros((1, 2), int)}, WBUConfig())


def test_stationary_distribution_of_a_two_state_chain():
    """P = [[1-p, p], [q, 1-q]] has ξ = (q, p) / (p + q); p = 0.2, q = 0.6 gives (3/4, 1/4)."""
    P = torch.tensor([[0.8, 0.2], [0.6, 0.4]], dtype=torch.float64)
    xi = stationary_distribution(P)
    np.testing.assert_allclose(xi.numpy(), [0.75, 0.25], atol=1e-12)
    np.testing.assert_allclose((xi @ P).numpy(), xi.numpy(), atol=1e-12)
    with pytest.raises(ValueError):
        stationary_distribution(torch.ones(2, 3))


def test_steady_state_regularizer_on_hand_computed_cases():
    """Eq. 3 as the exact TV between the encoder's aggregate Q = p φ and the target ξ̄."""
    # uniform target, K = 4: two equally frequent states, one on latent 0, one split over latents 1 and 2:
    # Q = (1/2, 1/4, 1/4, 0) against 1/4 each, TV = (1/4 + 0 + 0 + 1/4) / 2 = 1/4
    phi = torch.tensor([[1.0, 0, 0, 0], [0, 0.5, 0.5, 0]], dtype=torch.float64)
    w = torch.tensor([0.5, 0.5], dtype=torch.float64)
    assert float(steady_state_regularizer(phi, w, "uniform")) == pytest.approx(0.25, abs=1e-12)
    # stationary target, K = 2: P0 = [[.6, .4], [.2, .8]], P1 = [[1, 0], [1, 0]], π = (1/2, 1/2) give the chain
    # [[.8, .2], [.6, .4]], ξ̄ = (3/4, 1/4); an identity encoder on equally frequent states gives Q = (1/2, 1/2),
    # TV = 1/4; a state frequency (3/4, 1/4) gives Q = ξ̄, TV = 0
    P = torch.tensor([[[0.6, 0.4], [0.2, 0.8]], [[1.0, 0.0], [1.0, 0.0]]], dtype=torch.float64, requires_grad=True)
    pi = torch.tensor([0.5, 0.5], dtype=torch.float64)
    eye = torch.eye(2, dtype=torch.float64)
    tv = steady_state_regularizer(eye, w, "stationary", P, pi)
    assert float(tv.detach()) == pytest.approx(0.25, abs=1e-12)
    tv.backward()                                          # gradients reach the latent transition
    assert torch.isfinite(P.grad).all() and P.grad.abs().sum() > 0
    assert float(steady_state_regularizer(eye, torch.tensor([0.75, 0.25], dtype=torch.float64), "stationary",
                                          P.detach(), pi)) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError):
        steady_state_regularizer(eye, w, "stationary")
    with pytest.raises(ValueError):
        steady_state_regularizer(eye, w, "data")


def test_steady_state_selection_rule_and_disjoint_tuning_seeds():
    from papers.wasserstein_believer.select_steady_state import (ci_parameters, evaluation_seeds, select_weight,
                                                                 tuning_seeds)
    # the smallest weight whose *min* over the tuning seeds is > 0.9; none passes: None (regulariser off)
    assert select_weight({0.3: [0.8, 1.0], 1.0: [0.95, 0.99], 3.0: [0.91, 1.0]}) == 1.0
    assert select_weight({0.3: [0.8, 1.0], 1.0: [0.9, 1.0]}) is None       # strictly above 0.9
    seeds = tuning_seeds()
    assert not (set(seeds) | {10_000 + s for s in seeds}) & evaluation_seeds()
    params = ci_parameters()
    assert params["seed"] == 0 and params["n_seeds"] == 5 and params["steady_state"] in ("off", "uniform")
