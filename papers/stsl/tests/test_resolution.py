"""Unit tests of the resolution switch (8×8 ci, 16×16 full): operators at side 16, the latent settings."""

import pytest
import torch

from papers.stsl.experiments import digits_task, starting_noise
from papers.stsl.latent import latent_dim, load_setting
from papers.stsl.operators import TASKS, avgpool_matrix, blur_matrix, inpaint_matrix, make_operator


@pytest.mark.parametrize("task", TASKS)
def test_operators_at_side_16_adjoint_and_pinv(task):
    op = make_operator(task, side=16)
    assert op.shape[1] == 256
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 256, generator=g, dtype=torch.float64)
    y = torch.randn(3, op.shape[0], generator=g, dtype=torch.float64)
    assert torch.allclose((op.forward(x) * y).sum(-1), (x * op.adjoint(y)).sum(-1), atol=1e-12)
    assert torch.allclose(op.forward(op.pinv(op.forward(x))), op.forward(x), atol=1e-9)


def test_operator_shapes_scale_with_side():
    # box = side / 2: 4x4 removed at 8, 8x8 removed at 16; x2 pooling; blur square
    assert make_operator("inpaint", 16).shape == (256 - 64, 256)
    assert make_operator("sr", 16).shape == (64, 256)
    assert make_operator("blur", 16).shape == (256, 256)
    # the default is the 8x8 operator, unchanged
    for task in TASKS:
        assert torch.equal(make_operator(task).matrix, make_operator(task, 8).matrix)
    assert torch.equal(make_operator("inpaint", 16).matrix, inpaint_matrix(8, 16))
    assert torch.equal(make_operator("sr", 16).matrix, avgpool_matrix(2, 16))
    assert torch.equal(make_operator("blur", 16).matrix, blur_matrix(side=16))
    # the removed box is the centre 8x8 block (rows and columns 4..11)
    kept = make_operator("inpaint", 16).matrix.sum(0).reshape(16, 16)
    assert kept[3, 3] == 1 and kept[4, 4] == 0 and kept[11, 11] == 0 and kept[12, 12] == 1
    assert int(kept.sum()) == 192
    # blur: an interior row sums to 1 (the kernel is normalised), SR of a constant image is that constant
    assert torch.isclose(
        make_operator("blur", 16).matrix[8 * 16 + 8].sum(), torch.tensor(1.0, dtype=torch.float64)
    )
    ones = torch.ones(1, 256, dtype=torch.float64)
    assert torch.allclose(make_operator("sr", 16).forward(ones), torch.ones(1, 64, dtype=torch.float64))
    with pytest.raises(ValueError):
        make_operator("sr", 10)


def test_load_setting_switches_models_and_data():
    s8, s16 = load_setting(8), load_setting(16)
    assert (s8.side, s16.side) == (8, 16)
    assert s8.x_heldout.shape[1] == 64 and s16.x_heldout.shape[1] == 256
    assert s8.x_heldout.shape[0] == s16.x_heldout.shape[0]  # the same digits, upsampled
    assert (latent_dim(s8.vae), latent_dim(s16.vae)) == (8, 32)
    with torch.no_grad():
        z = s16.vae.encode(s16.x_heldout[:2])
        assert z.shape == (2, 32) and s16.vae.decode(z).shape == (2, 256)
        assert s16.model.eps(z, 0.5).shape == (2, 32)
    assert starting_noise(s16.vae, s16.x_heldout[:3], 0).shape == (3, 32)
    # at 8x8 the starting noise is the committed one (randn(n, 8) from seed 40_000 + seed)
    assert torch.equal(
        starting_noise(s8.vae, s8.x_heldout[:3], 1),
        torch.randn(3, 8, generator=torch.Generator().manual_seed(40_001)),
    )
    with pytest.raises(ValueError):
        load_setting(12)
    # a codec without latent_dim (the analytic check's linear one): inferred from encode
    from papers.stsl.gmm import LinearCodec

    assert latent_dim(LinearCodec(torch.eye(64, 5, dtype=torch.float64)), s8.x_heldout[:2].double()) == 5


def test_digits_task_rejects_a_side_mismatch():
    s8 = load_setting(8)
    x = s8.x_heldout[:2]
    with pytest.raises(ValueError, match="operator"):
        digits_task(s8.model, s8.vae, "sr", x, x, 0.05, 4, [0], [0.1], 0.1, 0.6, side=16)


def test_subspace_lsq_recovers_upsampled_digits_without_noise():
    """x̂ = U (A U)⁺ A x = x for x = U x₈ when A U has full column rank (×2 pooling, blur at side 16); inpainting's
    A U has rank 60 of 64, so there it recovers only the part of x₈ the kept pixels determine (and is the exact
    least-squares fit: A x̂ = A x)."""
    from common.digits16.data import upsampling_matrix
    from papers.stsl.experiments import subspace_lsq

    u = upsampling_matrix()
    x8 = torch.randn(4, 64, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x = x8 @ u.T
    for task in ("sr", "blur"):
        op = make_operator(task, 16)
        assert torch.linalg.matrix_rank(op.matrix @ u) == 64
        assert torch.allclose(subspace_lsq(op, op.forward(x), u), x, atol=1e-8)
    op = make_operator("inpaint", 16)
    assert torch.linalg.matrix_rank(op.matrix @ u) == 60
    xh = subspace_lsq(op, op.forward(x), u)
    assert torch.allclose(op.forward(xh), op.forward(x), atol=1e-10)
    with pytest.raises(ValueError, match="basis"):
        subspace_lsq(op, op.forward(x), u[:64])


def test_run_digits_adds_the_subspace_baseline_only_when_asked():
    from common.digits16.data import upsampling_matrix
    from papers.stsl.experiments import run_digits

    s16 = load_setting(16)
    x = s16.x_heldout[:3]
    op = make_operator("sr", 16)
    out = run_digits(s16.model, s16.vae, op, x, 0.0, 0, {}, subspace=upsampling_matrix())
    # exact up to the float32 measurement
    assert out["subspace_lsq"].shape == (3,) and bool((out["subspace_lsq"] > 100).all())
    assert "subspace_lsq" not in run_digits(s16.model, s16.vae, op, x, 0.0, 0, {})
