"""Riemannian geometry of score metrics: metrics (``metrics``), boundary-value solvers
(``solvers``) and initial-value shooting (``shooting``)."""
