"""Per-example gradients, Gauss–Newton, Kronecker approximations and the power-iteration identity."""

import pytest
import torch
from torch.nn import functional as F

from common import curvature as cv
from common.smallnets import MLP


@pytest.fixture
def setup():
    torch.manual_seed(0)
    model = MLP(6, (5,), 3).double()
    X = torch.randn(20, 6, dtype=torch.float64)
    y = torch.randint(0, 3, (20,))
    return model, X, y


def test_per_example_grads_match_autograd(setup):
    model, X, y = setup
    grads = cv.per_example_grads(model, X, y, ["layers.0.weight"])["layers.0.weight"]
    for i in (0, 7):
        model.zero_grad()
        F.cross_entropy(model(X[i:i + 1]), y[i:i + 1]).backward()
        assert torch.allclose(grads[i], model.layers[0].weight.grad)


def test_jacobian_label_grads_and_gauss_newton(setup):
    model, X, y = setup
    jac, logits = cv.per_example_jacobians(model, X, ["layers.0.weight"])
    J = jac["layers.0.weight"]
    assert J.shape == (20, 3, 5, 6)
    probs = logits.softmax(-1)
    g = cv.label_grads(J, probs, y)
    assert torch.allclose(g, cv.per_example_grads(model, X, y, ["layers.0.weight"])["layers.0.weight"])
    # pseudo-gradients reproduce J^T (diag p - p p^T) J
    Jf = J.reshape(20, 3, 30)
    lam = torch.diag_embed(probs) - probs.unsqueeze(-1) * probs.unsqueeze(-2)
    H = torch.einsum("nkp,nkl,nlq->pq", Jf, lam, Jf) / 20
    assert torch.allclose(cv.second_moment(cv.gauss_newton_pseudo_grads(J, probs)), H, atol=1e-12)
    S = cv.fisher_sqrt(probs)
    assert torch.allclose(S @ S.mT, lam, atol=1e-12)


def test_power_iteration_identity_gives_shampoo_factors():
    g = torch.Generator().manual_seed(1)
    G = torch.randn(50, 4, 7, generator=g, dtype=torch.float64)
    H = cv.second_moment(G)
    L, R = cv.shampoo_factors(G)
    A1, B1 = cv.power_iteration_step(H, torch.eye(4, dtype=torch.float64), torch.eye(7, dtype=torch.float64))
    assert torch.allclose(A1, L, atol=1e-13) and torch.allclose(B1, R, atol=1e-13)


def test_rearrangement_and_optimal_kronecker():
    g = torch.Generator().manual_seed(2)
    A = torch.randn(3, 3, generator=g, dtype=torch.float64)
    B = torch.randn(4, 4, generator=g, dtype=torch.float64)
    H = torch.kron(A @ A.mT, B @ B.mT)
    R = cv.rearrange(H, 3, 4)
    assert torch.allclose(R, torch.outer((A @ A.mT).reshape(-1), (B @ B.mT).reshape(-1)))
    Ah, Bh, sigma, _ = cv.optimal_kronecker(H, 3, 4)
    assert cv.kronecker_cosine(H, Ah, Bh) == pytest.approx(1.0, abs=1e-12)
    # general PSD H: the optimum is the top singular pair of R(H)
    G = torch.randn(30, 3, 4, generator=g, dtype=torch.float64)
    H = cv.second_moment(G) + 0.3 * cv.second_moment(torch.randn(30, 3, 4, generator=g, dtype=torch.float64) ** 2)
    Ah, Bh, sigma, _ = cv.optimal_kronecker(H, 3, 4, max_iter=2000, tol=1e-14)
    top = torch.linalg.svdvals(cv.rearrange(H, 3, 4))[0]
    assert sigma == pytest.approx(float(top), rel=1e-10)
    assert cv.kronecker_cosine(H, Ah, Bh) == pytest.approx(float(top / H.norm()), rel=1e-10)
    L, Rf = cv.shampoo_factors(G)
    assert cv.kronecker_cosine(H, Ah, Bh) >= cv.kronecker_cosine(H, L, Rf)
    assert cv.kronecker_cosine(H, L, Rf) == pytest.approx(cv.matrix_cosine(H, torch.kron(L, Rf)), rel=1e-12)


