"""The Wasserstein Belief Updater (Avalos, Delgrange, Nowé, Pérez, Roijers, ICLR 2024): the belief part.

A POMDP's belief ``b_t(s) = P(s_t = s | h_t)`` is a sufficient statistic of the history, but its update
``b' ∝ O(o'|·) Σ_s P(·|s,a) b(s)`` needs the model. WBU learns a *latent* model of the POMDP with
discrete latent states and then learns the belief update *in that latent space*:

1. **WAE-MDP** (Sec. 3, after Delgrange et al. 2023). A state encoder ``φ(z | s)`` (states are visible
   at training time), a latent transition ``P̄(z' | z, a)``, an observation decoder ``Ō(o | z)``, a reward
   decoder ``R̄(z, a)`` and a state decoder ``ψ(s | z)``. The latent model is fitted by a Wasserstein
   auto-encoder objective: a distortion term (reconstruct state, observation and reward from ``z``) plus
   the *transition regulariser*

       W( (z, a, z'),  z' ~ φ(· | s')   ,   (z, a, z̄'),  z̄' ~ P̄(· | z, a) ),   z ~ φ(· | s),        (Eq. 2)

   estimated in its Kantorovich–Rubinstein dual with a 1-Lipschitz critic ``f`` (WGAN-GP penalty;
   the paper's "Lipschitz critics"), so that ``P̄`` is a reliable latent transition: the latent is a
   bisimulation-style abstraction whose local losses bound the value error (Theorem 1). The WAE-MDP adds a
   *steady-state regulariser* (Delgrange et al. 2023), a Wasserstein distance between the encoder's
   aggregate distribution over latent states and a latent "stationary" distribution ``ξ̄``,

       W( Q_φ, ξ̄ ),   Q_φ(z) = E_{s ~ data} φ(z | s),                                             (Eq. 3)

   weighted ``steady_state_scaling = 100`` in the official RepeatPrevious config. It is the WAE's prior-matching term:
   it keeps the encoder's aggregate distribution spread like ``ξ̄`` instead of collapsing onto a few latents.
   The official code samples both sides of the joint ``(z, a, z̄' ~ P̄(·|z,a))`` and estimates W with a
   Lipschitz critic; in WBU's configs ``ξ̄`` is a fixed uniform distribution over the latent bits
   (``trainable_prior=False``: only the reset-state label bit is learned), while the WAE-MDP paper's
   ``ξ̄`` is the latent model's own stationary distribution. Here both targets are available
   (:func:`steady_state_regularizer`) and computed *exactly* (see :class:`WBUConfig`).

   **State encoder.** Two forms (``WBUConfig.encoder``). ``"categorical"`` (the default): a softmax
   ``φ(z|s)`` over the ``K`` latents. ``"deterministic"``: the official WBU encoder (the WAE-MDP asserts
   ``state_encoder_type == DETERMINISTIC``), a network ``x(s) ∈ R^n`` (``n = log2 K`` logits, one per latent
   bit) read through a Heaviside,

       z(s) = Σ_k H(x_k(s)) 2^k,   H(x) = 1[x > 0],   φ(z|s) = 1[z = z(s)],                            (Eq. 6)

   smoothed in training as ``σ(2 x_k / T)`` (a smooth Heaviside; ``T = encoder_temperature``). See
   :meth:`WAEMDP.encoder_table` for how the smoothed bits enter this module's exact losses.

2. **Belief updater** (Sec. 4). With discrete latents the latent belief update is exact and cheap:

       τ̄(b̄, a, o')(z') ∝ Ō(o' | z') Σ_z P̄(z' | z, a) b̄(z),   b̄_0(z) ∝ Ō(o_0 | z) Ī(z),            (Eq. 4)

   where ``Ī`` is the encoded initial-state distribution. A network ``φ_I(b̄, a, o')`` learns it by
   minimising the *belief loss* along the agent's histories,

       L_belief = E_h [ D_KL( φ_I(b̄_t, a_t, o_{t+1}) ‖ τ̄(b̄_t, a_t, o_{t+1}) ) ],  b̄_{t+1} = φ_I(...),   (Eq. 5)

   the KL *from* the learned belief (the official code samples ``z' ~ φ_I`` and scores
   ``log φ_I(z') - log Σ_z P̄(z'|z,a) b̄(z) - log Ō(o'|z')``, which is this KL up to the constant
   ``log`` of the normaliser), an upper bound (Pinsker) on the TV, hence on the Wasserstein distance on a
   discrete latent space, between the learned and the latent-model belief (Theorem 2: beliefs close in W
   have close values). With a handful of latents both KLs are exact sums; ``belief_kl="forward"`` selects
   ``D_KL(τ̄ ‖ φ_I)`` instead (not the paper's).

The learned latent belief is read back as a distribution over true states through the decoder,
``b̂(s) = Σ_z b̄(z) ψ(s | z)``, and compared in total variation with the exact Bayes filter of the
known POMDP (``common.pomdp.bayes_filter``) and with the observation-free prior
``p(s_t | a_{0:t-1})``. The RL part of WBU (A2C on the latent belief, R-A2C with a GRU baseline) is not
implemented here; see the README.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from common.pomdp import TabularPOMDP, bayes_filter, predictive_prior, total_variation

__all__ = ["WBUConfig", "WAEMDP", "BeliefUpdater", "latent_belief_update", "belief_loss", "train_wbu",
           "evaluate_beliefs", "state_recovery", "stationary_distribution", "steady_state_regularizer",
           "WBUResult", "deterministic_relaxed_table", "deterministic_hard_table", "latent_bits"]


@dataclass(frozen=True)
class WBUConfig:
    """Hyper-parameters of the latent model and the belief updater.

    ``n_latent``: number of discrete latent states (the paper's ``2^latent_state_size`` joint values of
    its Bernoulli bits); ``hidden``: width of every MLP; ``beta``: weight of the transition regulariser
    (Eq. 2); ``gp``: gradient-penalty weight of the critic; ``n_critic``: critic updates per model update;
    ``temperature``: Gumbel-softmax temperature of the relaxed latent samples; ``warmup_steps``: latent
    model updates before the belief updater starts; ``steps``: joint updates after the warm-up;
    ``batch_size``: transitions per model update; ``history_batch``: episodes per belief update;
    ``regularizer``: ``"critic"`` estimates Eq. 2 with the Lipschitz critic on Gumbel-softmax samples (the
    paper's estimator); ``"exact"`` uses that the latents are discrete: every term is an exact expectation
    over ``φ(·|s)``, and the transition term is the cross-entropy of the encoded next state (a stopped
    gradient: a fixed target, so that collapsing every state onto one latent cannot zero it) under the
    predicted one, ``-Σ_z' sg[φ(z'|s')] log Σ_z φ(z|s) P̄(z'|z,a)``, an upper bound (with the entropy of
    ``φ(·|s')``, a KL; Pinsker) on the TV, which is the Wasserstein distance of the discrete metric;
    ``belief_kl``: direction of the belief loss (Eq. 5), ``"reverse"`` = ``KL(φ_I ‖ τ̄)`` (the paper's and the
    official code's) or ``"forward"`` = ``KL(τ̄ ‖ φ_I)``; ``marginal_entropy``: weight ``λ`` of an
    anti-collapse bonus ``-λ H(mean_batch φ(·|s))`` on the encoder's marginal (off by default; *not* the
    paper's term; the README's Review reports a probe with ``λ = 1``);
    ``steady_state``: the WAE-MDP's steady-state regulariser (Eq. 3), ``"off"``, ``"uniform"`` (the target
    of the official WBU configs: ``ξ̄`` uniform over the latent states) or ``"stationary"`` (the WAE-MDP
    paper's: ``ξ̄`` the stationary distribution of the latent chain ``Σ_a π(a) P̄(·|·, a)`` under the logging
    policy ``π``, solved exactly, gradients through ``P̄``); computed exactly as the total variation, the
    Wasserstein distance of the discrete metric, between ``ξ̄`` and the encoder's aggregate distribution over
    the training data's states (:func:`steady_state_regularizer`); ``steady_state_scaling``: its weight
    (100, the official RepeatPrevious config's ``steady_state_scaling``). Caveat: the official state encoder is
    deterministic (a Heaviside of a network's output, smoothed during training), so its aggregate can match
    ``ξ̄`` only by spreading *different* states over the latent space; the categorical ``φ(·|s)`` here can
    also match it by encoding every state as ``ξ̄`` itself (the WAE's posterior collapse; see the README).
    ``encoder``: the state encoder, ``"categorical"`` (default; a softmax over the ``n_latent`` latents) or
    ``"deterministic"`` (the official code's: a Heaviside of ``log2(n_latent)`` logits, one per latent bit,
    Eq. 6; ``n_latent`` must be a power of two; see :meth:`WAEMDP.encoder_table`); ``encoder_temperature``:
    the temperature ``T`` of its training relaxation ``σ(2x/T)`` (2/3, the official RepeatPrevious config's
    ``state_encoder_temperature``, which the official code does not anneal; unused by the categorical
    encoder).
    """

    n_latent: int = 8
    hidden: int = 32
    beta: float = 1.0
    gp: float = 10.0
    n_critic: int = 2
    temperature: float = 0.5
    lr: float = 1e-2
    critic_lr: float = 1e-3
    belief_lr: float = 3e-3
    warmup_steps: int = 400
    steps: int = 400
    batch_size: int = 128
    history_batch: int = 32
    regularizer: str = "critic"
    belief_kl: str = "reverse"
    marginal_entropy: float = 0.0
    steady_state: str = "off"
    steady_state_scaling: float = 100.0
    encoder: str = "categorical"
    encoder_temperature: float = 2.0 / 3.0

    def __post_init__(self):
        if self.belief_kl not in ("reverse", "forward"):
            raise ValueError(f"belief_kl must be 'reverse' or 'forward', got {self.belief_kl!r}")
        if self.regularizer not in ("critic", "exact"):
            raise ValueError(f"regularizer must be 'critic' or 'exact', got {self.regularizer!r}")
        for name in ("n_latent", "hidden", "n_critic", "steps", "batch_size", "history_batch"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.n_latent < 2:
            raise ValueError("n_latent must be >= 2")
        if self.warmup_steps < 0:
            raise ValueError("warmup_steps must be >= 0")
        if not self.temperature > 0:
            raise ValueError("temperature must be positive")
        if self.marginal_entropy < 0:
            raise ValueError(f"marginal_entropy must be >= 0, got {self.marginal_entropy}")
        if self.steady_state not in ("off", "uniform", "stationary"):
            raise ValueError(f"steady_state must be 'off', 'uniform' or 'stationary', got {self.steady_state!r}")
        if not self.steady_state_scaling >= 0:
            raise ValueError(f"steady_state_scaling must be >= 0, got {self.steady_state_scaling}")
        if self.encoder not in ("categorical", "deterministic"):
            raise ValueError(f"encoder must be 'categorical' or 'deterministic', got {self.encoder!r}")
        if self.encoder == "deterministic" and self.n_latent & (self.n_latent - 1):
            raise ValueError(f"the deterministic encoder needs n_latent a power of two, got {self.n_latent}")
        if not self.encoder_temperature > 0:
            raise ValueError(f"encoder_temperature must be positive, got {self.encoder_temperature}")


def _mlp(n_in: int, n_out: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, n_out))


def latent_bits(n_latent: int) -> torch.Tensor:
    """The bits of every latent index, ``bits[z, k] = (z >> k) & 1``, shape ``(n_latent, log2 n_latent)``:
    latent ``z`` is the corner ``Σ_k bits[z, k] 2^k`` of the ``{0, 1}^n`` cube."""
    n = int(n_latent).bit_length() - 1
    if n < 1 or 1 << n != n_latent:
        raise ValueError(f"n_latent must be a power of two >= 2, got {n_latent}")
    return ((torch.arange(n_latent)[:, None] >> torch.arange(n)[None, :]) & 1).float()


def deterministic_hard_table(logits: torch.Tensor) -> torch.Tensor:
    """Eq. 6 at evaluation: ``φ(z|s) = 1[z = Σ_k H(x_k) 2^k]`` with ``H(x) = 1[x > 0]`` (the official
    ``discrete_distribution``), an exactly one-hot ``(B, 2^n)`` table from ``(B, n)`` bit logits ``x``."""
    n = logits.shape[-1]
    index = ((logits > 0).long() << torch.arange(n)).sum(-1)
    return F.one_hot(index, 1 << n).to(logits.dtype)


def deterministic_relaxed_table(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Eq. 6 in training: the smoothed bits ``u_k = σ(2 x_k / T)`` (the official ``relaxed_distribution``'s
    "smooth heaviside") spread over the ``2^n`` corners as independent bits,
    ``φ_T(z|s) = Π_k u_k^{z_k} (1 - u_k)^{1 - z_k}`` (rows sum to 1, differentiable in ``x``). Each
    ``u_k → H(x_k)`` as ``T → 0`` for ``x_k ≠ 0``, so ``φ_T`` tends to :func:`deterministic_hard_table`."""
    bits = latent_bits(1 << logits.shape[-1]).to(logits.dtype)                  # (K, n)
    scaled = 2.0 * logits / temperature
    log_on, log_off = F.logsigmoid(scaled), F.logsigmoid(-scaled)              # log u, log(1 - u)
    return torch.exp(log_on @ bits.T + log_off @ (1.0 - bits).T)


class WAEMDP(nn.Module):
    """The latent model: encoder ``φ(z|s)``, transition ``P̄(z'|z,a)``, decoders ``ψ(s|z)``, ``Ō(o|z)``,
    ``R̄(z,a)``, and the Lipschitz critic of the transition regulariser (Eq. 2)."""

    def __init__(self, n_states: int, n_actions: int, n_observations: int, config: WBUConfig):
        super().__init__()
        self.n_states, self.n_actions, self.n_observations = n_states, n_actions, n_observations
        self.config = config
        K, h = config.n_latent, config.hidden
        n_out = K if config.encoder == "categorical" else K.bit_length() - 1     # latents or latent bits
        self.encoder = _mlp(n_states, n_out, h)
        self.transition = _mlp(K + n_actions, K, h)
        self.state_decoder = _mlp(K, n_states, h)
        self.obs_decoder = _mlp(K, n_observations, h)
        self.reward_decoder = _mlp(K + n_actions, 1, h)
        self.critic = _mlp(2 * K + n_actions, 1, h)

    def encode_logits(self, states: torch.Tensor) -> torch.Tensor:
        """The encoder network's output: ``K`` latent logits (categorical) or ``log2 K`` bit logits
        (deterministic)."""
        return self.encoder(F.one_hot(states, self.n_states).float())

    def encoder_table(self, states: torch.Tensor) -> torch.Tensor:
        """``φ(·|s)`` for a batch of states as ``(B, K)`` rows, with gradients: every exact loss takes it.

        Categorical: ``softmax`` of the logits. Deterministic (Eq. 6): a straight-through table, whose
        *value* is the Heaviside encoder's one-hot row (:func:`deterministic_hard_table`) and whose
        *gradient* is that of the temperature-smoothed table (:func:`deterministic_relaxed_table`),
        ``φ = φ_hard + φ_T - sg[φ_T]``. The official code feeds the smoothed bits ``σ(2x/T)`` themselves,
        a point of ``[0, 1]^n``, to its networks and critics; here the networks take one of the ``K``
        latents and the losses are exact sums over ``φ(·|s)``, so the smoothed bits would become a
        product-Bernoulli spread over the corners, which *can* equal a uniform ``ξ̄`` (all ``x = 0``): the
        very collapse a deterministic encoder excludes. The straight-through form keeps every loss value
        that of the deterministic encoder (each ``φ(·|s)`` one-hot: ``Q_φ`` can approach a uniform ``ξ̄``
        only by giving different states different latents) while the gradient reaches ``x`` through the
        smooth Heaviside, as in the official relaxation.
        """
        logits = self.encode_logits(states)
        if self.config.encoder == "categorical":
            return F.softmax(logits, -1)
        soft = deterministic_relaxed_table(logits, self.config.encoder_temperature)
        return deterministic_hard_table(logits) + (soft - soft.detach())     # value: exactly the hard row

    def relaxed_encoding(self, states: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """A relaxed latent for the critic regulariser: a Gumbel-softmax sample (categorical) or the
        deterministic encoder's straight-through row (no sampling: the encoder is deterministic)."""
        if self.config.encoder == "categorical":
            return self.relaxed(self.encode_logits(states), generator)
        return self.encoder_table(states)

    def relaxed(self, logits: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """A Gumbel-softmax sample at the configured temperature (a relaxed one-hot latent state)."""
        u = torch.rand(logits.shape, generator=generator).clamp_(1e-10, 1 - 1e-10)
        return F.softmax((logits - torch.log(-torch.log(u))) / self.config.temperature, dim=-1)

    def transition_logits(self, z: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return self.transition(torch.cat([z, F.one_hot(actions, self.n_actions).float()], -1))

    @torch.no_grad()
    def tables(self) -> dict:
        """The discrete latent model as tables: ``P[a, z, z']``, ``O[z, o]``, ``psi[z, s]``, ``phi[s, z]``
        (``phi`` exactly one-hot rows for the deterministic encoder)."""
        K, A = self.config.n_latent, self.n_actions
        eye = torch.eye(K)
        P = torch.stack([F.softmax(self.transition_logits(eye, torch.full((K,), a, dtype=torch.long)), -1)
                         for a in range(A)])
        return {"P": P, "O": F.softmax(self.obs_decoder(eye), -1), "psi": F.softmax(self.state_decoder(eye), -1),
                "phi": self.encoder_table(torch.arange(self.n_states))}


class BeliefUpdater(nn.Module):
    """``φ_I(b̄, a, o')``: a network from (latent belief, action, next observation) to a latent belief."""

    def __init__(self, n_latent: int, n_actions: int, n_observations: int, hidden: int):
        super().__init__()
        self.n_actions, self.n_observations = n_actions, n_observations
        self.net = _mlp(n_latent + n_actions + n_observations, n_latent, hidden)

    def forward(self, belief: torch.Tensor, actions: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        """Log-probabilities of the next latent belief."""
        x = torch.cat([belief, F.one_hot(actions, self.n_actions).float(),
                       F.one_hot(obs, self.n_observations).float()], -1)
        return F.log_softmax(self.net(x), -1)


def latent_belief_update(belief: torch.Tensor, actions: torch.Tensor, obs: torch.Tensor, transition: torch.Tensor,
                         emission: torch.Tensor) -> torch.Tensor:
    """Eq. 4, batched: ``τ̄(b̄, a, o')(z') ∝ Ō[z', o'] Σ_z P̄[a, z, z'] b̄(z)`` for rows of ``belief``, with
    ``transition = P̄`` of shape ``(A, K, K)`` and ``emission = Ō`` of shape ``(K, Ω)``."""
    predicted = torch.einsum("bz,bzy->by", belief, transition[actions])
    unnorm = predicted * emission[:, obs].T
    return unnorm / unnorm.sum(-1, keepdim=True).clamp_min(1e-30)


def belief_loss(log_pred: torch.Tensor, target: torch.Tensor, direction: str = "reverse") -> torch.Tensor:
    """Eq. 5 for a batch of rows, averaged: ``KL(φ_I ‖ τ̄)`` (``"reverse"``, the paper's) or ``KL(τ̄ ‖ φ_I)``
    (``"forward"``), with ``log_pred = log φ_I`` and ``target = τ̄`` (probabilities, no gradient needed)."""
    log_target = torch.log(target.clamp_min(1e-30))
    if direction == "reverse":
        return (log_pred.exp() * (log_pred - log_target)).sum(-1).mean()
    if direction == "forward":
        return (target * (log_target - log_pred)).sum(-1).mean()
    raise ValueError(f"direction must be 'reverse' or 'forward', got {direction!r}")


def stationary_distribution(transition: torch.Tensor) -> torch.Tensor:
    """The stationary distribution ``ξ`` (``ξ P = ξ``, ``Σ ξ = 1``) of a row-stochastic ``(K, K)`` matrix ``P``
    with a unique one (e.g. all entries positive, as for a softmax), by one linear solve,
    ``(I - P + 1 1ᵀ)ᵀ ξ = 1`` (differentiable in ``P``)."""
    if transition.ndim != 2 or transition.shape[0] != transition.shape[1]:
        raise ValueError(f"transition must be a square matrix, got shape {tuple(transition.shape)}")
    K = transition.shape[0]
    ones = torch.ones(K, dtype=transition.dtype)
    A = torch.eye(K, dtype=transition.dtype) - transition + ones[:, None] * ones[None, :]
    return torch.linalg.solve(A.T, ones)


def steady_state_regularizer(encoder: torch.Tensor, state_weights: torch.Tensor, target: str,
                             transition: torch.Tensor | None = None,
                             policy: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 3, exact: ``TV(Q_φ, ξ̄) = ½ Σ_z |Q_φ(z) - ξ̄(z)|``, the Wasserstein distance of the discrete metric.

    ``encoder``: ``φ(z|s)`` as an ``(S, K)`` table; ``state_weights``: the data's state frequencies ``p(s)``
    (``Q_φ = p φ``); ``target``: ``"uniform"`` (``ξ̄ = 1/K``, the official WBU configs' fixed prior) or
    ``"stationary"`` (``ξ̄`` = :func:`stationary_distribution` of ``Σ_a policy(a) transition[a]``, with
    ``transition = P̄`` of shape ``(A, K, K)`` and ``policy`` the logging policy's action probabilities).
    The official term compares joints ``(z, a, z̄')`` with ``z̄' ~ P̄(·|z, a)`` on both sides; with the
    logging policy's actions independent of the state (a random policy) and the latent policy equal to
    it, the two joints share ``π(a) P̄(z'|z, a)`` and their TV is exactly this one on ``z``.
    """
    marginal = state_weights @ encoder
    K = encoder.shape[-1]
    if target == "uniform":
        xi = torch.full((K,), 1.0 / K, dtype=encoder.dtype)
    elif target == "stationary":
        if transition is None or policy is None:
            raise ValueError("target 'stationary' needs the transition tables and the policy")
        xi = stationary_distribution(torch.einsum("a,azy->zy", policy, transition))
    else:
        raise ValueError(f"target must be 'uniform' or 'stationary', got {target!r}")
    return 0.5 * (marginal - xi).abs().sum()


def _transition_tables(model: WAEMDP) -> torch.Tensor:
    """``P̄[a, z, z']`` with gradients, shape ``(A, K, K)``."""
    K, A = model.config.n_latent, model.n_actions
    eye = torch.eye(K)
    return torch.stack([F.softmax(model.transition_logits(eye, torch.full((K,), b, dtype=torch.long)), -1)
                        for b in range(A)])


def _gradient_penalty(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor,
                      generator: torch.Generator) -> torch.Tensor:
    eps = torch.rand((real.shape[0], 1), generator=generator)
    x = (eps * real + (1 - eps) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(x).sum(), x, create_graph=True)
    return ((grad.norm(dim=-1) - 1) ** 2).mean()


def _exact_losses(model: WAEMDP, s, a, r, s2, o, o2) -> tuple[torch.Tensor, torch.Tensor]:
    """Distortion and transition terms as exact expectations over the discrete encoder ``φ(·|s)``."""
    K, A = model.config.n_latent, model.n_actions
    eye = torch.eye(K)
    phi, phi2 = model.encoder_table(s), model.encoder_table(s2)
    log_psi = F.log_softmax(model.state_decoder(eye), -1)                     # (K, S)
    log_obs = F.log_softmax(model.obs_decoder(eye), -1)                       # (K, Ω)
    rew = torch.stack([model.reward_decoder(torch.cat([eye, F.one_hot(torch.full((K,), b), A).float()], -1))
                       .squeeze(-1) for b in range(A)], 1)                     # (K, A)
    P = _transition_tables(model)                                             # (A, K, K)
    distortion = -(phi * log_psi[:, s].T).sum(-1).mean() - (phi * log_obs[:, o].T).sum(-1).mean() \
        - (phi2 * log_obs[:, o2].T).sum(-1).mean() + (phi * (rew[:, a].T - r[:, None]) ** 2).sum(-1).mean()
    predicted = torch.einsum("bz,bzy->by", phi, P[a])
    transition = -(phi2.detach() * torch.log(predicted.clamp_min(1e-30))).sum(-1).mean()
    return distortion, transition


def _belief_step(model: WAEMDP, updater: BeliefUpdater, opt: torch.optim.Optimizer, S, Obs, Act,
                 config: WBUConfig, gen: torch.Generator) -> float:
    """One update of ``φ_I`` on Eq. 5 along ``history_batch`` episodes; targets from the current latent
    model (detached), the updater fed its own (detached) beliefs."""
    tables = model.tables()
    n_ep, H = Act.shape
    init = tables["phi"][S[:, 0]].mean(0)
    ep = torch.randint(n_ep, (config.history_batch,), generator=gen)
    b = init * tables["O"][:, Obs[ep, 0]].T
    b = b / b.sum(-1, keepdim=True)
    loss = 0.0
    for t in range(H):
        target = latent_belief_update(b, Act[ep, t], Obs[ep, t + 1], tables["P"], tables["O"])
        log_pred = updater(b, Act[ep, t], Obs[ep, t + 1])
        loss = loss + belief_loss(log_pred, target, config.belief_kl)
        b = log_pred.exp().detach()
    loss = loss / H
    opt.zero_grad()
    loss.backward()
    opt.step()
    return float(loss.detach())


@dataclass
class WBUResult:
    model: WAEMDP
    updater: BeliefUpdater
    initial_latent: torch.Tensor
    belief_loss: list = field(default_factory=list)
    model_loss: list = field(default_factory=list)
    steady_state: list = field(default_factory=list)


def train_wbu(env: TabularPOMDP, data: dict, config: WBUConfig, *, random_state: int = 0,
              progress: bool = True) -> WBUResult:
    """Fit the WAE-MDP (Eq. 2) on logged transitions, then jointly the belief updater (Eq. 5).

    ``data`` is :func:`common.pomdp.rollout`'s output (states visible; actions from a state-independent
    logging policy, whose action frequencies give ``π`` for the steady-state term). The first ``warmup_steps``
    updates fit the latent model only; the next ``steps`` updates fit both, the belief updater on
    histories unrolled with its own beliefs against the latent update of the current latent model
    (detached). With ``config.steady_state`` on, every latent-model update adds ``steady_state_scaling``
    times the exact steady-state regulariser (Eq. 3) over the training data's states. Returns the modules,
    the encoded initial distribution ``Ī`` and the loss curves (``steady_state``: Eq. 3 before each update).
    """
    for key in ("states", "observations", "actions", "rewards"):
        if key not in data:
            raise ValueError(f"data lacks {key!r}")
    gen = torch.Generator().manual_seed(int(random_state))
    torch.manual_seed(int(random_state))
    model = WAEMDP(env.n_states, env.n_actions, env.n_observations, config)
    updater = BeliefUpdater(config.n_latent, env.n_actions, env.n_observations, config.hidden)
    gen_params = [p for n, p in model.named_parameters() if not n.startswith("critic")]
    opt = torch.optim.Adam(gen_params, lr=config.lr)
    opt_critic = torch.optim.Adam(model.critic.parameters(), lr=config.critic_lr, betas=(0.5, 0.9))
    opt_belief = torch.optim.Adam(updater.parameters(), lr=config.belief_lr)

    S = torch.as_tensor(data["states"], dtype=torch.long)
    Obs = torch.as_tensor(data["observations"], dtype=torch.long)
    Act = torch.as_tensor(data["actions"], dtype=torch.long)
    Rew = torch.as_tensor(data["rewards"], dtype=torch.float32)
    n_ep, H = Act.shape
    s, a, r = S[:, :-1].reshape(-1), Act.reshape(-1), Rew.reshape(-1)
    s2, o, o2 = S[:, 1:].reshape(-1), Obs[:, :-1].reshape(-1), Obs[:, 1:].reshape(-1)
    n_tr = s.shape[0]
    a_onehot = F.one_hot(a, env.n_actions).float()
    state_freq = torch.bincount(s, minlength=env.n_states).float() / n_tr
    action_freq = torch.bincount(a, minlength=env.n_actions).float() / n_tr
    all_states = torch.arange(env.n_states)
    result = WBUResult(model, updater, torch.empty(0))

    def _model_step(distortion: torch.Tensor, w_est: torch.Tensor, step: int, idx: torch.Tensor) -> None:
        """One latent-model update on distortion + beta * regulariser (Eq. 2) (+ the optional steady-state
        regulariser, Eq. 3; minus the optional marginal entropy bonus), then, after the warm-up, one
        belief-updater update (Eq. 5); shared by both transition regularisers."""
        loss = distortion + config.beta * w_est
        if config.steady_state != "off":
            phi_all = model.encoder_table(all_states)
            steady = steady_state_regularizer(
                phi_all, state_freq, config.steady_state,
                _transition_tables(model) if config.steady_state == "stationary" else None, action_freq)
            loss = loss + config.steady_state_scaling * steady
            result.steady_state.append(float(steady.detach()))
        if config.marginal_entropy > 0:
            marginal = model.encoder_table(s[idx]).mean(0)
            loss = loss + config.marginal_entropy * (marginal * torch.log(marginal.clamp_min(1e-30))).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        result.model_loss.append(float(distortion.detach()))
        if step >= config.warmup_steps:
            result.belief_loss.append(_belief_step(model, updater, opt_belief, S, Obs, Act, config, gen))

    total = config.warmup_steps + config.steps
    for step in tqdm(range(total), desc="WBU", disable=not progress, mininterval=2.0):
        idx = torch.randint(n_tr, (config.batch_size,), generator=gen)
        if config.regularizer == "exact":
            distortion, w_est = _exact_losses(model, s[idx], a[idx], r[idx], s2[idx], o[idx], o2[idx])
            _model_step(distortion, w_est, step, idx)
            continue
        # --- critic: Kantorovich-Rubinstein dual of Eq. 2 with a gradient penalty
        for _ in range(config.n_critic):
            with torch.no_grad():
                z = model.relaxed_encoding(s[idx], gen)
                z_next = model.relaxed_encoding(s2[idx], gen)
                z_bar = model.relaxed(model.transition_logits(z, a[idx]), gen)
                real = torch.cat([z, a_onehot[idx], z_next], -1)
                fake = torch.cat([z, a_onehot[idx], z_bar], -1)
            loss_c = (model.critic(fake).mean() - model.critic(real).mean()
                      + config.gp * _gradient_penalty(model.critic, real, fake, gen))
            opt_critic.zero_grad()
            loss_c.backward()
            opt_critic.step()
        # --- latent model: distortion + beta * transition regulariser
        z = model.relaxed_encoding(s[idx], gen)
        z_next = model.relaxed_encoding(s2[idx], gen)
        z_bar = model.relaxed(model.transition_logits(z, a[idx]), gen)
        distortion = (F.cross_entropy(model.state_decoder(z), s[idx])
                      + F.cross_entropy(model.obs_decoder(z), o[idx])
                      + F.cross_entropy(model.obs_decoder(z_next), o2[idx])
                      + F.mse_loss(model.reward_decoder(torch.cat([z, a_onehot[idx]], -1)).squeeze(-1), r[idx]))
        w_est = (model.critic(torch.cat([z, a_onehot[idx], z_next], -1)).mean()
                 - model.critic(torch.cat([z, a_onehot[idx], z_bar], -1)).mean())
        _model_step(distortion, w_est, step, idx)
    tables = model.tables()
    result.initial_latent = tables["phi"][S[:, 0]].mean(0)
    return result


@torch.no_grad()
def state_recovery(model: WAEMDP) -> float:
    """How well the latent model tells the true states apart: ``(1/S) Σ_s Σ_z φ(z|s) ψ(s|z)``, the
    probability that encoding a uniformly drawn state and decoding it gives it back. 1 when every state has
    its own latent; a model that merges two states into one latent is at most ``1 - 1/S``."""
    tables = model.tables()
    return float((tables["phi"] * tables["psi"].T).sum(-1).mean())


@torch.no_grad()
def evaluate_beliefs(env: TabularPOMDP, result: WBUResult, data: dict) -> dict:
    """Mean TV to the exact Bayes filter, over every step of every test episode, of

    - ``wbu``: the learned belief ``φ_I`` unrolled from ``b̄_0`` and decoded by ``ψ``;
    - ``latent_exact``: the latent model's own update (Eq. 4) unrolled and decoded (the target ``φ_I``
      learns; it bounds what the updater can reach with this latent model);
    - ``prior``: the observation-free prior ``p(s_t | a_{0:t-1})``;

    and ``state_recovery``, the latent model's encode-decode round trip (:func:`state_recovery`).
    """
    tables = result.model.tables()
    Obs = torch.as_tensor(data["observations"], dtype=torch.long)
    Act = torch.as_tensor(data["actions"], dtype=torch.long)
    n_ep, H = Act.shape
    b0 = result.initial_latent * tables["O"][:, Obs[:, 0]].T
    b0 = b0 / b0.sum(-1, keepdim=True)
    learned, exact = [b0], [b0]
    for t in range(H):
        learned.append(result.updater(learned[-1], Act[:, t], Obs[:, t + 1]).exp())
        exact.append(latent_belief_update(exact[-1], Act[:, t], Obs[:, t + 1], tables["P"], tables["O"]))
    psi = tables["psi"].double().numpy()
    dec_learned = np.stack([x.double().numpy() for x in learned], 1) @ psi     # (N, H+1, S)
    dec_exact = np.stack([x.double().numpy() for x in exact], 1) @ psi
    true = np.stack([bayes_filter(env, data["actions"][i], data["observations"][i]) for i in range(n_ep)])
    prior = np.stack([predictive_prior(env, data["actions"][i]) for i in range(n_ep)])
    return {"wbu": float(total_variation(dec_learned, true).mean()),
            "latent_exact": float(total_variation(dec_exact, true).mean()),
            "prior": float(total_variation(prior, true).mean()),
            "state_recovery": state_recovery(result.model),
            "per_step_wbu": total_variation(dec_learned, true).mean(0),
            "per_step_prior": total_variation(prior, true).mean(0)}
