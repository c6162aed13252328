"""Path metrics over an image trajectory x_0, ..., x_n (science.md section 5).

With d_i = LPIPS(x_i, x_{i+1}) for the n consecutive pairs:

* ``ppl``: perceptual path length, sum_i d_i;
* ``pdv``: perceptual distance variation, the population standard deviation of d
  (divisor n, not n - 1);
* ``smoothness``: 1 - Gini(d), with Gini(d) = sum_ij |d_i - d_j| / (2 n^2 mean(d)); 1 when
  all steps are equally long (and when all are 0), lower when a few steps carry the change;
* ``consistency``: mean_i d_i.
"""

from __future__ import annotations

import torch
from torch import Tensor

from scoregeo_cli.errors import ScoregeoError
from scoregeo_cli.evaluation.images import lpips_distance


def gini(d: Tensor) -> float:
    """Gini coefficient sum_ij |d_i - d_j| / (2 n^2 mean(d)) of (n,) non-negative values.

    0 when all values are equal (including all 0); at most (n - 1) / n.
    """
    d = d.double()
    mean = d.mean()
    if mean == 0:
        return 0.0
    return float((d[:, None] - d[None, :]).abs().sum() / (2 * d.numel() ** 2 * mean))


def path_metrics(d: Tensor) -> dict[str, float]:
    """PPL, PDV, smoothness and consistency of consecutive distances.

    Args:
        d: (n,) non-negative finite distances between consecutive frames, n >= 1.

    Returns:
        ``{"ppl", "pdv", "smoothness", "consistency"}`` as plain floats (see the module note).
    """
    if d.dim() != 1 or d.numel() == 0:
        raise ScoregeoError(f"path metrics need a non-empty 1-D tensor of distances; got shape "
                            f"{tuple(d.shape)}.")
    d = d.detach().double()
    if not bool(torch.isfinite(d).all()) or bool((d < 0).any()):
        raise ScoregeoError("path metrics need finite, non-negative distances.")
    return {
        "ppl": float(d.sum()),
        "pdv": float(d.std(correction=0)),
        "smoothness": 1.0 - gini(d),
        "consistency": float(d.mean()),
    }


def consecutive_lpips(frames: Tensor, net: str = "alex") -> Tensor:
    """LPIPS between consecutive frames.

    Args:
        frames: (T, C, H, W) float images in [0, 1], T >= 2, C = 1 or 3.
        net: LPIPS trunk, ``"alex"`` or ``"vgg"``.

    Returns:
        (T - 1,) tensor, entry i = LPIPS(frames[i], frames[i + 1]).
    """
    if frames.dim() != 4 or frames.shape[0] < 2:
        raise ScoregeoError(f"consecutive LPIPS needs (T, C, H, W) frames with T >= 2; got shape "
                            f"{tuple(frames.shape)}.")
    return lpips_distance(frames[:-1], frames[1:], net=net)