def test_kfac_is_exact_for_rank_one_independent_factors():
    g = torch.Generator().manual_seed(3)
    d = torch.randn(200, 3, generator=g, dtype=torch.float64)
    a = torch.randn(200, 4, generator=g, dtype=torch.float64)
    S, A = cv.kfac_factors(d, a)
    assert S.shape == (3, 3) and A.shape == (4, 4)
    G = d.unsqueeze(-1) * a.unsqueeze(-2)
    assert cv.kronecker_cosine(cv.second_moment(G), S, A) > 0.8


def test_helpers_and_errors(setup):
    model, X, _ = setup
    M = torch.tensor([[4.0, 0.0], [0.0, 9.0]], dtype=torch.float64)
    assert torch.allclose(cv.psd_power(M, 0.5), torch.diag(torch.tensor([2.0, 3.0], dtype=torch.float64)))
    assert cv.layer_inputs(model, model.layers[1], X).shape == (20, 5)
    assert cv.batch_means(torch.randn(10, 2, 2), 3).shape == (3, 2, 2)
    with pytest.raises(ValueError):
        cv.rearrange(torch.zeros(5, 5), 2, 3)
    with pytest.raises(ValueError):
        cv.per_example_grads(model, X, X, ["nope"])
    with pytest.raises(ValueError):
        cv.batch_means(torch.randn(4, 2, 2), 5)


def test_kronecker_max_eigenvalue_matches_dense():
    g = torch.Generator().manual_seed(5)
    A = torch.randn(4, 6, generator=g, dtype=torch.float64)
    B = torch.randn(3, 5, generator=g, dtype=torch.float64)
    A, B = A @ A.mT, B @ B.mT
    dense = torch.linalg.eigvalsh(torch.kron(A, B))[-1]
    assert abs(cv.kronecker_max_eigenvalue(A, B) - float(dense)) < 1e-10 * float(dense)
    with pytest.raises(ValueError):
        cv.kronecker_max_eigenvalue(-A, B)


def test_hessian_max_eigenvalue_quadratic_and_mlp(setup):
    # a quadratic ½ xᵀ Q x has Hessian Q: the power iteration finds its top eigenvalue
    Q = torch.diag(torch.tensor([5.0, 2.0, 1.0, 0.5], dtype=torch.float64))
    x = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    lam, _ = cv.hessian_max_eigenvalue(lambda: 0.5 * x @ Q @ x, [x], max_iter=500, tol=1e-12,
                                       generator=torch.Generator().manual_seed(0))
    assert abs(lam - 5.0) < 1e-6
    # a small MLP: against the dense Hessian from torch.func
    model, X, y = setup
    params = list(model.parameters())
    loss_fn = lambda: F.cross_entropy(model(X), y)  # noqa: E731
    lam, _ = cv.hessian_max_eigenvalue(loss_fn, params, max_iter=2000, tol=1e-12,
                                       generator=torch.Generator().manual_seed(0))
    from torch.func import functional_call, hessian
    names = [n for n, _ in model.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in params])
    shapes = [p.shape for p in params]

    def f(vec):
        parts, i = {}, 0
        for n, s in zip(names, shapes, strict=True):
            k = int(torch.tensor(s).prod())
            parts[n] = vec[i:i + k].reshape(s)
            i += k
        return F.cross_entropy(functional_call(model, parts, (X,)), y)

    evals = torch.linalg.eigvalsh(hessian(f)(flat))
    top = evals[evals.abs().argmax()]
    assert abs(lam - float(top)) < 1e-6 * abs(float(top))
