import numpy as np
import pytest
import torch

from papers.subsurface_cvae.models import (
    CVAE,
    Conditioning,
    GaussianMLP,
    TabulatedSampler,
    counts_from_log,
    energy_distance,
    sample_model,
    train,
    w1,
)
from papers.subsurface_cvae.scattering import (
    decode_exit,
    distance_to_sphere,
    encode_exit,
    generate_dataset,
    sample_hg_cosine,
    sample_hg_direction,
    sample_settings,
    walk_in_unit_sphere,
)
from papers.subsurface_cvae.sphere_tracing import cvae_jump, exact_jump, table_jump, trace_sphere


def test_sigma_zero_exits_after_one_scatter():
    walks = walk_in_unit_sphere(0.0, 0.3, 500, 0)
    assert np.all(walks.n == 1)
    np.testing.assert_allclose(np.linalg.norm(walks.x, axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(walks.x, walks.w, atol=1e-12)       # from the centre, x = w on exit


def test_probability_of_one_event_is_exp_minus_sigma():
    walks = walk_in_unit_sphere(2.0, -0.4, 40_000, 1)
    p = np.mean(walks.n == 1)
    assert abs(p - np.exp(-2.0)) < 4 * np.sqrt(np.exp(-2) * (1 - np.exp(-2)) / 40_000)


@pytest.mark.parametrize("g", [-0.8, 0.0, 0.3, 0.95])
def test_hg_mean_cosine_is_g(g):
    cos = sample_hg_cosine(np.full(50_000, g), 2)
    assert abs(cos.mean() - g) < 4 * cos.std() / np.sqrt(len(cos))
    assert np.all(np.abs(cos) <= 1)


def test_hg_direction_is_unit_and_has_mean_cosine_g():
    rng = np.random.default_rng(3)
    w = rng.normal(size=(50_000, 3))
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    new = sample_hg_direction(w, 0.6, rng)
    np.testing.assert_allclose(np.linalg.norm(new, axis=1), 1.0, atol=1e-12)
    assert abs(np.einsum("ij,ij->i", w, new).mean() - 0.6) < 0.01


def test_hg_rejects_singular_g():
    with pytest.raises(ValueError):
        sample_hg_cosine(np.array([1.0]), 0)


def test_distance_to_sphere_from_centre_and_surface():
    x = np.zeros((2, 3))
    w = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    np.testing.assert_allclose(distance_to_sphere(x, w, 2.0), [2.0, 2.0])
    np.testing.assert_allclose(distance_to_sphere(np.array([[0.0, 0.0, 1.0]]), np.array([[0.0, 0.0, -1.0]])), [2.0])


def test_absorption_identity():
    weighted = walk_in_unit_sphere(3.0, 0.5, 20_000, 4)
    analog = walk_in_unit_sphere(3.0, 0.5, 20_000, 5, absorb_albedo=0.8)
    a, b = 0.8 ** weighted.n, analog.escaped.astype(float)
    assert abs(a.mean() - b.mean()) < 4 * np.sqrt(a.var() / len(a) + b.var() / len(b))


def test_walk_is_reproducible_and_validates():
    assert np.array_equal(walk_in_unit_sphere(5.0, 0.2, 100, 7).n, walk_in_unit_sphere(5.0, 0.2, 100, 7).n)
    with pytest.raises(ValueError):
        walk_in_unit_sphere(-1.0, 0.2, 10, 0)
    with pytest.raises(ValueError):
        walk_in_unit_sphere(1.0, 0.2, 0, 0)


def test_exit_code_roundtrip_and_outward_direction():
    walks = walk_in_unit_sphere(4.0, 0.0, 5000, 8)
    code = encode_exit(walks.x, walks.w)
    x, w = decode_exit(code, 9)
    regular = np.abs(code[:, 0]) < 0.99
    np.testing.assert_allclose(encode_exit(x, w)[regular], code[regular], atol=1e-9)
    assert np.all(np.einsum("ij,ij->i", walks.x, walks.w) >= -1e-12)
    assert np.all(np.abs(code) <= 1 + 1e-12)


def test_prior_ranges():
    s = sample_settings(10_000, 0, sigma_max=16.0)
    assert s["sigma"].min() >= 0 and s["sigma"].max() <= 16
    assert s["phi"].max() <= 1 and s["phi"].min() > 0
    assert np.abs(s["g"]).max() <= 0.999
    assert abs(np.median(s["sigma"]) - 16 * 0.5 ** 3) < 0.2          # σ = σ_max u³


def test_table_samples_come_from_the_right_cells():
    sigma = np.repeat([1.0, 15.0], 200)
    g = np.zeros(400)
    values = np.repeat([0.0, 10.0], 200)
    table = TabulatedSampler(sigma, g, values, sigma_max=16.0, n_sigma=2, n_g=1)
    assert set(np.unique(table.sample(0.2, 0.0, 100, 0))) == {0.0}    # clamped to the first centre
    assert set(np.unique(table.sample(16.0, 0.0, 100, 0))) == {10.0}
    with pytest.raises(ValueError):
        TabulatedSampler(sigma, g, values, sigma_max=16.0, n_sigma=4, n_g=4)   # empty cells


def test_counts_and_metrics():
    assert list(counts_from_log(np.log([0.2, 1.0, 2.6, 7.0]))) == [1, 1, 3, 7]
    assert w1([0, 1], [0, 1]) == 0
    assert w1([0.0], [2.0]) == 2.0
    rng = np.random.default_rng(0)
    a = rng.normal(size=(300, 2))
    assert abs(energy_distance(a, a)) < 1e-12
    assert energy_distance(a, a + 3) > 1


def test_models_train_and_sample_shapes():
    data = generate_dataset(1024, 0, sigma_max=4.0)
    cond = Conditioning(4.0)
    c = cond.length(data["sigma"], data["g"])
    for model in (CVAE(2, 1, 2, 8, 3), GaussianMLP(2, 1, 8, 3)):
        hist = train(model, c, data["log_n"][:, None] / cond.log_n_scale, steps=51, batch_size=128, seed=0)
        assert np.isfinite(hist).all() and hist[-1] < hist[0]
        out = sample_model(model, c[:10], 1)
        assert out.shape == (10, 1)
        np.testing.assert_array_equal(out, sample_model(model, c[:10], 1))
    path = CVAE(3, 3, 5, 12, 2)
    assert sum(p.numel() for p in path.decoder.parameters()) == (8 * 12 + 12) + (12 * 12 + 12) + (12 * 6 + 6)


def test_sphere_tracing_agrees_with_path_tracing():
    pt = trace_sphere(6.0, 0.5, 0.95, 8000, 0)
    st = trace_sphere(6.0, 0.5, 0.95, 8000, 1, sampler=exact_jump)
    assert st.jumps > 0
    assert abs(pt.reflectance - st.reflectance) < 4 * np.hypot(pt.reflectance_se, st.reflectance_se)
    assert abs(pt.transmittance - st.transmittance) < 4 * np.hypot(pt.transmittance_se, st.transmittance_se)
    assert st.scatter_events < pt.scatter_events


def test_pt_without_medium_transmits_everything():
    res = trace_sphere(0.0, 0.0, 0.5, 100, 0)
    assert res.transmittance == 1.0 and res.reflectance == 0.0 and res.scatter_events == 0


def test_learned_and_table_jumps_run():
    data = generate_dataset(4096, 0, sigma_max=8.0)
    cond = Conditioning(8.0)
    torch.manual_seed(0)
    length, path = CVAE(2, 1, 2, 8, 3), CVAE(3, 3, 5, 12, 2)
    table = TabulatedSampler(data["sigma"], data["g"], np.column_stack([data["log_n"], data["exit"]]),
                             sigma_max=8.0, n_sigma=4, n_g=4)
    for sampler in (cvae_jump(length, path, cond), table_jump(table)):
        n, x, w = sampler(np.array([1.0, 5.0]), 0.3, np.random.default_rng(0))
        assert n.shape == (2,) and np.all(n >= 1)
        np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-9)
        res = trace_sphere(4.0, 0.3, 0.9, 300, 0, sampler=sampler)
        assert 0 <= res.reflectance + res.transmittance <= 1
