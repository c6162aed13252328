"""Studies: commands that measure the models and solvers themselves rather than run an
experiment: ``scoregeo fidelity`` (learned scores against the exact orbit score) and
``scoregeo bench`` (the geodesic solvers side by side)."""
