r"""The class-editing analogue of the paper's prompt editing: invert a real digit with its own label, then
regenerate from the inverted latent with another label (Zhang, Lewis, Kleijn, ECCV 2024, Sec. 5 editing;
official ``BDIA_editing`` inverts with the source prompt and regenerates with the target prompt).

What an exact inversion buys: with the target label equal to the source the edit returns the original
(BDIA, EDICT) or not (DDIM inversion), so an exact method changes only what the label change asks for.
Measured per digit: how far the edited digit moves from the original (RMSE, PSNR on [0, 1] images) and
whether the classifier reads the target class.
"""

from __future__ import annotations

import torch

from common.diffusion.samplers import check_times, ddim, ddim_invert
from papers.bdia.inversion import bdia_invert, bdia_sample, edict_invert, edict_sample

EDIT_METHODS = ("ddim", "bdia", "edict")


def class_edit(model, x0: torch.Tensor, ts, y_source, y_target, method: str = "bdia", gamma: float = 1.0,
               p: float = 0.93) -> torch.Tensor:
    """Invert ``x0`` along reversed ``ts`` (decreasing grid) with ``y_source``, regenerate along ``ts`` with ``y_target``.

    ``method``: "ddim" (DDIM inversion, DDIM sampling), "bdia" (BDIA inversion keeping the last pair,
    BDIA sampling from it, ``gamma``), "edict" (EDICT with mixing ``p``). NFE as the round trips."""
    ts = check_times(ts)
    if method == "ddim":
        return ddim(model, ddim_invert(model, x0, ts.flip(0), y_source), ts, y_target)
    if method == "bdia":
        top, below = bdia_invert(model, x0, ts.flip(0), y_source, gamma)
        return bdia_sample(model, below, ts, y_target, gamma, x_prev=top)
    if method == "edict":
        lx, ly = edict_invert(model, x0, ts, y_source, p)
        return edict_sample(model, lx, ly, ts, y_target, p)[0]
    raise ValueError(f"method must be one of {EDIT_METHODS}, got {method!r}")


def per_digit_rmse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """RMSE per row (model space, [-1, 1])."""
    return (a.double() - b.double()).pow(2).mean(1).sqrt()


def per_digit_psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """PSNR in dB per row on [0, 1] images (model space [-1, 1] halved, clipped), peak 1."""
    ia, ib = ((a.double() + 1) / 2).clamp(0, 1), ((b.double() + 1) / 2).clamp(0, 1)
    mse = (ia - ib).pow(2).mean(1).clamp_min(1e-20)
    return -10.0 * torch.log10(mse)


def target_labels(y: torch.Tensor, shift: int = 1, n_classes: int = 10) -> torch.Tensor:
    """The edit's target class: (y + shift) mod n_classes (every digit changes class)."""
    if shift % n_classes == 0:
        raise ValueError("shift must change the class")
    return (y + shift) % n_classes


__all__ = ["EDIT_METHODS", "class_edit", "per_digit_psnr", "per_digit_rmse", "target_labels"]
