"""The Gauss-Newton step: the normal equations of the linearised curve energy, solved through
their low-rank structure (a K x K solve, K quadrature points, never D x D).

``GaussNewtonSolver`` takes this step at every iteration (with Levenberg-Marquardt damping);
``FixedPointSolver`` takes it with the score's Jacobian left out (the exact minimiser of the
frozen-metric problem) for curves other than the polygon.
"""

from __future__ import annotations

import torch


def gauss_newton_step(model, lam: float, path: torch.Tensor, r: torch.Tensor, u: torch.Tensor,
                      g: torch.Tensor | None, damping: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Gauss-Newton step and true gradient over the interior nodes, both (P, N-1, D).

    With the curve model's phi, dphi, weights w (``geometry.base.CurveModel``, K quadrature
    points), E = 1/2 x^T (S (x) I) x + 1/2 sum_k r_k^2, S the stiffness, r_k =
    sqrt(lam w_k) u_k.y'_k. Its linearised residual rows over the interior nodes are
    w_k = a_k (x) u_k + b_k (x) g_k, a_k = sqrt(lam w_k) dphi_k, b_k = sqrt(lam w_k) phi_k,
    g_k = J_k^T y'_k, and the true gradient is (S x)_int + sum_k r_k w_k. The normal
    equations (S_int (x) I + W W^T) delta = -grad are solved by Woodbury: S_int^{-1} is
    (N-1) x (N-1), and the capacitance matrix I + W^T (S_int^{-1} (x) I) W is K x K,
    assembled from the Gram matrices of the u_k and g_k (K^2 D work, never D x D):
        [W^T A^-1 W]_kl = (a_k A^-1 a_l)(u_k.u_l) + (a_k A^-1 b_l)(u_k.g_l)
                          + (b_k A^-1 a_l)(g_k.u_l) + (b_k A^-1 b_l)(g_k.g_l).
    With g None (the frozen metric) the step lands on the exact minimiser of the frozen
    quadratic problem. ``damping`` (P,) adds mu I to the normal matrix (Levenberg-Marquardt:
    S_int + mu I in place of S_int, the same structure). Solves run in float64.
    """
    work = torch.float64
    x, r, u = path.to(work), r.to(work), u.to(work)
    dev = path.device
    a, b, stiff = model.residual_rows(lam, work, dev)  # (K, N-1), (K, N-1), (N+1, N+1)
    s_int = stiff[1:-1, 1:-1].expand(x.shape[0], -1, -1)
    if damping is not None:
        s_int = s_int + damping.to(work)[:, None, None] * torch.eye(s_int.shape[-1], dtype=work, device=dev)
    a_inv = torch.linalg.inv(s_int)  # S_int^{-1}, (P, N-1, N-1)
    grad = stiff[1:-1] @ x + a.T @ (r[..., None] * u)
    cap = (a @ a_inv @ a.T) * (u @ u.transpose(1, 2))
    if g is not None:
        g = g.to(work)
        grad = grad + b.T @ (r[..., None] * g)
        cross = (a @ a_inv @ b.T) * (u @ g.transpose(1, 2))
        cap = cap + cross + cross.transpose(1, 2) + (b @ a_inv @ b.T) * (g @ g.transpose(1, 2))
    cap = cap + torch.eye(cap.shape[-1], dtype=work, device=dev)
    z = a_inv @ grad  # A^-1 grad
    rhs = ((a @ z) * u).sum(-1)
    if g is not None:
        rhs = rhs + ((b @ z) * g).sum(-1)
    y = torch.linalg.solve(cap, rhs.unsqueeze(-1)).squeeze(-1)  # (P, K)
    wy = a.T @ (y[..., None] * u)
    if g is not None:
        wy = wy + b.T @ (y[..., None] * g)
    step = -(z - a_inv @ wy)
    return step.to(path.dtype), grad.to(path.dtype)


def gauss_newton_solve(model, lam: float, u: torch.Tensor, g: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """G^{-1} rhs for the Gauss-Newton matrix G = S_int (x) I + W W^T of ``gauss_newton_step``
    (undamped), rhs (P, N-1, D): the same Woodbury solve, float64."""
    work = torch.float64
    u, g, rhs = u.to(work), g.to(work), rhs.to(work)
    dev = rhs.device
    a, b, stiff = model.residual_rows(lam, work, dev)
    a_inv = torch.linalg.inv(stiff[1:-1, 1:-1]).expand(rhs.shape[0], -1, -1)
    cross = (a @ a_inv @ b.T) * (u @ g.transpose(1, 2))
    cap = ((a @ a_inv @ a.T) * (u @ u.transpose(1, 2)) + cross + cross.transpose(1, 2)
           + (b @ a_inv @ b.T) * (g @ g.transpose(1, 2)) + torch.eye(u.shape[1], dtype=work, device=dev))
    z = a_inv @ rhs
    y = torch.linalg.solve(cap, (((a @ z) * u).sum(-1) + ((b @ z) * g).sum(-1)).unsqueeze(-1)).squeeze(-1)
    return z - a_inv @ (a.T @ (y[..., None] * u) + b.T @ (y[..., None] * g))


def gauss_newton_apply(model, lam: float, u: torch.Tensor, g: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """G v for the Gauss-Newton matrix G = S_int (x) I + W W^T, v (P, N-1, D), float64."""
    work = torch.float64
    u, g, v = u.to(work), g.to(work), v.to(work)
    a, b, stiff = model.residual_rows(lam, work, v.device)
    wv = ((a @ v) * u).sum(-1) + ((b @ v) * g).sum(-1)  # (P, K): W^T v
    return stiff[1:-1, 1:-1] @ v + a.T @ (wv[..., None] * u) + b.T @ (wv[..., None] * g)
