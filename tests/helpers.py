"""Test helpers shared by several test modules."""

from __future__ import annotations

import sys

import torch
from hydra.core.global_hydra import GlobalHydra

from scoregeo_cli.scores.base import ScoreField


class TanhField(ScoreField):
    """A non-conservative field u(x) = tanh(A x + c): its Jacobian is not symmetric."""

    def __init__(self, a: torch.Tensor, c: torch.Tensor):
        super().__init__(a.shape[0])
        self.a, self.c = a, c

    def _score(self, x):
        return torch.tanh(x @ self.a.T + self.c)


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
