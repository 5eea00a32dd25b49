import numpy as np
import pytest
import torch

from papers.altered_avatar.altered_avatar import (
    DynamicField,
    RandomGramLoss,
    Task,
    adapt,
    face_image,
    maml_meta_gradient,
    render_views,
    reptile,
    sample_styles,
    sample_views,
    steps_to_threshold,
    style_texture,
)


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    field = DynamicField(width=8, n_freq=2, random_state=0)
    for p in field.parameters():
        p.requires_grad_(False)
    loss = RandomGramLoss(random_state=0)
    rng = np.random.default_rng(0)
    styles = sample_styles(3, rng)
    codes = sample_views(2, rng)
    base = field.bias.detach().clone()
    tasks = [Task(field, loss, s, codes, 8, 1.0, base) for s in styles]
    return field, loss, tasks, base


def test_shapes_and_range():
    field = DynamicField(width=8, n_freq=2)
    codes = sample_views(3, np.random.default_rng(1))
    img = render_views(field, codes, 8)
    assert img.shape == (3, 3, 8, 8) and float(img.min()) >= 0 and float(img.max()) <= 1
    assert field.n_bias == 19
    assert face_image(codes, 8).shape == (3, 3, 8, 8)


def test_gram_loss_zero_on_own_texture():
    loss = RandomGramLoss(random_state=3)
    tex = style_texture(sample_styles(1, np.random.default_rng(2))[0], 16)
    assert float(loss.per_render(tex[None], loss.target(tex))[0]) == pytest.approx(0.0, abs=1e-10)


def test_gram_loss_is_seeded():
    a, b = RandomGramLoss(random_state=1), RandomGramLoss(random_state=1)
    assert all(torch.equal(x, y) for x, y in zip(a.weights, b.weights, strict=True))


def test_styles_every_kind():
    s = sample_styles(1, np.random.default_rng(0))[0]
    for kind in ("grating", "checker", "noise"):
        t = style_texture(type(s)(s.colors, kind, s.frequency, s.angle, s.seed), 12)
        assert t.shape == (3, 12, 12) and torch.isfinite(t).all()
    with pytest.raises(ValueError):
        style_texture(type(s)(s.colors, "stripes", s.frequency, s.angle, s.seed), 12)


def test_adapt_zero_steps_is_identity_and_deterministic(setup):
    _, _, tasks, base = setup
    b0, curve = adapt(tasks[0], base, 0, 0.1)
    assert torch.equal(b0, base) and curve.shape == (1,)
    b1, c1 = adapt(tasks[0], base, 5, 0.1)
    b2, c2 = adapt(tasks[0], base, 5, 0.1)
    assert torch.equal(b1, b2) and np.array_equal(c1, c2) and c1.shape == (6,)


def test_adapt_checkpoints(setup):
    _, _, tasks, base = setup
    b, _, snaps = adapt(tasks[0], base, 4, 0.1, checkpoints=(0, 2, 4))
    assert torch.equal(snaps[0], base) and torch.equal(snaps[4], b)
    with pytest.raises(ValueError):
        adapt(tasks[0], base, 4, 0.1, checkpoints=(5,))


def test_reptile_one_step_full_meta_lr_equals_inner_loop(setup):
    """With one meta-iteration and ε = 1, Reptile's φ is exactly the inner loop's adapted φ_K."""
    _, _, tasks, base = setup
    rng_a, rng_b = np.random.default_rng(5), np.random.default_rng(5)
    phi = reptile(lambda i: tasks[i], 3, base, 1, 3, 0.05, 1.0, rng_a)
    expected, _ = adapt(tasks[int(rng_b.integers(3))], base, 3, 0.05)
    assert torch.allclose(phi, expected)


def test_reptile_zero_meta_lr_keeps_init(setup):
    _, _, tasks, base = setup
    phi = reptile(lambda i: tasks[i], 3, base, 2, 2, 0.05, 0.0, np.random.default_rng(0))
    assert torch.equal(phi, base)


def test_steps_to_threshold():
    assert steps_to_threshold(np.array([3.0, 2.0, 1.0, 0.5]), 1.0) == 2
    assert steps_to_threshold(np.array([3.0, 2.0]), 0.1) == 2


def test_maml_meta_gradient_matches_higher(setup):
    """Peer cross-check: our hand-unrolled second-order meta-gradient equals higher's."""
    higher = pytest.importorskip("higher")
    _, _, tasks, base = setup
    task = tasks[1]
    ours = maml_meta_gradient(task, base, 2, 0.05)

    class Holder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.b = torch.nn.Parameter(base.clone())

    h = Holder()
    opt = torch.optim.SGD(h.parameters(), lr=0.05)
    with higher.innerloop_ctx(h, opt, copy_initial_weights=False) as (fm, diffopt):
        for _ in range(2):
            diffopt.step(task.objective(fm.b)[0])
        (g,) = torch.autograd.grad(task.objective(fm.b)[0], h.b)
    assert torch.allclose(ours, g, rtol=1e-4, atol=1e-6)


def test_errors():
    with pytest.raises(ValueError):
        sample_views(0, np.random.default_rng(0))
    with pytest.raises(ValueError):
        DynamicField(width=0)
    field = DynamicField(width=4, n_freq=1)
    with pytest.raises(ValueError):
        field(torch.zeros(4, 2), torch.zeros(1, 6), torch.zeros(3))
