"""Riemannian geometry of score metrics: the metric interface and curve machinery (``base``),
one metric per file (``stein``, ``pullback``, ``conformal``, ``euclidean``), boundary-value
solvers (``solvers``, one per file), initial-value shooting (``shooting``) and the exact
geodesic of the sphere (``truth``)."""
