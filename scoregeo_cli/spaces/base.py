"""The space interface, and the identity space of synthetic manifolds."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch


@dataclass
class Endpoints:
    """The two ends of P paths, in the space where paths live and as clean encoded data.

    a, b: (P, D) points where paths live (at level t in a diffusion space).
    clean_a, clean_b: (P, D) the encoded data before noising (equal to a, b in data space).
    abar_t: the signal fraction at the level of a and b (1 in data space).
    """

    a: torch.Tensor
    b: torch.Tensor
    clean_a: torch.Tensor
    clean_b: torch.Tensor
    abar_t: float = 1.0


class Space(ABC):
    """Data -> flat points where paths live, and back. Paths are (P, F, D) tensors."""

    @abstractmethod
    def encode(self, data: torch.Tensor) -> torch.Tensor:
        """Data (P, ...) -> clean flat points (P, D)."""

    @abstractmethod
    def endpoints(self, clean_a: torch.Tensor, clean_b: torch.Tensor, eps: torch.Tensor | None) -> Endpoints:
        """Bring clean endpoints (P, D) to where paths live; ``eps`` (P, D) is the noise a pair shares."""

    @abstractmethod
    def to_data(self, points: torch.Tensor, at_level: bool = True) -> torch.Tensor:
        """Points (B, D) back to data (B, ...). ``at_level=False``: the points are clean
        (a method that works on clean data) and are only decoded. Rows holding NaN (a failed
        extrapolation) stay NaN."""


class IdentitySpace(Space):
    """Paths live in data space: synthetic manifolds, points (P, D)."""

    def encode(self, data: torch.Tensor) -> torch.Tensor:
        return data

    def endpoints(self, clean_a: torch.Tensor, clean_b: torch.Tensor, eps: torch.Tensor | None = None) -> Endpoints:
        return Endpoints(clean_a, clean_b, clean_a, clean_b, 1.0)

    def to_data(self, points: torch.Tensor, at_level: bool = True) -> torch.Tensor:
        return points
