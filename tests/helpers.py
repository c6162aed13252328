"""Test helpers shared by several test modules."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from hydra.core.global_hydra import GlobalHydra

from scoregeo_cli.scores.base import ScoreField

# The LPIPS authors' example images (richzhang/PerceptualSimilarity, BSD-2-Clause; see
# tests/data/lpips/README.md), carried with the tests so that a bare clone has them.
LPIPS_IMAGES = Path(__file__).resolve().parent / "data" / "lpips"


def assert_close_to_scale(actual: torch.Tensor, expected: torch.Tensor, rel: float = 1e-5) -> None:
    """``actual`` equals ``expected`` up to ``rel`` times the largest magnitude of ``expected``
    (element-wise and in the maximum norm): float32 networks give results that differ with the
    batch size and the CPU's vector instructions by a few rounding units of the values they
    produce, so an absolute tolerance that ignores their size fails on some machines."""
    scale = float(expected.abs().max())
    torch.testing.assert_close(actual, expected, rtol=rel, atol=rel * scale)


class TanhField(ScoreField):
    """A non-conservative field u(x) = tanh(A x + c): its Jacobian is not symmetric."""

    def __init__(self, a: torch.Tensor, c: torch.Tensor):
        super().__init__(a.shape[0])
        self.a, self.c = a, c

    def _score(self, x):
        return torch.tanh(x @ self.a.T + self.c)


class RingField(ScoreField):
    """The score of the unit circle in R^2 blurred radially by ``sigma``:
    s(x) = -(|x| - 1) / sigma^2 x / |x|. Stiff along the radius (lam |s|^2 >> 1 off the ring)."""

    def __init__(self, sigma: float):
        super().__init__(2)
        self.sigma = sigma

    def _score(self, x):
        r = x.norm(dim=-1, keepdim=True)
        return -(r - 1) / self.sigma**2 * x / r


def invoke_cli(argv: list[str], monkeypatch, capsys=None) -> tuple[int, str, str]:
    """``scoregeo <argv>`` in this process: (exit code, stdout, stderr). Hydra's global state
    is cleared before and after; ``sys.argv`` is restored by ``monkeypatch``."""
    from scoregeo_cli.cli import main

    GlobalHydra.instance().clear()
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    if capsys is not None:
        capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as stop:
        code = stop.code
    finally:
        GlobalHydra.instance().clear()
    if capsys is None:
        return code, "", ""
    out = capsys.readouterr()
    return code, out.out, out.err
