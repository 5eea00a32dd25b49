r"""Record a sampler run: the state x at every time of the grid and every network call (x_in, t, eps).

Learned solvers fit their coefficients to a teacher's trajectories: OLSS (Duan et al. 2023) regresses
each state :math:`x_{t_{i+1}}` on :math:`[x_T, \hat\varepsilon_0, \dots, \hat\varepsilon_i]`, so it needs the
teacher's x and its noise predictions at every step. :func:`record_trajectory` runs any sampler of
:mod:`common.diffusion.samplers` unchanged and returns a :class:`Trajectory`:

* the states come from the sampler's own ``return_trajectory=True`` (the state at every time of ``ts``;
  ``states[0]`` is x_T, ``states[-1]`` the sampler's output);
* the network calls come from :class:`RecordingModel`, a transparent wrapper of the model protocol
  (``eps(x, t, y)`` + ``.schedule``) that logs the input, the time and the output of every call and
  delegates to the wrapped model (whose NFE counter still counts).

For one-call-per-step samplers evaluated at the current state (DDIM, DPM-Solver++(2M), Euler),
:meth:`Trajectory.eps_at_states` returns the noise prediction at ``states[i]``, ``times[i]`` for every
step i, after checking that this is indeed what was called. Multi-call samplers (Heun) keep all their
calls in ``eval_*``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from common.diffusion.views import batch_times


class RecordingModel:
    """Wrap a model (``eps(x, t, y)`` + ``.schedule``) and log every call: ``calls`` = [(t, x, eps), ...].

    ``t`` is logged as a python float; a call with different times per row raises ``ValueError`` (the
    samplers always call with one time per step). Tensors are detached copies.
    """

    def __init__(self, model):
        self.model = model
        self.schedule = model.schedule
        self.calls: list[tuple[float, torch.Tensor, torch.Tensor]] = []

    def eps(self, x: torch.Tensor, t, y: torch.Tensor | None = None) -> torch.Tensor:
        times = batch_times(t, x)
        if times.numel() and not torch.all(times == times[0]):
            raise ValueError("RecordingModel records one time per call; got different times per row")
        out = self.model.eps(x, t, y)
        self.calls.append((float(times[0]), x.detach().clone(), out.detach().clone()))
        return out

    __call__ = eps


@dataclass
class Trajectory:
    """One recorded sampler run over a batch of B noises in R^D along the grid ``times`` (n + 1 times).

    Attributes:
        times: float64 [n + 1], the sampler's grid (decreasing).
        states: [n + 1, B, D], the state at every time of ``times``.
        eval_times: float64 [K], the time of every network call (K = NFE).
        eval_states: [K, B, D], the input of every network call.
        eps: [K, B, D], the noise prediction of every network call.
    """

    times: torch.Tensor
    states: torch.Tensor
    eval_times: torch.Tensor
    eval_states: torch.Tensor
    eps: torch.Tensor

    @property
    def n_steps(self) -> int:
        return len(self.times) - 1

    @property
    def nfe(self) -> int:
        return len(self.eval_times)

    def eps_at_states(self) -> torch.Tensor:
        """[n, B, D]: eps(states[i], times[i]) for i < n, for one-call-per-step samplers.

        Raises ``ValueError`` unless the run made exactly one call per step, at ``times[i]``, on ``states[i]``.
        """
        if self.nfe != self.n_steps:
            raise ValueError(f"{self.nfe} network calls for {self.n_steps} steps: not a one-call-per-step sampler")
        if not torch.equal(self.eval_times, self.times[:-1]):
            raise ValueError("the network was not called at the grid times")
        if not torch.equal(self.eval_states, self.states[:-1].to(self.eval_states.dtype)):
            raise ValueError("the network was not called on the recorded states")
        return self.eps


def record_trajectory(sampler: Callable, model, x: torch.Tensor, ts, y: torch.Tensor | None = None, **kwargs) -> Trajectory:
    """Run ``sampler(model, x, ts, y, return_trajectory=True, **kwargs)`` and record it (see module docstring).

    Call it under ``torch.no_grad()`` for a frozen model. The sampler's output is ``.states[-1]``.
    """
    recorder = RecordingModel(model)
    _, states = sampler(recorder, x, ts, y, return_trajectory=True, **kwargs)
    if not recorder.calls:
        raise ValueError("the sampler made no network call")
    times = torch.as_tensor(ts, dtype=torch.float64).clone()
    if len(states) != len(times):
        raise ValueError(f"the sampler returned {len(states)} states for {len(times)} times")
    return Trajectory(
        times=times,
        states=torch.stack([s.detach() for s in states]),
        eval_times=torch.tensor([c[0] for c in recorder.calls], dtype=torch.float64),
        eval_states=torch.stack([c[1] for c in recorder.calls]),
        eps=torch.stack([c[2] for c in recorder.calls]),
    )
