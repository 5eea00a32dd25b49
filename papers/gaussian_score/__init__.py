r"""Gaussian score approximation and analytical teleportation (Wang & Vastola, TMLR, arXiv 2412.09726).

**Part A, score structure.** How much of a learned score :math:`s_\theta(x, \sigma)` does an analytic score
:math:`s_X` explain? The official code (``analytical_score_lib.explained_var``) pools over a batch:

.. math:: \mathrm{EV}_X(\sigma) = 1 - \frac{\sum_b \lVert s_\theta(x_b) - s_X(x_b)\rVert^2}{\sum_b \lVert s_\theta(x_b)\rVert^2},

with :math:`x_b \sim q_\sigma`. At one noise level the score and eps differ by the factor :math:`-1/\sigma_t`,
so EV is the same computed on eps. X is the Gaussian, the class-GMM or the delta (training-set) twin.

**Part B, analytical teleportation.** The Gaussian PF-ODE has a closed form
(:meth:`common.diffusion.twins.GaussianTwin.ode_solution`), so the first k = floor(f N) steps of an N-step
grid can be replaced by one jump x_{t_k} = Phi_Gauss(x_{t_0}; t_0 -> t_k), after which the sampler
(EDM Heun or DPM-Solver++(2M)) continues on ts[k:] (as the official ``edm_analytical_massprod_O2.py``
does: the EDM sampler starts at t_steps[skip] from the analytic state).
"""

from papers.gaussian_score.score_structure import (
    ev_profile,
    explained_variance,
    log_sigma_grid,
    noised,
    sigma_hi,
)
from papers.gaussian_score.teleportation import (
    SOLVERS,
    edm_grid,
    jump,
    jump_gap,
    method_nfe,
    model_trajectory,
    n_intervals,
    nfe_of,
    pooled_rel_rmse,
    sample_methods,
    skip_steps,
    skip_to_sigma,
    teleport_sample,
    trajectory_errors,
    trajectory_rel_rmse,
)

__all__ = [
    "SOLVERS", "edm_grid", "ev_profile", "explained_variance", "log_sigma_grid", "nfe_of", "noised", "sigma_hi",
    "skip_steps", "teleport_sample", "trajectory_rel_rmse", "jump", "model_trajectory", "n_intervals",
    "pooled_rel_rmse", "skip_to_sigma", "trajectory_errors", "jump_gap", "method_nfe", "sample_methods",
]
