r"""Pseudo-ground-truth endpoints of the probability-flow ODE, computed once and cached on disk.

Solver papers (OLSS, Bespoke solvers, DualFast, LML, ...) measure a few-step sampler by its distance to
the *exact* ODE endpoint from the same noise :math:`x_T` (RMSE / PSNR, :mod:`common.diffusion.metrics`).
That endpoint is a float64 ``scipy.integrate.solve_ivp`` solution (:func:`common.diffusion.samplers.reference_ode`)
and costs hundreds of network calls per batch, so :func:`reference_endpoints` stores it in
``.cache/diffusion_reference/<key>.safetensors`` and every later notebook with the same question reads it.

The key is the sha256 of everything the answer depends on: the model's identity (its checkpoint's
sha256 from the manifest, the guidance weight and the network's dtype; or an explicit ``model_key`` for
models without a manifest, e.g. the analytic twins), the exact bytes of x and y, the two times and the
solver's settings. A cache hit returns bit-identical tensors; a miss computes, then writes atomically.
The cache is a pure function of its key, so deleting ``.cache/`` only costs time.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from common.diffusion.samplers import reference_ode

DEFAULT_CACHE = Path(__file__).resolve().parents[2] / ".cache" / "diffusion_reference"


def model_identity(model) -> str:
    """A string naming what the model computes: checkpoint sha256, guidance weight, network dtype.

    Raises ``ValueError`` for a model without a manifest (pass ``model_key=`` to :func:`reference_endpoints`).
    """
    manifest = getattr(model, "manifest", None)
    if not manifest or "sha256" not in manifest:
        raise ValueError("the model has no manifest with a sha256 (an analytic twin?): pass model_key='...' "
                         "naming it exactly (e.g. 'gmm_twin:ledoit_wolf:train_split_0'), or cache=False")
    net = getattr(model, "net", None)
    dtype = str(next(net.parameters()).dtype) if isinstance(net, torch.nn.Module) else "unknown"
    return f"{manifest['sha256']}|w={getattr(model, 'guidance_scale', None)}|{dtype}"


def cache_key(model_key: str, x: torch.Tensor, y, settings: dict) -> str:
    """sha256 over the model key, the settings (sorted JSON) and the raw bytes, dtypes and shapes of x and y."""
    h = hashlib.sha256()
    h.update(model_key.encode())
    h.update(json.dumps(settings, sort_keys=True).encode())
    for name, tensor in (("x", x), ("y", y)):
        if tensor is None:
            h.update(f"{name}:None".encode())
            continue
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def reference_endpoints(model, x: torch.Tensor, t_start: float, t_end: float, *, y=None, rtol: float = 1e-7,
                        atol: float = 1e-9, method: str = "RK45", variable: str = "lambda",
                        model_key: str | None = None, cache: bool = True, cache_dir: Path | str | None = None,
                        ) -> torch.Tensor:
    """The float64 PF-ODE solution from ``t_start`` to ``t_end`` for every row of x (see
    :func:`~common.diffusion.samplers.reference_ode`), read from the cache when this exact question was
    answered before. Returns a float64 tensor of x's shape."""
    settings = {"t_start": float(t_start), "t_end": float(t_end), "rtol": float(rtol), "atol": float(atol),
                "method": method, "variable": variable}
    if not cache:
        return reference_ode(model, x, t_start, t_end, rtol=rtol, atol=atol, method=method, y=y, variable=variable)
    key = cache_key(model_key if model_key is not None else model_identity(model), x, y, settings)
    folder = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE
    path = folder / f"{key}.safetensors"
    from safetensors.torch import load_file, save_file

    if path.is_file():
        stored = load_file(str(path))["x_end"]
        if stored.shape != x.shape:
            raise RuntimeError(f"{path} holds shape {tuple(stored.shape)}, expected {tuple(x.shape)}: delete it")
        return stored
    out = reference_ode(model, x, t_start, t_end, rtol=rtol, atol=atol, method=method, y=y, variable=variable)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{key}.{os.getpid()}.tmp"
    save_file({"x_end": out.contiguous()}, str(tmp), metadata={k: str(v) for k, v in settings.items()})
    os.replace(tmp, path)
    return out
