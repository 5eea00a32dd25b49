import numpy as np
import pytest
import torch

from common.pomdp import belief_update, noisy_corridor, rollout
from papers.wasserstein_believer.wasserstein_believer import (
    WAEMDP,
    BeliefUpdater,
    WBUConfig,
    belief_loss,
    deterministic_hard_table,
    deterministic_relaxed_table,
    evaluate_beliefs,
    latent_belief_update,
    latent_bits,
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
    with pytest.raises(ValueError):
        WBUConfig(encoder="stochastic")
    with pytest.raises(ValueError):
        WBUConfig(encoder="deterministic", n_latent=6)                     # not a power of two
    with pytest.raises(ValueError):
        WBUConfig(encoder="deterministic", encoder_temperature=0.0)
    assert WBUConfig().encoder == "categorical"
    assert WBUConfig().encoder_temperature == pytest.approx(2 / 3)        # official state_encoder_temperature


@pytest.mark.parametrize("regularizer, belief_kl, marginal_entropy, steady_state, encoder",
                         [("exact", "reverse", 0.0, "off", "categorical"), ("critic", "reverse", 0.0, "off", "categorical"),
                          ("exact", "forward", 1.0, "off", "categorical"),
                          ("exact", "reverse", 0.0, "uniform", "categorical"),
                          ("critic", "reverse", 0.0, "stationary", "categorical"),
                          ("exact", "reverse", 0.0, "uniform", "deterministic"),
                          ("critic", "reverse", 1.0, "stationary", "deterministic")])
def test_short_training_is_deterministic_and_evaluates(regularizer, belief_kl, marginal_entropy, steady_state,
                                                       encoder):
    env = noisy_corridor(4, horizon=4)
    data, test = rollout(env, 32, random_state=0), rollout(env, 16, random_state=1)
    cfg = WBUConfig(n_latent=4, hidden=8, warmup_steps=3, steps=4, batch_size=16, history_batch=4,
                    regularizer=regularizer, belief_kl=belief_kl, marginal_entropy=marginal_entropy,
                    steady_state=steady_state, encoder=encoder)
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
    from papers.wasserstein_believer.select_steady_state import (
        ci_parameters,
        evaluation_seeds,
        select_weight,
        tuning_seeds,
    )
    # the smallest weight whose *min* over the tuning seeds is > 0.9; none passes: None (regulariser off)
    assert select_weight({0.3: [0.8, 1.0], 1.0: [0.95, 0.99], 3.0: [0.91, 1.0]}) == 1.0
    assert select_weight({0.3: [0.8, 1.0], 1.0: [0.9, 1.0]}) is None       # strictly above 0.9
    seeds = tuning_seeds()
    assert not (set(seeds) | {10_000 + s for s in seeds}) & evaluation_seeds()
    params = ci_parameters()
    assert params["seed"] == 0 and params["n_seeds"] == 5 and params["steady_state"] in ("off", "uniform")


# --- the deterministic state encoder (the official code's; Eq. 6)

def test_latent_bits_number_the_corners_of_the_cube():
    bits = latent_bits(8)
    assert bits.shape == (8, 3)
    np.testing.assert_array_equal((bits * torch.tensor([1.0, 2.0, 4.0])).sum(-1).numpy(), np.arange(8))
    with pytest.raises(ValueError):
        latent_bits(6)


def test_deterministic_evaluation_table_is_exactly_one_hot_at_the_heaviside_corner():
    logits = torch.tensor([[0.3, -1.0, 2.0], [-0.1, 0.2, -0.5], [-2.0, -3.0, -0.01]])
    table = deterministic_hard_table(logits)
    expected = np.zeros((3, 8))
    expected[0, 1 + 4] = expected[1, 2] = expected[2, 0] = 1.0          # z = Σ_k 1[x_k > 0] 2^k
    np.testing.assert_array_equal(table.numpy(), expected)
    # the model's tables (what state_recovery and evaluate_beliefs read) are exactly that one-hot table
    model = WAEMDP(5, 2, 3, WBUConfig(encoder="deterministic"))
    phi = model.tables()["phi"]
    assert set(phi.unique().tolist()) <= {0.0, 1.0}
    np.testing.assert_array_equal(phi.sum(-1).numpy(), np.ones(5))
    np.testing.assert_array_equal(phi.numpy(),
                                  deterministic_hard_table(model.encode_logits(torch.arange(5))).detach().numpy())


def test_deterministic_relaxation_is_differentiable_and_tends_to_the_hard_table_as_the_temperature_falls():
    logits = torch.tensor([[0.3, -1.0, 2.0], [-0.1, 0.2, -0.5]], dtype=torch.float64, requires_grad=True)
    hard = deterministic_hard_table(logits.detach())
    gaps = []
    for T in (2.0, 2 / 3, 0.1, 0.01, 0.001):
        soft = deterministic_relaxed_table(logits, T)
        np.testing.assert_allclose(soft.sum(-1).detach().numpy(), 1.0, atol=1e-12)
        gaps.append(float((soft.detach() - hard).abs().max()))
    assert all(a > b for a, b in zip(gaps[:-1], gaps[1:], strict=True)) and gaps[-1] < 1e-12
    # one bit, by hand: u = σ(2x/T); x = 0.3, T = 2/3 gives u = σ(0.9)
    soft = deterministic_relaxed_table(torch.tensor([[0.3]], dtype=torch.float64), 2 / 3)
    u = 1 / (1 + np.exp(-0.9))
    np.testing.assert_allclose(soft.numpy(), [[1 - u, u]], atol=1e-12)
    # differentiable: gradients reach the logits
    (deterministic_relaxed_table(logits, 2 / 3) * torch.arange(8.0, dtype=torch.float64)).sum().backward()
    assert torch.isfinite(logits.grad).all() and (logits.grad.abs() > 0).all()


def test_deterministic_encoder_table_is_straight_through():
    """Value: the hard one-hot table, exactly. Gradient: that of the smoothed table σ(2x/T)."""
    torch.manual_seed(0)
    model = WAEMDP(5, 2, 3, WBUConfig(encoder="deterministic"))
    states = torch.arange(5)
    weights = torch.randn(5, 8)
    table = model.encoder_table(states)
    assert torch.equal(table.detach(), deterministic_hard_table(model.encode_logits(states)))
    g_st = torch.autograd.grad((table * weights).sum(), model.encoder[0].weight)[0]
    soft = deterministic_relaxed_table(model.encode_logits(states), model.config.encoder_temperature)
    g_soft = torch.autograd.grad((soft * weights).sum(), model.encoder[0].weight)[0]
    torch.testing.assert_close(g_st, g_soft)
    assert g_st.abs().sum() > 0


def test_steady_state_term_over_deterministic_encoders_is_minimised_only_by_keeping_states_apart():
    """The collapse that the categorical encoder reached (φ(·|s) = ξ̄ for every s, TV 0) is no deterministic
    encoder. Over all 8^5 maps of five equally frequent states to 8 latents, each built by the module's
    Heaviside table from bit logits and scored by the module's steady-state term, the uniform-target TV is at
    least 3/8, and exactly 3/8 only for the injective maps (every state its own latent)."""
    S, K = 5, 8
    maps = torch.cartesian_prod(*[torch.arange(K)] * S)                             # (8^5, 5)
    logits = 2.0 * latent_bits(K)[maps].double() - 1.0                              # bit logits ±1 of each corner
    tables = deterministic_hard_table(logits.reshape(-1, 3)).reshape(len(maps), S, K)
    assert torch.equal(tables.argmax(-1), maps) and set(tables.unique().tolist()) == {0.0, 1.0}
    w = torch.full((S,), 1 / S, dtype=torch.float64)
    tv = np.array([float(steady_state_regularizer(t, w, "uniform")) for t in tables])
    injective = np.array([len(set(m)) == S for m in maps.tolist()])
    assert tv.min() == pytest.approx(3 / 8, abs=1e-12)
    np.testing.assert_allclose(tv[injective], 3 / 8, atol=1e-12)
    assert tv[~injective].min() > 3 / 8 + 0.1                            # a merge costs at least 1/8
    # the categorical collapse: every row ξ̄, TV 0
    uniform = torch.full((S, K), 1 / K, dtype=torch.float64)
    assert float(steady_state_regularizer(uniform, w, "uniform")) == 0.0


def test_tiny_deterministic_training_never_reaches_the_collapsed_steady_state():
    """With the official weight 100 on the uniform target, every steady-state value the deterministic encoder
    reaches in training is that of a one-hot encoder (at least the least TV any one-hot encoder of the data's
    state frequencies can have, > 0), never the 0 of the categorical collapse; its final table is one-hot."""
    env = noisy_corridor(4, horizon=4)
    data = rollout(env, 32, random_state=0)
    cfg = WBUConfig(hidden=8, warmup_steps=20, steps=5, batch_size=16, history_batch=4, regularizer="exact",
                    steady_state="uniform", steady_state_scaling=100.0, encoder="deterministic")
    result = train_wbu(env, data, cfg, random_state=3, progress=False)
    s = torch.as_tensor(data["states"][:, :-1]).reshape(-1)
    freq = (torch.bincount(s, minlength=4).double() / len(s)).numpy()
    maps = np.stack(np.meshgrid(*[np.arange(8)] * 4, indexing="ij"), -1).reshape(-1, 4)
    Q = np.zeros((len(maps), 8))
    for st in range(4):
        Q[np.arange(len(maps)), maps[:, st]] += freq[st]
    least = float((0.5 * np.abs(Q - 1 / 8).sum(-1)).min())
    assert least > 0.25
    assert len(result.steady_state) == 25 and min(result.steady_state) >= least - 1e-6
    phi = result.model.tables()["phi"]
    assert set(phi.unique().tolist()) <= {0.0, 1.0} and torch.equal(phi.sum(-1), torch.ones(4))


def test_encoder_selection_rule():
    from papers.wasserstein_believer.select_encoder import CANDIDATES, select_candidate
    assert [c["name"] for c in CANDIDATES] == ["A", "B"]
    assert CANDIDATES[0]["steady_state"] == "uniform" and CANDIDATES[0]["steady_state_scaling"] == 100.0
    assert all(c["encoder"] == "deterministic" for c in CANDIDATES) and CANDIDATES[1]["steady_state"] == "off"
    assert select_candidate({"A": [0.95, 1.0], "B": [1.0, 1.0]}) == "A"      # the official weight first
    assert select_candidate({"A": [0.9, 1.0], "B": [0.91, 1.0]}) == "B"      # strictly above 0.9
    assert select_candidate({"A": [0.2, 1.0], "B": [0.8, 1.0]}) is None


def test_encoder_decision_recomputes_from_encoder_selection_json():
    """The committed decision follows from the committed per-seed state recoveries: the rule's choice, and each
    candidate's min, mean and pass flag, recomputed from ``encoder_selection.json``."""
    import json
    from pathlib import Path

    from papers.wasserstein_believer.select_encoder import CANDIDATES, THRESHOLD, select_candidate
    out = json.loads((Path(__file__).resolve().parents[1] / "encoder_selection.json").read_text())
    rows = {row["name"]: row for row in out["table"]}
    assert list(rows) == [c["name"] for c in CANDIDATES] and out["threshold"] == THRESHOLD
    table = {name: row["state_recovery"] for name, row in rows.items()}
    assert select_candidate(table) == out["chosen"]
    for row in rows.values():
        rec = row["state_recovery"]
        assert row["min"] == pytest.approx(min(rec), abs=2e-4)
        assert row["mean"] == pytest.approx(np.mean(rec), abs=2e-4)
        assert row["passes"] == (min(rec) > THRESHOLD)
    if out["chosen"] is None:
        assert out["adopted"] == {"encoder": "categorical", "steady_state": "off", "steady_state_scaling": 100.0}
